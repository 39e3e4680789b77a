"""The checkout service: owns each replica's checkout bucket, from which clients read file bytes.

Two parts, each with its own module:

- file checkout (``files.py`` and ``dependencies.py``): GET /files and DRS are answered with
  presigned URLs of verified copies of blobs in the checkout bucket; copies are made on demand
  (inline for small blobs, in the background for large ones), warmed on ``file_created`` for small
  files, refreshed when read near the end of their life and swept when expired;
- bundle checkout jobs (``jobs.py``): a bundle copied, verified, to the checkout bucket or a
  bucket of the user's choice, its job state durable in the checkout bucket, with an e-mail when
  it ends.
"""
import logging

from nameko.events import EventDispatcher
from nameko.rpc import rpc

from shared.metrics import Metrics

logger = logging.getLogger(__name__)


class CheckoutService:
    name = "checkout"

    metrics = Metrics()
    dispatch = EventDispatcher()

    # --- file checkout (GET /files, DRS) -------------------------------------------------------------

    # --- bundle checkout jobs ------------------------------------------------------------------------
