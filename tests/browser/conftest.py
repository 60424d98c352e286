"""The shop as real processes, driven by headless Chromium.

Each test gets its own stack: a flushed private redis-server, fresh migrated and seeded SQLite
files, one `runworker` process per domain (inventory, payments, orders, presentation, and one for the
test-only echo, which every orders.updated event is also delivered to, and tally), and daphne serving
`tests.browser.asgi` on a free loopback port. The browser is Debian's Chromium through the
`playwright` package (no browser of Playwright's own is downloaded). On a failure, a screenshot,
the page's console and the processes' logs go to tests/artifacts/.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, Page, WebSocket, async_playwright, expect

from tests.conftest import ROOT, WorkerProcess, migrated, process_env, wait_for_worker
from tests.edge.servers import Daphne
from tests.polling import poll
from tests.site import DEMO_PASSWORDS

CHROMIUM = os.environ.get("BROWSER_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "tests" / "artifacts"
# The channels of each worker process; the test domains share one.
WORKERS = (("inventory",), ("payments",), ("orders",), ("presentation",), ("echo", "tally"))
SEEDED_PRODUCTS = 6  # consumers/management/commands/seed.py: one stock_changed event each

# Counts every close of every WebSocket the page opens, with its code (the page's own handlers
# are untouched): lets a test tell a server-side 4000 close from a dropped connection (1006).
# And reports every Content-Security-Policy violation to the test (Tab.violations).
INIT_SCRIPT = """
(() => {
  const Native = window.WebSocket;
  window.__socketCloses = [];
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("close", (event) => window.__socketCloses.push(event.code));
    }
  };
  document.addEventListener("securitypolicyviolation", (event) => {
    const where = `${event.blockedURI || "inline"} on ${location.pathname}`;
    window.__reportViolation(`${event.violatedDirective} blocked ${where}`);
  });
})();
"""


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item (rep_setup, rep_call), for the fixtures' teardown."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def failed(request: pytest.FixtureRequest) -> bool:
    return any(
        getattr(getattr(request.node, f"rep_{when}", None), "failed", False) for when in ("setup", "call")
    )


def artifact_path(request: pytest.FixtureRequest, suffix: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / (re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name) + suffix)


@dataclass
class Shop:
    """The processes of one test's shop, and ways to reach it from the test."""

    redis_url: str
    data_dir: Path
    logs: Path
    start_worker: Callable[..., WorkerProcess]
    edge_env: dict[str, str]
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    web: Daphne = field(init=False)

    def __post_init__(self) -> None:
        self.web = Daphne(self.env(), self.logs)

    @property
    def url(self) -> str:
        return self.web.url

    def env(self) -> dict[str, str]:
        return process_env(
            self.data_dir, BUS_TEST_REDIS_URL=self.redis_url, PYTHONUNBUFFERED="1", **self.edge_env
        )

    # -- processes ------------------------------------------------------------------------------

    def start_workers(self) -> None:
        for channels in WORKERS:
            self.workers[channels[0]] = self.start_worker(
                self.redis_url, *channels, data_dir=self.data_dir, wait=False
            )
        for channels in WORKERS:
            wait_for_worker(self.workers[channels[0]], self.redis_url, channels)

    def manage(self, *arguments: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *arguments],  # tests.settings: from process_env
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def bus_call(self, target: str, **arguments: Any) -> Any:
        """`manage.py bus call TARGET JSON` as an operator would run it; its JSON result."""
        done = self.manage("bus", "call", target, json.dumps(arguments))
        assert done.returncode == 0, (
            f"bus call {target} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
        return json.loads(done.stdout)

    def seed(self) -> None:
        done = self.manage("seed", timeout=90)
        assert done.returncode == 0, f"seed exited {done.returncode}:\n{done.stdout}{done.stderr}"
        # The seed's stock_changed events leave through inventory's outbox: let them reach the
        # event log before any page loads, so none arrives after the page's first state.
        poll(
            self.log_offset,
            lambda offset: offset >= SEEDED_PRODUCTS,
            what="the seed's stock events in the log",
        )

    # -- HTTP, as a client that is not the page ---------------------------------------------------

    def get(self, path: str, *, cookie: str = "") -> tuple[int, Any]:
        request = urllib.request.Request(self.url + path, headers={"Accept": "application/json"})
        if cookie:
            request.add_header("Cookie", cookie)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read() or b"null")

    def log_offset(self) -> int:
        """The offset of the newest event in the presentation log (`GET /api/events`)."""
        status, body = self.get("/api/events")
        assert status == 200, body
        return int(body["cursor"].rpartition(":")[2])

    def wait_ready(self) -> None:
        poll(lambda: self.get("/readyz"), lambda answer: answer[0] == 200, what="/readyz to answer 200")


