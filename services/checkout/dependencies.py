"""The checkout service's DependencyProviders: ``FileReads`` for file reads (``file_reads``),
``CheckoutJobs`` and ``Mail`` for bundle checkout jobs (``bundle_jobs``), ``Sweeps`` for the sweeper
of the checkout buckets (``sweeping``). Each opens what its API needs in ``setup()`` and injects
that API; the logic is in the modules named."""
import logging

from nameko.extensions import DependencyProvider

from shared.config import Settings
from shared.metrics import MetricsAPI
from shared.storage import StorageProvider

from services.checkout.bundle_jobs.jobs import CheckoutJobsAPI
from services.checkout.bundle_jobs.mail import Mailer, MailSettings
from services.checkout.file_reads.reads import CheckoutState, FileReadsAPI
from services.checkout.sweeping import Sweeper

logger = logging.getLogger(__name__)


class FileReads(StorageProvider):
    """Injects a ``FileReadsAPI`` over both replicas' main and checkout buckets, sharing one
    ``CheckoutState`` among the workers of the process."""

    api_class = FileReadsAPI

    def setup(self):
        super().setup()
        self.state = CheckoutState(self.settings.checkout_cache_seconds)

    def get_dependency(self, worker_ctx):
        return self.api_class(self.replicas, self.settings, self.state)


class Sweeps(DependencyProvider):
    """Injects a ``Sweeper`` over the replicas and the process state of the service's
    ``FileReads``: a swept copy is forgotten by the file reads too."""

    def setup(self):
        self.file_reads = next(dependency for dependency in self.container.dependencies
                                   if isinstance(dependency, FileReads))

    def get_dependency(self, worker_ctx):
        reads = self.file_reads
        return Sweeper(reads.replicas, reads.settings, reads.state)


class CheckoutJobs(StorageProvider):
    """Injects ``CheckoutJobsAPI`` over both replicas, opened in ``setup()``."""

    api_class = CheckoutJobsAPI

    def get_dependency(self, worker_ctx):
        return self.api_class(self.replicas, self.settings, MetricsAPI(self.container.service_name))


class Mail(DependencyProvider):
    """Injects the process's ``Mailer`` (``bundle_jobs.mail``), configured in ``setup()``."""

    def setup(self):
        self.mailer = Mailer(MailSettings.from_settings(Settings.from_config(self.container.config)))
        if not self.mailer.enabled:
            logger.info("e-mail is disabled: DSS_SMTP_HOST is empty")

    def get_dependency(self, worker_ctx):
        return self.mailer
