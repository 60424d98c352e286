"""Declaring contracts and services: mistakes fail at import time, with the fix in the message."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional, assert_type

import pytest
from asgiref.sync import sync_to_async
from pydantic import Field

from bus import Contract, ContractError, Schema, Service, rpc
from bus import contracts as contracts_module
from bus import services as services_module
from bus.contracts import RemoteMethod, lookup_method
from bus.exceptions import RemoteError, ValidationError, error_from_wire
from bus.testing import serving
from tests.conftest import read_records
from tests.echo.contract import Echo, Item, Refused
from tests.polling import poll


def test_argument_names_may_not_clash_with_the_calls_own_keywords() -> None:
    with pytest.raises(TypeError, match=r"argument name 'timeout' clashes with bus\.call's own keyword"):

        class Clock(Contract, name="clock_a"):
            @rpc()
            async def wait(self, *, timeout: float) -> None: ...


def test_variadic_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="parameter 'rest' must be a plain keyword argument"):

        class Loose(Contract, name="loose"):
            @rpc()  # type: ignore[arg-type]  # mypy refuses it too: `self` could then come as a keyword
            async def take(self, **rest: int) -> None: ...


def test_service_names_are_checked() -> None:
    with pytest.raises(TypeError, match=r"may not contain '\.'"):

        class Dotted(Contract, name="a.b"):
            pass


def test_a_service_must_implement_every_method_with_the_same_arguments() -> None:
    with pytest.raises(TypeError, match=r"does not implement echo\.add"):

        class Partial(Service, contract=Echo):
            def echo(self, *, text: str) -> str:
                return text

    class Renamed(Contract, name="renamed"):
        @rpc()
        async def greet(self, *, name: str) -> str: ...

    with pytest.raises(
        TypeError, match=r"takes \['who'\] but the contract renamed\.greet declares \['name'\]"
    ):

        class Wrong(Service, contract=Renamed):
            def greet(self, *, who: str) -> str:
                return who


Code = Annotated[str, Field(min_length=1, max_length=8)]


class Parcel(Schema):
    code: Code


@pytest.fixture
def depot() -> Iterator[type[Contract]]:
    """A contract for the annotation checks, known to the process only while its test runs (a
    readiness check lists every known contract)."""

    class Depot(Contract, name="depot"):
        @rpc()
        async def store(
            self, *, code: Code, weight: int, parcels: list[Parcel], note: str | None = None
        ) -> int: ...

    yield Depot
    contracts_module._contracts.pop("depot", None)
    services_module._services.pop("depot", None)


def test_a_service_argument_annotated_otherwise_than_its_contract_fails_at_import(
    depot: type[Contract],
) -> None:
    with pytest.raises(
        TypeError,
        match=(
            r"Loose\.store annotates argument 'weight' as str, but the contract depot\.store declares "
            r"int: use the contract's type\.$"
        ),
    ):

        class Loose(Service, contract=depot):
            def store(self, *, code: str, weight: str, parcels: list[Parcel], note: str | None = None) -> int:
                return 0

    with pytest.raises(
        TypeError, match=r"argument 'parcels' as list\[dict\[str, Any\]\], but .* declares list\[.*Parcel\]"
    ):

        class Untyped(Service, contract=depot):
            def store(
                self, *, code: str, weight: int, parcels: list[dict[str, Any]], note: str | None = None
            ) -> int:
                return 0

    with pytest.raises(TypeError, match=r"argument 'note' as str, but .* declares str \| None"):

        class Narrower(Service, contract=depot):
            def store(self, *, code: str, weight: int, parcels: list[Parcel], note: str = "") -> int:
                return 0


def test_a_service_may_annotate_as_the_contract_its_alias_the_type_under_it_or_not_at_all(
    depot: type[Contract],
) -> None:
    class Same(Service, contract=depot):
        def store(self, *, code: Code, weight: int, parcels: list[Parcel], note: str | None = None) -> int:
            return weight

    class Plain(Service, contract=depot):
        """The constraints of `Code` are checked by the contract before the method runs."""

        def store(
            self,
            *,
            code: str,
            weight: int,
            parcels: list[Parcel],
            note: Optional[str] = None,  # noqa: UP045  # the old spelling of `str | None` is the same type
        ) -> int:
            return weight

    class Bare(Service, contract=depot):
        def store(self, *, code, weight, parcels, note=None):  # type: ignore[no-untyped-def]
            return weight

    assert {Same.contract, Plain.contract, Bare.contract} == {depot}


def test_annotations_a_service_cannot_resolve_are_named(depot: type[Contract]) -> None:
    with pytest.raises(
        TypeError, match=r"Dangling\.store: its annotations cannot be read \(NameError: name 'Missing'"
    ):

        class Dangling(Service, contract=depot):
            def store(
                self,
                *,
                code: Missing,  # type: ignore[name-defined]  # noqa: F821
                weight: int,
                parcels: list[Parcel],
                note: str | None = None,
            ) -> int:
                return 0


def test_declared_errors_get_a_qualified_code_and_travel() -> None:
    assert Refused("x").code == "echo.Refused"
    rebuilt = error_from_wire(Refused("no", reason="r").to_wire())
    assert type(rebuilt) is Refused and rebuilt.details == {"reason": "r"}


def test_an_error_no_contract_declares_arrives_as_remote_error() -> None:
    rebuilt = error_from_wire({"kind": "contract", "code": "elsewhere.Gone", "message": "gone"})
    assert isinstance(rebuilt, RemoteError)
    assert str(rebuilt) == "elsewhere.Gone: gone"


def test_rpc_errors_must_be_contract_errors() -> None:
    with pytest.raises(TypeError, match="takes ContractError subclasses"):
        rpc(errors=[ValueError])  # type: ignore[list-item]


def test_contract_exports_json_schema() -> None:
    schema = Echo.json_schema()
    assert schema["service"] == "echo"
    add = schema["methods"]["add"]
    assert add["read"] is True
    assert add["arguments"]["required"] == ["a"]
    assert add["arguments"]["properties"]["b"] == {"default": 1, "title": "B", "type": "integer"}
    assert add["result"] == {"type": "integer"}
    assert schema["methods"]["refuse"]["errors"] == ["echo.Refused"]
    assert schema["events"]["happened"]["payload"]["required"] == ["text"]


def test_lookup_names_the_method_and_its_flags() -> None:
    method = lookup_method("echo.add")
    assert (method.target, method.read, method.retries) == ("echo.add", True, 3)
    assert issubclass(Refused, ContractError)


@pytest.mark.django_db(transaction=True)
async def test_sync_code_calls_a_method_by_its_declared_name_and_types(
    record_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Echo.count.call(...)` is the sync twin of `await Echo.client().count(...)`; `.send` a command."""
    monkeypatch.setenv("BUS_TEST_RECORD_DIR", str(record_dir))
    async with serving("echo"):
        # In a sync view or handler: sync_to_async stands for the thread it runs in.
        counted = await sync_to_async(Echo.count.call)(items=[Item(sku="A", quantity=2)])
        assert_type(counted, int)
        assert counted == await Echo.client().count(items=[Item(sku="A", quantity=2)]) == 2
        with pytest.raises(Refused, match="Refused: no thanks"):
            await sync_to_async(Echo.refuse.call)(reason="no thanks")
        with pytest.raises(ValidationError, match="a: Input should be a valid integer"):
            await sync_to_async(Echo.add.call)(a="2")  # type: ignore[arg-type]
        sent = [await sync_to_async(Echo.record.send)(n=7), await Echo.record.asend(n=8)]
        assert [len(message_id) for message_id in sent] == [32, 32]
        await sync_to_async(poll)(
            lambda: sorted(read_records(record_dir, "record")),
            lambda seen: seen == ["7", "8"],
            what="both records",
        )


