"""Fixtures of the scale-out fault test: the three-node RabbitMQ cluster of tests/cluster (the code
behind `make up BROKER=cluster`, on free ports, its files in a temp directory)."""
from tests.cluster.conftest import cluster  # noqa: F401  (the fixture, shared with tests/cluster)
