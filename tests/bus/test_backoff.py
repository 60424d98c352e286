"""One backoff for the whole bus: exponential, capped, with full jitter by default, tuned in settings.

Bounds and spread are checked on the numbers the formula gives, never on how long anything took.
"""

from __future__ import annotations

import datetime

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from bus import deadletters
from bus.backoff import Backoff
from bus.client import Bus
from bus.conf import DEFAULTS, backoff_setting
from bus.outbox import arelay
from bus.threads import in_pool
from tests.conftest import free_port

seconds = st.floats(min_value=0.001, max_value=3600.0)
attempts = st.integers(min_value=1, max_value=10_000)
jitters = st.floats(min_value=0.0, max_value=1.0)


@given(base=seconds, extra=seconds, jitter=jitters, attempt=attempts)
def test_every_delay_lies_between_its_ceiling_less_the_jitter_and_the_ceiling(
    base: float, extra: float, jitter: float, attempt: int
) -> None:
    backoff = Backoff(base, base + extra, jitter)
    ceiling = backoff.ceiling(attempt)
    assert ceiling == min(base + extra, base * 2.0 ** min(attempt - 1, 62))
    assert ceiling * (1 - jitter) - 1e-9 <= backoff.delay(attempt) <= ceiling


@given(base=seconds, extra=seconds, attempt=attempts)
def test_the_ceiling_starts_at_base_doubles_and_stops_at_the_cap(
    base: float, extra: float, attempt: int
) -> None:
    backoff = Backoff(base, base + extra)
    assert backoff.ceiling(1) == base
    assert backoff.ceiling(attempt + 1) == min(2 * backoff.ceiling(attempt), backoff.cap)


def test_a_huge_attempt_number_is_the_cap_not_an_overflow() -> None:
    assert Backoff(0.5, 60.0).ceiling(10**9) == 60.0


def test_full_jitter_spreads_delays_over_the_whole_window() -> None:
    """Full jitter: processes that failed together (every worker when Redis restarted) do not retry
    together. 2,000 draws: the chance that none falls in the lowest or highest tenth is below 1e-90."""
    backoff = Backoff(1.0, 8.0)
    assert backoff.jitter == 1.0, "full jitter is the default"
    delays = [backoff.delay(4) for _ in range(2_000)]
    assert min(delays) < 0.8 and max(delays) > 7.2
    assert len(set(delays)) > 1_900


def test_no_jitter_waits_exactly_the_ceiling() -> None:
    assert [Backoff(0.5, 3.0, jitter=0).delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((0, 1), "base must be more than 0 seconds, not 0"),
        ((2, 1), r"cap \(1 s\) must be at least base \(2 s\)"),
        ((1, 2, 1.5), r"jitter must be from 0 \(none\) to 1 \(full\), not 1.5"),
        ((1, float("inf")), "cap must be a finite number, not inf"),
        (("1", 2), "base must be a finite number, not '1'"),
    ],
)
def test_a_backoff_that_makes_no_sense_is_refused(arguments: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(*arguments)


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="attempt counts retries from 1, not 0"):
        Backoff(1, 2).delay(0)


def test_the_settings_give_each_backoff_and_a_partial_one_keeps_the_defaults(settings: object) -> None:
    assert backoff_setting("RETRY_BACKOFF") == Backoff(0.5, 60.0, 1.0)
    assert backoff_setting("RECONNECT_BACKOFF") == Backoff(0.1, 2.0, 1.0)
    assert backoff_setting("RESTART_BACKOFF") == Backoff(0.5, 30.0, 1.0)
    settings.BUS = {"RETRY_BACKOFF": {"cap": 300}}  # type: ignore[attr-defined]
    assert backoff_setting("RETRY_BACKOFF") == Backoff(0.5, 300, 1.0)
    assert deadletters.longest_wait() == 300, "a handed-on retry is held up to the configured cap"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            {"cap": 0.01},
            r"settings.BUS\['RETRY_BACKOFF'\]: cap \(0.01 s\) must be at least base \(0.5 s\); "
            r"the default is \{'base': 0.5, 'cap': 60.0, 'jitter': 1.0\}\.",
        ),
        (
            {"ceiling": 5},
            r"settings.BUS\['RETRY_BACKOFF'\] must be a dict with some of the keys "
            r"\['base', 'cap', 'jitter'\], not \{'ceiling': 5\}",
        ),
        (30, r"must be a dict with some of the keys \['base', 'cap', 'jitter'\], not 30"),
    ],
)
def test_a_backoff_setting_that_makes_no_sense_names_the_setting_and_its_default(
    settings: object, value: object, message: str
) -> None:
    settings.BUS = {"RETRY_BACKOFF": value}  # type: ignore[attr-defined]
    with pytest.raises(ImproperlyConfigured, match=message):
        backoff_setting("RETRY_BACKOFF")


def test_only_backoff_settings_are_backoffs() -> None:
    assert set(DEFAULTS) >= {"RETRY_BACKOFF", "RECONNECT_BACKOFF", "RESTART_BACKOFF"}
    with pytest.raises(ValueError, match="'TIMEOUT' is not a backoff setting"):
        backoff_setting("TIMEOUT")


@pytest.mark.db
@pytest.mark.django_db(transaction=True, databases=["default", "inventory"])
async def test_an_outbox_row_the_bus_did_not_take_waits_its_retry_backoff(settings: object) -> None:
    """The outbox relay schedules a row's next hand-over to the bus with BUS["RETRY_BACKOFF"]."""
    from workers.inventory.models import Outbox

    settings.BUS = {"RETRY_BACKOFF": {"base": 40.0, "cap": 100.0, "jitter": 0}}  # type: ignore[attr-defined]
    # A layer whose Redis is not there: nothing can be queued.
    settings.CHANNEL_LAYERS = {  # type: ignore[attr-defined]
        **settings.CHANNEL_LAYERS,  # type: ignore[attr-defined]
        "down": {
            "BACKEND": "bus.layers.RedisBusLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/0"]},
        },
    }
    rows = Outbox.objects.using("inventory")
    # Through the bus's pool, which closes each connection after use, as the relay does.
    row = await in_pool(
        rows.create, id="m-1", target="inventory.stock_changed", body={}, correlation_id="c-1"
    )
    for attempt, wait in [(1, 40.0), (2, 80.0), (3, 100.0)]:
        before = timezone.now()
        assert await arelay(Outbox, bus=Bus("down")) == 0, "Redis does not answer"
        await in_pool(row.refresh_from_db)
        assert row.attempts == attempt and "BrokerUnreachable" in row.last_error
        due = datetime.timedelta(seconds=wait)
        assert before + due <= row.next_attempt_at <= timezone.now() + due
        await in_pool(rows.filter(pk=row.pk).update, next_attempt_at=timezone.now())
