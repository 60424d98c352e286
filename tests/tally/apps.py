from django.apps import AppConfig


class TallyConfig(AppConfig):
    """A test domain for durable delivery: counters in its database, added to by commands."""

    name = "tests.tally"
    label = "tally"
