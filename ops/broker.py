"""Which RabbitMQ the operator commands (and `make up`) talk to: ``AMQP_URI``, or the local default;
and its management API (``RABBITMQ_MANAGEMENT_URL``)."""
from __future__ import annotations

import os

DEFAULT_AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_MANAGEMENT_URL = "http://guest:guest@127.0.0.1:15672"


def amqp_uri() -> str:
    return os.environ.get("AMQP_URI") or DEFAULT_AMQP_URI


def management_url() -> str:
    return os.environ.get("RABBITMQ_MANAGEMENT_URL", DEFAULT_MANAGEMENT_URL)
