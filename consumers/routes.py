"""Each HTTP operation declared once, beside its view: the URL table and the OpenAPI paths come from it.

    @Operation(
        "GET", "/api/products/{sku}", "getProduct", tag="stock",
        summary="One product's stock, through the edge's cache",
        security=ANYONE,
        parameters=[in_path("sku", "The product's SKU.", argument(Inventory.stock, "sku"), "ANVIL-1")],
        ok=Ok("The product's stock figures.", StockReading),
        errors={404: "No product has this SKU.", **usual(*BUS_FAILURES)},
    )
    async def product(request: HttpRequest, sku: str) -> HttpResponse: ...

`urlpatterns()` (included by project/urls.py) makes one Django route per path. It answers each
declared method with its view (HEAD with GET), every other method with a 405 problem naming the
allowed ones, and turns bus errors into problem details, so nothing reaches a client as HTML or a
traceback. consumers/openapi.py renders the same declarations as the OpenAPI document. A
declaration that contradicts itself or its view fails at import and says what to fix.

A registry of our own rather than django-ninja: ninja would be a new dependency with its own
request parsing, its own 422 validation errors and its own OpenAPI generator, while the views
here read raw bodies on purpose (integral floats, size limits, one problem per mistake), take
their limits from the contracts' argument models and describe links for stateful fuzzing.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path

import bus
from bus.contracts import Method, RemoteMethod

from .problems import from_bus_error, problem

View = Callable[..., Coroutine[Any, Any, HttpResponse]]
V = TypeVar("V", bound=View)

#: The modules that declare operations; urlpatterns() and the document import them all.
MODULES = ("consumers.stock", "consumers.api", "consumers.health", "consumers.openapi", "consumers.asyncapi")

# Security requirements: each names components/securitySchemes that must all be sent (openapi.py).
Security = Sequence[Mapping[str, Sequence[str]]]
ANYONE: Security = ({},)
SIGNED_IN: Security = ({"session": []},)
SIGNED_IN_WITH_CSRF: Security = ({"session": [], "csrfCookie": [], "csrfHeader": []},)
ANYONE_OR_SIGNED_IN: Security = (*ANYONE, *SIGNED_IN)

MAX_BODY = 64 * 1024  # bytes of a request body the API reads

# What each error status means, unless an operation says more precisely.
ERRORS = {
    400: "The request is malformed; `detail` (and `errors`) name the field.",
    401: "Not signed in: sign in at /accounts/login/ first.",
    403: "Forbidden.",
    404: "Not found.",
    409: "Refused by the domain.",
    410: "Gone.",
    413: f"The body is over {MAX_BODY} bytes.",
    502: "A domain failed in a way it does not declare; the failure was logged. Retry later.",
    503: (
        "A domain cannot take the request now: read-only mode, a full queue, no live worker, or "
        "Redis unreachable. Retry after `Retry-After` seconds."
    ),
    504: "A domain did not answer within the deadline. Retry shortly.",
}
# Every call to a domain can end in these (consumers/problems.py from_bus_error).
BUS_FAILURES = (502, 503, 504)


def usual(*statuses: int) -> dict[int, str]:
    """Error statuses with their usual meaning (ERRORS), for an operation's `errors`."""
    return {status: ERRORS[status] for status in statuses}


@dataclass(frozen=True)
class Argument:
    """A contract argument a parameter ends up in: its schema carries the limits the domain checks."""

    method: Method
    name: str

    def json_schema(self) -> dict[str, Any]:
        schema = dict(self.method.arguments.model_json_schema()["properties"][self.name])
        schema.pop("title", None)
        return schema


def argument(remote: RemoteMethod[..., Any], name: str) -> Argument:
    """`name`, an argument of a contract's method (`Orders.get`); a typo fails at import."""
    method = remote.method
    if name not in method.arguments.model_fields:
        raise TypeError(
            f"{method.target} has no argument {name!r}; it takes {list(method.arguments.model_fields)}."
        )
    return Argument(method, name)


@dataclass(frozen=True)
class Parameter:
    """A path, query or header parameter; `schema` is JSON Schema, or a contract's argument."""

    name: str
    where: Literal["path", "query", "header"]
    description: str
    schema: Argument | Mapping[str, Any]
    required: bool = False
    example: Any = None


def in_path(name: str, description: str, schema: Argument | Mapping[str, Any], example: Any) -> Parameter:
    return Parameter(name, "path", description, schema, required=True, example=example)


def in_query(
    name: str, description: str, schema: Argument | Mapping[str, Any], example: Any = None
) -> Parameter:
    return Parameter(name, "query", description, schema, example=example)


@dataclass(frozen=True)
class Link:
    """What a client can do next with an answer (and schemathesis's stateful phase follows)."""

    operation_id: str
    parameters: Mapping[str, str]


def link(operation_id: str, **parameters: str) -> Link:
    return Link(operation_id, parameters)


