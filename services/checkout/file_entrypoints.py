"""``sweep_timer``: nameko's timer every ``DSS_CHECKOUT_SWEEP_INTERVAL`` seconds, the interval read
when the container starts (so that a deployment, or a test, changes it without a code change)."""
from nameko.timer import Timer

from shared.config import Settings


class SweepTimer(Timer):
    def __init__(self, **kwargs):
        super().__init__(interval=None, **kwargs)

    def setup(self):
        super().setup()
        self.interval = Settings.from_config(self.container.config).checkout_sweep_interval


sweep_timer = SweepTimer.decorator
