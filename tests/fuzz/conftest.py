"""Shared by the fuzz tests: the edge's `in_process_shop` fixture, and bounded hypothesis settings."""

from hypothesis import HealthCheck, Phase, settings

from tests.edge.conftest import in_process_shop

__all__ = ["fuzz_settings", "in_process_shop"]


def fuzz_settings(max_examples: int, *, shrink: bool = True) -> settings:
    """Bounded runs with no example database; function-scoped fixtures are fine for these tests."""
    phases = [Phase.explicit, Phase.reuse, Phase.generate, *([Phase.shrink] if shrink else [])]
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        phases=phases,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )
