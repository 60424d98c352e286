"""The test settings with the evolve domain installed and routed, for the processes of its tests."""

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.evolve"]
ASGI_APPLICATION = "tests.evolve.routing.application"
