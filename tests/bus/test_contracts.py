"""Declaring contracts and services: mistakes fail at import time, with the fix in the message."""

from __future__ import annotations

import pytest

from bus import Contract, ContractError, Service, rpc
from bus.contracts import lookup_method
from bus.exceptions import RemoteError, error_from_wire
from tests.echo.contract import Echo, Refused


def test_argument_names_may_not_clash_with_the_calls_own_keywords() -> None:
    with pytest.raises(TypeError, match=r"argument name 'timeout' clashes with bus\.call's own keyword"):

        class Clock(Contract, name="clock_a"):
            @rpc()
            async def wait(self, *, timeout: float) -> None: ...


def test_variadic_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="parameter 'rest' must be a plain keyword argument"):

        class Loose(Contract, name="loose"):
            @rpc()
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
