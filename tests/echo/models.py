from bus.models import AbstractProcessedMessage


class Processed(AbstractProcessedMessage):
    """Order events the echo domain has handled (it subscribes to orders.updated in tests)."""
