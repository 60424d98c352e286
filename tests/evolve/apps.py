from django.apps import AppConfig


class EvolveConfig(AppConfig):
    """A test domain in two versions (EVOLVE_VERSION), installed by tests/evolve/settings.py only."""

    name = "tests.evolve"
    label = "evolve"
