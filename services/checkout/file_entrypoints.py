"""Entrypoints of file checkout whose timing comes from the settings, read when the container
starts (so that a deployment, or a test, changes them without a code change):

- ``sweep_timer``: nameko's timer every ``DSS_CHECKOUT_SWEEP_INTERVAL`` seconds;
- ``copy_event_handler``: ``shared.retry``'s broker-side retries on the ``DSS_CHECKOUT_COPY_RETRY_DELAYS``
  schedule.
"""
from nameko.timer import Timer

from shared.config import Settings
from shared.retry import RetryingEventHandler


class SweepTimer(Timer):
    def __init__(self, **kwargs):
        super().__init__(interval=None, **kwargs)

    def setup(self):
        super().setup()
        self.interval = Settings.from_config(self.container.config).checkout_sweep_interval


class CopyEventHandler(RetryingEventHandler):
    def setup(self):
        super().setup()
        self.delays = Settings.from_config(self.container.config).checkout_copy_retry_delays


sweep_timer = SweepTimer.decorator
copy_event_handler = CopyEventHandler.decorator
