"""The replicator's event handler: ``shared.retry``'s broker-side retries, with the delays taken
from ``DSS_REPLICATION_RETRY_DELAYS`` when the container starts (so a deployment, or a test, can
change them without a code change)."""
import logging

from shared.config import Settings
from shared.retry import RetryingEventHandler

logger = logging.getLogger(__name__)


class ReplicationEventHandler(RetryingEventHandler):
    def setup(self):
        super().setup()
        self.delays = Settings.from_config(self.container.config).replication_retry_delays

    def handle_message_processed(self, message, result=None, exc_info=None):
        # A worker that finishes just as the broker drops the connection (a broker restart), before
        # the consumer thread has noticed, acks or requeues on a dead socket. nameko's QueueConsumer
        # swallows only amqp's ConnectionError there, not the socket's own (ConnectionResetError,
        # BrokenPipeError), and an error raised here kills the container: `nameko run` exits. The
        # broker took the message back when the connection dropped and delivers it again.
        try:
            super().handle_message_processed(message, result, exc_info)
        except OSError as error:
            logger.warning("could not settle a message of %s: its broker connection is gone (%s); "
                           "the broker delivers it again", self.queue.name, error)


replication_event_handler = ReplicationEventHandler.decorator
