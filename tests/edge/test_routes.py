"""Each HTTP operation is declared once, above its view (consumers/routes.py), and the URL table is
built from those declarations: what a path answers, what it refuses, and the declarations that
contradict themselves, which fail at import with what to fix.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import RequestFactory
from django.urls import get_resolver

import bus
from consumers import routes
from consumers.routes import ANYONE, Link, Ok, Operation, Registry, argument, in_path
from consumers.stock import through_cache
from tests.edge.test_openapi_document import routes as url_table
from workers.inventory.contract import Inventory
from workers.orders.contract import Orders

CONSUMERS = Path(routes.__file__).parent


def declare(
    method: Any = "GET", path: str = "/things/{thing}", operation_id: str = "", **more: Any
) -> Operation:
    """An operation on a test path; `more` overrides any field."""
    fields: dict[str, Any] = {
        "tag": "things",
        "summary": "A thing",
        "security": ANYONE,
        "ok": Ok("The thing.", dict[str, str]),
        "parameters": [in_path("thing", "Its name.", {"type": "string"}, example="a")],
        **more,
    }
    return Operation(method, path, operation_id or f"{method.lower()}Thing", **fields)


async def read_thing(request: HttpRequest, thing: str) -> HttpResponse:
    return JsonResponse({"read": thing, "method": request.method})


async def write_thing(request: HttpRequest, thing: str) -> HttpResponse:
    return JsonResponse({"wrote": thing}, status=201)


async def unavailable_thing(request: HttpRequest, thing: str) -> HttpResponse:
    raise bus.NoWorker("No live worker serves things: start `manage.py runworker things`.")


def resolved(registry: Registry, url: str) -> tuple[Any, dict[str, Any]]:
    """The Django view and keyword arguments the registry's URL table gives `url`."""
    for pattern in registry.urlpatterns():
        match = pattern.resolve(url.lstrip("/"))
        if match is not None:
            return match.func, match.kwargs
    raise AssertionError(f"{url} matches no declared path")


async def answer(registry: Registry, method: str, url: str) -> tuple[HttpResponse, dict[str, Any]]:
    view, kwargs = resolved(registry, url)
    response: HttpResponse = await view(RequestFactory().generic(method, url), **kwargs)
    return response, json.loads(response.content)


def test_the_url_table_is_the_declared_operations() -> None:
    """project/urls.py has no copy of a route: its API routes are the declarations, one per path."""
    declared = {route.operation.path for route in routes.registry.routes()}
    served = set(url_table())
    assert declared <= served, "declared operations without a route"
    assert {route for route in served if route.startswith("/api/")} <= declared, "API routes nobody declared"
    for path in declared:
        view = get_resolver().resolve(path.replace("{", "").replace("}", "")).func
        assert view.__name__ == f"dispatch {path}", (path, view)


async def test_a_path_answers_each_declared_method_and_a_405_problem_names_the_others() -> None:
    registry = Registry()
    registry.add(declare("GET"), read_thing)
    registry.add(declare("POST", ok=Ok("Made.", dict[str, str], status=201)), write_thing)
    assert len(registry.urlpatterns()) == 1, "one Django route per path, whatever its methods"

    response, body = await answer(registry, "GET", "/things/a")
    assert (response.status_code, body) == (200, {"read": "a", "method": "GET"})
    response, body = await answer(registry, "HEAD", "/things/a")
    assert (response.status_code, body["method"]) == (200, "HEAD"), "HEAD is served by the GET view"
    response, body = await answer(registry, "POST", "/things/b")
    assert (response.status_code, body) == (201, {"wrote": "b"})

    response, body = await answer(registry, "PUT", "/things/a")
    assert response.status_code == 405 and response["Content-Type"] == "application/problem+json"
    assert response["Allow"] == "GET, HEAD, POST"
    assert body["detail"] == "/things/a takes GET or POST only (see /api/openapi.json).", body


async def test_a_bus_error_in_a_view_is_a_problem() -> None:
    registry = Registry()
    registry.add(declare("GET", errors=routes.usual(503)), unavailable_thing)
    response, body = await answer(registry, "GET", "/things/a")
    assert (response.status_code, response["Retry-After"], body["status"]) == (503, "5", 503)
    assert "start `manage.py runworker things`" in body["detail"], body


async def another_view(request: HttpRequest, thing: str) -> HttpResponse:
    return HttpResponse()


