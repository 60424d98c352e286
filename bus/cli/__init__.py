"""The actions of `manage.py bus`, one table: each has its help, its arguments and its handler.

    call, send, publish     messaging.py   one message from a shell, its answer as JSON
    services                listing.py     every contract, each method's signature
    status                  status.py      live workers, queued messages, modes
    readonly, cleanup,      admin.py       an operator's switches; database roles for the bus's tables
    grant
    deadletters             deadletters.py list, show, replay, purge
    contracts               contracts.py   check the contracts against their snapshot, or record it
    asyncapi                asyncapi.py    the AsyncAPI 3.0 document of the bus, as JSON
    keys                    keys.py        make a service's signing key pair; show the keys in use

base.py holds what they share: the table's row (`Action`), exit codes and how an error reads.
"""

from __future__ import annotations

from .admin import CLEANUP, GRANT, READONLY
from .asyncapi import ASYNCAPI
from .base import Action, Stop, describe, exit_code
from .contracts import CONTRACTS
from .deadletters import DEADLETTERS
from .keys import KEYS
from .listing import SERVICES
from .messaging import CALL, PUBLISH, SEND
from .status import STATUS

__all__ = ["ACTIONS", "Action", "Stop", "describe", "exit_code"]

ACTIONS: tuple[Action, ...] = (
    CALL,
    SEND,
    PUBLISH,
    SERVICES,
    STATUS,
    DEADLETTERS,
    CONTRACTS,
    ASYNCAPI,
    KEYS,
    READONLY,
    CLEANUP,
    GRANT,
)
