"""The AsyncAPI description of the bus at /api/asyncapi.json: the document `manage.py bus asyncapi`
prints, built once per process, and itself described in /api/openapi.json.

What the document says is checked in tests/bus/test_asyncapi.py (valid AsyncAPI 3.0, complete, true
to the wire); here, that the edge serves it as built.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from django.core.management import call_command

from bus import asyncapi
from consumers import asyncapi as served_asyncapi
from tests.edge.conftest import Browser


async def served() -> dict[str, Any]:
    response = await Browser().get("/api/asyncapi.json")
    assert response.status == 200, response.body[:300]
    assert response.headers["content-type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


def printed(*arguments: str) -> str:
    out = io.StringIO()
    call_command("bus", "asyncapi", *arguments, stdout=out, stderr=io.StringIO())
    return out.getvalue()


async def test_the_url_and_the_command_give_the_same_document(tmp_path: Path) -> None:
    document = await served()
    assert document["asyncapi"] == "3.0.0"
    assert {"inventory", "orders", "payments", "reply"} <= set(document["channels"])
    assert document == json.loads(printed())
    written = tmp_path / "asyncapi.json"
    printed("--output", str(written))
    assert document == json.loads(written.read_text())
    assert document == json.loads(json.dumps(asyncapi.document()))


async def test_it_is_built_once_and_served_as_built() -> None:
    assert served_asyncapi.document() is served_asyncapi.document()
    assert await served() == json.loads(json.dumps(served_asyncapi.document()))


async def test_the_openapi_description_lists_it() -> None:
    response = await Browser().get("/api/openapi.json")
    operation = response.json()["paths"]["/api/asyncapi.json"]["get"]
    assert operation["operationId"] == "getAsyncApi"
    assert operation["tags"] == ["operations"]
    assert operation["security"] == [{}]
    assert list(operation["responses"]) == ["200"]
