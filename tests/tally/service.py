from __future__ import annotations

import os
import time

from django.db.models import F, QuerySet

from bus import Service
from bus.databases import alias_for
from tests.echo.service import _append

from .contract import Tally
from .models import Counter, Processed


def _counters() -> QuerySet[Counter]:
    return Counter.objects.using(alias_for("tally", write=True))


class TallyService(Service, contract=Tally, inbox=Processed):
    def add(self, *, counter: str) -> None:
        _counters().get_or_create(name=counter)
        _counters().filter(name=counter).update(value=F("value") + 1)

    def add_slowly(self, *, counter: str, seconds: float) -> None:
        self.add(counter=counter)
        _append("adding", f"{os.getpid()}:{self.context.delivery}")  # the test waits for this
        time.sleep(seconds)

    def crash(self, *, note: str) -> None:
        _append("crash", f"{note}:{os.getpid()}:{self.context.delivery}")
        os._exit(1)

    def total(self, *, counter: str) -> int:
        found = Counter.objects.using(alias_for("tally", write=False)).filter(name=counter).first()
        return found.value if found else 0