async def takes_other(request: HttpRequest, other: str) -> HttpResponse:
    return HttpResponse()


def not_async(request: HttpRequest, thing: str) -> HttpResponse:
    return HttpResponse()


@pytest.mark.parametrize(
    ("operation", "view", "message"),
    [
        (declare(parameters=[]), read_thing, r"path parameters \[\] do not match the path's \['thing'\]"),
        (declare(), takes_other, r"the view takes \['other'\] but the path gives \['thing'\]"),
        (declare(), not_async, r"the view must be `async def`"),
        (declare(path="/things/<str:thing>"), read_thing, r"the path is an OpenAPI template"),
        (
            declare(errors={302: "Moved."}),
            read_thing,
            r"ok is a 2xx, errors are 4xx or 5xx; got 200, \[302\]",
        ),
        (declare(ok=Ok("Made.", dict[str, str], status=400)), read_thing, r"ok is a 2xx"),
    ],
    ids=["undeclared-path-parameter", "view-argument", "sync-view", "django-syntax", "redirect", "ok-400"],
)
def test_an_operation_that_contradicts_itself_or_its_view_is_refused(
    operation: Operation, view: Any, message: str
) -> None:
    with pytest.raises(TypeError, match=r"GET /things/.* \(tests\.edge\.test_routes\.\w+\): " + message):
        Registry().add(operation, view)


def test_an_operation_is_declared_once_and_its_id_is_its_own() -> None:
    registry = Registry()
    registry.add(declare("GET"), read_thing)
    with pytest.raises(TypeError, match=r"GET /things/\{thing\} .* is declared twice; keep one declaration"):
        registry.add(declare("GET", operation_id="another"), another_view)
    with pytest.raises(TypeError, match=r"operationId 'getThing' is taken; choose another"):
        registry.add(declare("POST", operation_id="getThing"), write_thing)


def test_links_go_to_declared_operations_and_their_parameters() -> None:
    registry = Registry()
    goes_nowhere = Ok(
        "The thing.", dict[str, str], links={"next": Link("listThings", {"page": "$response.body#/n"})}
    )
    registry.add(declare("GET", ok=goes_nowhere), read_thing)
    with pytest.raises(TypeError, match=r"getThing: link 'next' goes to 'listThings' with \['page'\]"):
        registry.routes()
    wrong_parameter = Ok(
        "Made.", dict[str, str], links={"read": Link("getThing", {"name": "$response.body#/n"})}
    )
    registry = Registry()
    registry.add(declare("GET"), read_thing)
    registry.add(declare("POST", ok=wrong_parameter), write_thing)
    with pytest.raises(TypeError, match=r"link 'read' goes to 'getThing' with \['name'\], which no declared"):
        registry.routes()


def test_a_parameter_names_a_contract_argument_that_exists() -> None:
    assert argument(Orders.get, "order_id").json_schema()["maxLength"] > 0
    with pytest.raises(TypeError, match=r"orders.get has no argument 'id'; it takes \['order_id'\]"):
        argument(Orders.get, "id")


async def test_reads_through_the_cache_take_the_contracts_arguments_by_name() -> None:
    with pytest.raises(TypeError, match=r"inventory.stock takes keyword arguments only, not 1 positional"):
        await through_cache(Inventory.stock, "A-1")  # type: ignore[call-arg]


class StringTargets(ast.NodeVisitor):
    """Calls like `bus.acall("orders.get", ...)`: the target as a string, the result as Any."""

    CALLS = {"call", "acall", "call_cached", "acall_cached", "send", "asend"}

    def __init__(self) -> None:
        self.found: list[str] = []

    def visit_Call(self, node: ast.Call) -> None:
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        first = node.args[0] if node.args else None
        if name in self.CALLS and isinstance(first, ast.Constant) and isinstance(first.value, str):
            self.found.append(f"line {node.lineno}: {name}({first.value!r}, ...)")
        self.generic_visit(node)


def test_the_edge_calls_domains_through_their_typed_clients() -> None:
    """So mypy sees what the API reads from a result (`found.customer_id`), and a renamed field fails it."""
    for module in sorted(CONSUMERS.rglob("*.py")):
        visitor = StringTargets()
        visitor.visit(ast.parse(module.read_text()))
        assert visitor.found == [], f"{module.relative_to(CONSUMERS.parent)}: {visitor.found}"
