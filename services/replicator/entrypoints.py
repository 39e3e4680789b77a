"""The replicator's event handler: ``shared.retry``'s broker-side retries, with the delays taken
from ``DSS_REPLICATION_RETRY_DELAYS`` when the container starts (so a deployment, or a test, can
change them without a code change)."""
from shared.config import Settings
from shared.retry import RetryingEventHandler


class ReplicationEventHandler(RetryingEventHandler):
    def setup(self):
        super().setup()
        self.delays = Settings.from_config(self.container.config).replication_retry_delays


replication_event_handler = ReplicationEventHandler.decorator