def test_a_declared_method_is_what_the_bus_knows_and_its_client_calls() -> None:
    assert isinstance(Echo.add, RemoteMethod)
    assert Echo.add.method is Echo.methods["add"] is lookup_method("echo.add")
    assert Echo.add.__doc__ is None and Echo.add.__name__ == "add"
    assert Echo.client().add.__name__ == "add"


def test_an_rpc_method_outside_a_contract_says_where_it_belongs() -> None:
    async def stray(self: Any, *, n: int) -> int:
        return n

    loose = rpc()(stray)
    with pytest.raises(TypeError, match=r"stray is not part of a contract: declare it with @rpc\(\) in a"):
        loose.call(n=1)
    with pytest.raises(TypeError, match=r"echo\.add takes keyword arguments only, not 1 positional\."):
        Echo.add.call(1)  # type: ignore[call-arg]


def test_a_result_the_contract_does_not_accept_is_an_invalid_result() -> None:
    """Not the caller's mistake: a worker of another contract version answered (502 at the edge)."""
    import bus
    from bus.targets import lookup_method
    from consumers.problems import from_bus_error

    with pytest.raises(bus.InvalidResult, match=r"Invalid result from echo.add: \(root\)") as caught:
        lookup_method("echo.add").load_result("three")
    assert isinstance(caught.value, bus.ValidationError)
    answer = from_bus_error(caught.value)
    assert answer.status_code == 502 and b"disagree on the contract" in answer.content