@pytest.fixture
def edge(request: pytest.FixtureRequest) -> dict[str, str]:
    """Environment for this test's processes; parametrize indirectly to override, e.g.
    `@pytest.mark.parametrize("edge", [{"EDGE_TEST_STOCK_TTL": "1"}], indirect=True)`."""
    return dict(getattr(request, "param", {}))


@pytest.fixture(scope="module")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SQLite files migrated once per module; each test works on a copy of its own."""
    return migrated(tmp_path_factory.mktemp("browser-migrated"))


@pytest.fixture
def shop_processes(
    request: pytest.FixtureRequest,
    redis_layer: str,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    migrated_template: Path,
    edge: dict[str, str],
) -> Iterator[Shop]:
    """Redis (flushed), fresh migrated SQLite files, a worker per domain, demo data, and daphne."""
    logs, data = tmp_path / "logs", tmp_path / "data"
    logs.mkdir()
    shutil.copytree(migrated_template, data)
    stack = Shop(redis_layer, data, logs, start_worker, edge)
    try:
        stack.start_workers()
        stack.web.start()
        stack.seed()
        stack.wait_ready()
        yield stack
    finally:
        stack.web.stop()
        if failed(request):
            for log in logs.glob("*.log"):
                shutil.copy(log, artifact_path(request, f".{log.name}"))
            for domain, worker in stack.workers.items():
                shutil.copy(worker.log, artifact_path(request, f".worker-{domain}.log"))


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (or set BROWSER_TEST_CHROMIUM).")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Tab:
    """A page and what it reported that a test may assert on."""

    page: Page
    errors: list[str] = field(default_factory=list)  # uncaught exceptions (pageerror)
    console: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)  # of the Content-Security-Policy
    frames: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # ("sent"|"received", frame)

    def watch_socket(self, socket: WebSocket) -> None:
        socket.on("framesent", lambda payload: self._frame("sent", payload))
        socket.on("framereceived", lambda payload: self._frame("received", payload))

    def _frame(self, direction: str, payload: str | bytes) -> None:
        try:
            self.frames.append((direction, json.loads(payload)))
        except ValueError:
            self.frames.append((direction, {"type": "(not JSON)", "payload": str(payload)}))


@pytest.fixture
async def open_tab(
    request: pytest.FixtureRequest, browser: Browser
) -> AsyncIterator[Callable[[str], Awaitable[Tab]]]:
    """Open a fresh browser context on a site; a screenshot and the console of each on failure."""
    opened: list[Tab] = []

    async def open_on(base_url: str) -> Tab:
        context = await browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(20_000)
        await context.add_init_script(INIT_SCRIPT)
        page = await context.new_page()
        tab = Tab(page)
        await context.expose_function("__reportViolation", lambda violation: tab.violations.append(violation))
        page.on("pageerror", lambda error: tab.errors.append(f"{error.name}: {error.message}\n{error.stack}"))
        page.on("console", lambda message: tab.console.append(f"{message.type}: {message.text}"))
        page.on("websocket", tab.watch_socket)
        opened.append(tab)
        return tab

    try:
        yield open_on
    finally:
        for number, tab in enumerate(opened):
            if failed(request):
                suffix = f"-{number}" if number else ""
                shot = artifact_path(request, f"{suffix}.png")
                try:
                    await tab.page.screenshot(path=str(shot), full_page=True)
                except Exception as error:  # a dead page must not hide the test's own failure
                    tab.console.append(f"(no screenshot: {error})")
                lines = tab.console + tab.errors + tab.violations
                artifact_path(request, f"{suffix}.console.txt").write_text("\n".join(lines))
            await tab.page.context.close()


@pytest.fixture
async def tab(open_tab: Callable[[str], Awaitable[Tab]], shop_processes: Shop) -> Tab:
    """A fresh browser context on the shop."""
    return await open_tab(shop_processes.url)


async def sign_in(page: Page, username: str) -> None:
    """Through the real login form, as a person would; lands on the shop."""
    await page.goto("/accounts/login/?next=/")
    await page.fill("#id_username", username)
    await page.fill("#id_password", DEMO_PASSWORDS[username])
    async with page.expect_navigation():
        await page.click("form button[type=submit]")
    assert urlsplit(page.url).path == "/", f"sign-in as {username} landed on {page.url}"
    await expect(page.locator(".who-name")).to_have_text(username)


async def in_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Blocking process work, off the loop that drives the browser."""
    return await asyncio.to_thread(function, *args, **kwargs)
