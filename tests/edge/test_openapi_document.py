"""The OpenAPI description at /api/openapi.json: valid OpenAPI 3.1, and complete.

Routes and descriptions come from the same declarations (consumers/routes.py), so a route under
/api/ cannot be served undescribed nor described unserved; the test that says so stays, as a guard
on that construction. tests/fuzz/test_openapi.py checks the API against what the description says.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import jsonschema_rs  # schemathesis's own JSON Schema validator
import pytest
import schemathesis
from django.test import RequestFactory
from django.urls import URLPattern, URLResolver, get_resolver
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode
from schemathesis.core.result import Ok

from bus.status import SystemStatus
from consumers import openapi
from tests.edge.conftest import Browser
from workers.inventory.contract import Stock
from workers.orders.contract import Order, OrderItem

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
PROBLEM = "application/problem+json"


async def served() -> dict[str, Any]:
    """The description as the whole ASGI application serves it."""
    response = await Browser().get("/api/openapi.json")
    assert response.status == 200, response.body[:300]
    assert response.headers["content-type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


def routes(patterns: list[Any] | None = None, prefix: str = "") -> list[str]:
    """Every URL pattern of project/urls.py, as an OpenAPI path ("/api/products/{sku}")."""
    found = []
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            found += routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            found.append("/" + openapi_path(route))
    return found


def openapi_path(route: str) -> str:
    """Django's "<str:sku>" is OpenAPI's "{sku}"."""
    while "<" in route:
        start, end = route.index("<"), route.index(">")
        route = route[:start] + "{" + route[start + 1 : end].rpartition(":")[2] + "}" + route[end + 1 :]
    return route


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


async def test_the_served_description_is_valid_openapi_3_1() -> None:
    document = await served()
    assert document["openapi"].startswith("3.1.")
    schema = schemathesis.openapi.from_dict(document)
    schema.validate()  # against the OpenAPI 3.1 schema; raises on the first violation
    loaded = list(schema.get_all_operations())
    assert loaded and all(isinstance(result, Ok) for result in loaded), loaded
    # The OpenAPI schema does not look inside schemas: check each against JSON Schema 2020-12.
    for name, component in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(component), name


async def test_it_is_built_once_and_served_as_built() -> None:
    assert openapi.document() is openapi.document()
    assert await served() == json.loads(json.dumps(openapi.document()))


async def test_every_api_route_is_described_and_every_description_is_a_route() -> None:
    api_routes = {route for route in routes() if route.startswith("/api/")}
    described = set((await served())["paths"])
    assert api_routes - described == set(), "routes under /api/ that no Operation declares"
    assert {path for path in described if path.startswith("/api/")} - api_routes == set(), (
        "declared operations that project/urls.py does not include"
    )
    assert {"/healthz", "/readyz"} <= described


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
async def test_each_route_refuses_the_methods_it_does_not_describe(method: str) -> None:
    """The description names every method a route takes: the others are 405 before the view runs."""
    document = await served()
    for path in (route for route in routes() if route in document["paths"]):
        if method.lower() in document["paths"][path]:
            continue
        url = path.replace("{", "").replace("}", "")  # "/api/products/sku": any value does
        match = get_resolver().resolve(url)
        response = match.func(RequestFactory().generic(method, url), *match.args, **match.kwargs)
        if inspect.isawaitable(response):
            response = await response
        assert response.status_code == 405, (method, path, response.status_code)


async def test_errors_are_problem_details_and_unavailability_says_when_to_retry() -> None:
    document = await served()
    for path, method, operation in operations(document):
        assert operation["responses"], (method, path)
        for status, response in operation["responses"].items():
            assert "X-Correlation-ID" in response["headers"], (method, path, status)
            if int(status) < 400:
                assert list(response["content"]) == ["application/json"], (method, path, status)
                continue
            assert response["content"] == {
                PROBLEM: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}
            }, (method, path, status)
            assert ("Retry-After" in response["headers"]) == (status == "503"), (method, path, status)


async def test_authentication_and_headers_are_documented() -> None:
    document = await served()
    schemes = document["components"]["securitySchemes"]
    assert (schemes["session"]["in"], schemes["session"]["name"]) == ("cookie", "sessionid")
    assert (schemes["csrfHeader"]["in"], schemes["csrfHeader"]["name"]) == ("header", "X-CSRFToken")
    place = document["paths"]["/api/orders"]["post"]
    assert place["security"] == [{"session": [], "csrfCookie": [], "csrfHeader": []}]
    assert {"401", "403"} <= set(place["responses"])
    assert any(p.get("name") == "Idempotency-Key" and p["required"] for p in place["parameters"])
    for path, method, operation in operations(document):
        assert {"$ref": "#/components/parameters/X-Correlation-ID"} in operation["parameters"], (method, path)
        if {"session": []} in operation["security"] and {} not in operation["security"]:
            assert "401" in operation["responses"], (method, path)


async def test_bodies_are_the_contracts_models() -> None:
    """The place-order body, orders and stock are the JSON Schema of the contracts' own models."""
    schemas = (await served())["components"]["schemas"]
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (OrderItem, "validation"),
        (Order, "serialization"),
        (Stock, "serialization"),
    ]
    for model, mode in models:
        expected = model.model_json_schema(ref_template=openapi.REFS, mode=mode)
        expected.pop("$defs", None)  # beside it in components/schemas
        assert schemas[model.__name__] == expected, model.__name__
    items = schemas["PlaceOrder"]["properties"]["items"]
    assert (items["minItems"], items["maxItems"], items["items"]) == (
        1,
        50,
        {"$ref": "#/components/schemas/OrderItem"},
    )


@pytest.mark.db
@pytest.mark.django_db(transaction=True, databases="__all__")
async def test_the_status_shape_is_declared_once_by_bus_status() -> None:
    """GET /api/system answers what bus.status declares, and the description is that same type."""
    schemas = (await served())["components"]["schemas"]
    declared = TypeAdapter(SystemStatus)
    expected = declared.json_schema(ref_template=openapi.REFS, mode="serialization")
    assert schemas["DomainStatus"] == expected.pop("$defs")["DomainStatus"]
    assert schemas["SystemStatus"] == expected
    response = await Browser().get("/api/system")
    assert response.status == 200, response.body[:300]
    report = declared.validate_python(response.json())
    assert {"inventory", "orders", "payments"} <= {row["domain"] for row in report["domains"]}, report