@dataclass(frozen=True)
class Ok:
    """The success answer: its status, and `body`, any type pydantic describes (a model, a list)."""

    description: str
    body: Any
    status: int = 200
    links: Mapping[str, Link] = field(default_factory=dict)
    headers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Body:
    """A JSON request body, described by `model` (validation mode: what clients may send)."""

    model: Any
    example: Any = None


@dataclass(frozen=True)
class Operation:
    """One method on one path, declared above its view (used as its decorator)."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str  # OpenAPI's template: "/api/products/{sku}"
    operation_id: str
    tag: str
    summary: str
    ok: Ok
    security: Security
    description: str = ""
    parameters: Sequence[Parameter] = ()
    body: Body | None = None
    errors: Mapping[int, str] = field(default_factory=dict)  # status: what it means here

    def __call__(self, view: V) -> V:
        registry.add(self, view)
        return view

    @property
    def path_names(self) -> list[str]:
        return re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", self.path)


@dataclass(frozen=True)
class Route:
    operation: Operation
    view: View


class Registry:
    """The declared operations, in declaration order, checked as each is added."""

    def __init__(self, modules: Sequence[str] = ()) -> None:
        self.modules = modules
        self._routes: dict[tuple[str, str], Route] = {}

    def add(self, operation: Operation, view: View) -> None:
        where = f"{operation.method} {operation.path} ({view.__module__}.{view.__qualname__})"
        if (operation.method, operation.path) in self._routes:
            raise TypeError(f"{where} is declared twice; keep one declaration.")
        if any(route.operation.operation_id == operation.operation_id for route in self._routes.values()):
            raise TypeError(f"{where}: operationId {operation.operation_id!r} is taken; choose another.")
        _check(operation, view, where)
        self._routes[operation.method, operation.path] = Route(operation, view)

    def routes(self) -> list[Route]:
        """Every declared operation, once the modules that declare them are imported."""
        for module in self.modules:
            importlib.import_module(module)
        routes = list(self._routes.values())
        _check_links([route.operation for route in routes])
        return routes

    def urlpatterns(self) -> list[URLPattern]:
        """One Django route per declared path, in declaration order."""
        by_path: dict[str, dict[str, Route]] = {}
        for route in self.routes():
            by_path.setdefault(route.operation.path, {})[route.operation.method] = route
        return [
            path(re.sub(r"\{(\w+)\}", r"<str:\1>", template.lstrip("/")), dispatcher(template, routes))
            for template, routes in by_path.items()
        ]


def _check(operation: Operation, view: View, where: str) -> None:
    """An operation agrees with itself and with its view, or fails with what to fix."""
    if not operation.path.startswith("/") or "<" in operation.path:
        raise TypeError(f'{where}: the path is an OpenAPI template: "/api/products/{{sku}}".')
    declared = [p.name for p in operation.parameters if p.where == "path"]
    if sorted(declared) != sorted(operation.path_names):
        raise TypeError(
            f"{where}: path parameters {declared} do not match the path's {operation.path_names}."
        )
    taken = list(inspect.signature(view).parameters)[1:]  # after the request
    if sorted(taken) != sorted(operation.path_names):
        raise TypeError(f"{where}: the view takes {taken} but the path gives {operation.path_names}.")
    if not inspect.iscoroutinefunction(view):
        raise TypeError(f"{where}: the view must be `async def`.")
    wrong = [status for status in operation.errors if not 400 <= status <= 599]
    if wrong or not 200 <= operation.ok.status <= 299:
        raise TypeError(f"{where}: ok is a 2xx, errors are 4xx or 5xx; got {operation.ok.status}, {wrong}.")


def _check_links(operations: list[Operation]) -> None:
    """Every link names a declared operation and parameters that operation takes."""
    by_id = {operation.operation_id: operation for operation in operations}
    for operation in operations:
        for name, target in operation.ok.links.items():
            found = by_id.get(target.operation_id)
            takes = {parameter.name for parameter in found.parameters} if found else set()
            if found is None or not set(target.parameters) <= takes:
                raise TypeError(
                    f"{operation.operation_id}: link {name!r} goes to {target.operation_id!r} with "
                    f"{sorted(target.parameters)}, which no declared operation takes."
                )


def dispatcher(template: str, routes: Mapping[str, Route]) -> View:
    """The Django view of one path: the declared method's view, or a 405 problem."""
    methods = sorted(routes)
    allowed = ", ".join(sorted({*methods, "HEAD"} if "GET" in routes else methods))

    async def dispatch(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        route = routes.get("GET" if request.method == "HEAD" else str(request.method))
        if route is None:
            response = problem(
                405,
                "Method not allowed",
                f"{request.path} takes {' or '.join(methods)} only (see /api/openapi.json).",
            )
            response["Allow"] = allowed
            return response
        try:
            return await route.view(request, **kwargs)
        except bus.BusError as error:
            return from_bus_error(error)

    dispatch.__name__ = dispatch.__qualname__ = f"dispatch {template}"
    return dispatch


registry = Registry(MODULES)
