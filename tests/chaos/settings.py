"""Settings of the system a chaos test starts: the project's, with the saga's clocks from the environment.

A test that needs sagas to give up, holds to expire or dead workers' claims to run out within its
run sets CHAOS_GIVE_UP_SECONDS, CHAOS_HOLD_SECONDS and CHAOS_LEASE_SECONDS; unset, as deployed.
"""

import os

from project.settings import *  # noqa: F403
from project.settings import INSTALLED_APPS  # noqa: F401

ORDERS_GIVE_UP_SECONDS = float(os.environ.get("CHAOS_GIVE_UP_SECONDS", "60"))
INVENTORY_HOLD_SECONDS = float(os.environ.get("CHAOS_HOLD_SECONDS", "900"))
ORDERS_LEASE_SECONDS = float(os.environ.get("CHAOS_LEASE_SECONDS", "20"))
