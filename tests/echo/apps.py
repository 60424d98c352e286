from django.apps import AppConfig


class EchoConfig(AppConfig):
    """A domain that exists only to exercise the bus: echoes, sleeps, fails on demand."""

    name = "tests.echo"
    label = "echo"
