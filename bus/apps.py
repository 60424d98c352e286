from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class BusConfig(AppConfig):
    """The service bus: imports every installed app's `contract` module at start-up.

    Services are not discovered: routing.py names the ones a process serves, so a web process
    never imports a domain's implementation or models.
    """

    name = "bus"
    verbose_name = "Service bus"

    def ready(self) -> None:
        # Like admin.autodiscover(): every process knows every contract, so a call by name can be
        # checked before it is sent and `bus services` can list them all.
        autodiscover_modules("contract")
