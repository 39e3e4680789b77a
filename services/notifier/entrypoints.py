"""The notifier's webhook handler: ``shared.retry``'s broker-side retries, with the delays of
``DSS_NOTIFY_RETRY_DELAYS`` (``services.notifier.delivery.retry_schedule``) taken when the container starts,
so that a deployment, or a test, changes them without a code change. The first attempt is at once."""
from shared.config import Settings
from shared.retry import RetryingEventHandler
from services.notifier.delivery import retry_schedule


class DeliveryEventHandler(RetryingEventHandler):
    def setup(self):
        super().setup()
        self.delays = retry_schedule(Settings.from_config(self.container.config))


delivery_event_handler = DeliveryEventHandler.decorator
