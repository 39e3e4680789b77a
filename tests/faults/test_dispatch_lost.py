"""The broker lost between a write and its event (issue 17 item 5): the files and bundles services
reach RabbitMQ through a TCP proxy that the test takes down at the very moment they dispatch the
event of a write they just made durable (``file_created``, ``bundle_created``), for longer than
their publisher retries (nameko's 2 + 4 + 6 s). The dispatch fails; the write stays.

How the store recovers, which this test proves: the RPC request that made the write is
acknowledged only after its reply, so the broker, having lost the service's connection, delivers
the request again once the service reconnects; the write is idempotent (``exists``) and an
identical repeat announces itself again (``services/bundles/service.py``, ``_repeat`` in
``services/files/service.py``). Independently of any event, the bucket's own notifications carry
the new objects to the replicator (S3 -> SQS -> bridge), which copies them to gcp, where the
indexer indexes the copy (``object_replicated``). So afterwards the file and the bundle are in both
replicas, verified, and the bundle is searchable once in each, with one journal CREATE each.
"""
from __future__ import annotations

import collections
import json
import time
import urllib.parse

import eventlet
import pytest
from nameko.standalone.rpc import ServiceRpcProxy

from devtools.fakes import stage_object
from devtools.proxy import TcpProxy
from devtools.waiting import wait_until
from ops import replicas
from services.bundles.service import BundlesService
from services.files.service import FilesService
from shared import entrypoints, events
from shared.identifiers import Keys, new_uuid, new_version

from tests.faults.conftest import INDEXER_QUEUES, RETRY_DELAYS, dead_letters, journal_creates, search_fqids


# Longer than nameko's publisher retries (2 + 4 + 6 s), so that the dispatch fails rather than
# waiting the outage out.
DOWN_S = 15
RPC_TIMEOUT = 90


class DispatchCut:
    """Takes the proxy down just before the first dispatch of each event in ``events`` (once per
    event) and up again ``DOWN_S`` later; records every dispatch of the services behind it and
    whether it went out."""

    def __init__(self, monkeypatch, proxy: TcpProxy, cut: tuple[str, ...]):
        self.proxy, self.pending = proxy, set(cut)
        self.attempts: dict[str, list[str]] = collections.defaultdict(list)
        original = entrypoints.EventDispatcher.get_dependency
        recorder = self

        def get_dependency(dispatcher, worker_ctx):
            dispatch = original(dispatcher, worker_ctx)

            def cut_then_dispatch(event_type, event_data):
                if event_type in recorder.pending:
                    recorder.pending.discard(event_type)
                    recorder.proxy.down()  # every connection of the services reset, none accepted
                    eventlet.spawn_after(DOWN_S, recorder.proxy.up)
                try:
                    dispatch(event_type, event_data)
                except Exception as error:
                    recorder.attempts[event_type].append(f"failed: {type(error).__name__}")
                    raise
                recorder.attempts[event_type].append("sent")

            return cut_then_dispatch

        monkeypatch.setattr(entrypoints.EventDispatcher, "get_dependency", get_dependency)


@pytest.fixture
def writers_behind_a_proxy(service_config, rabbit_config, runner_factory):
    """The files and bundles services in this process, on the test's vhost through a TCP proxy."""
    broker = urllib.parse.urlsplit(rabbit_config["AMQP_URI"])
    proxy = TcpProxy(broker.hostname, broker.port).up()
    proxied = broker._replace(netloc=broker.netloc.replace(f"{broker.hostname}:{broker.port}", proxy.address))
    runner = runner_factory({**service_config, "AMQP_URI": urllib.parse.urlunsplit(proxied)},
                            FilesService, BundlesService)
    runner.start()
    try:
        yield proxy
    finally:
        proxy.up()  # the containers stop with their broker reachable
        runner.stop()
        proxy.close()


def rpc_call(amqp_uri: str, service: str, method: str, *args):
    """One RPC call, as a client makes it; its answer or the error it got."""
    with ServiceRpcProxy(service, {"AMQP_URI": amqp_uri}, timeout=RPC_TIMEOUT) as client:
        try:
            return getattr(client, method)(*args)
        except Exception as error:  # noqa: BLE001 (the client's view is reported, not judged)
            return error


def test_writes_whose_event_dispatch_lost_the_broker_are_still_replicated_and_indexed(
        writers_behind_a_proxy, monkeypatch, service_factory, replicator, blobstores, dss_settings, tmp_path):
    proxy = writers_behind_a_proxy
    indexer = service_factory("indexer", INDEXER_QUEUES[0], DSS_INDEX_DIR=tmp_path / "index",
                              DSS_INDEX_RETRY_DELAYS=RETRY_DELAYS)
    amqp_uri = replicator.amqp_uri  # the test itself reaches the broker directly
    cut = DispatchCut(monkeypatch, proxy, (events.FILE_CREATED, events.BUNDLE_CREATED))
    buckets = {replica: dss_settings.bucket(replica) for replica in ("aws", "gcp")}
    since, tag = new_version(), new_uuid()
    started = time.monotonic()

    # A file, whose file_created dispatch loses the broker.
    data = json.dumps({"tag": tag}).encode()
    source_url, sums = stage_object(blobstores["aws"], dss_settings.bucket("aws", "staging"), data,
                                    content_type="application/json")
    file_uuid, file_version = new_uuid(), new_version()
    file_answer = rpc_call(amqp_uri, "files", "put_file", file_uuid, file_version, source_url, 7)
    assert blobstores["aws"].exists(buckets["aws"], Keys.file(file_uuid, file_version))

    # A bundle naming it, whose bundle_created dispatch loses the broker.
    uuid, version = new_uuid(), new_version()
    fqid = f"{uuid}.{version}"
    bundle_answer = rpc_call(amqp_uri, "bundles", "put_bundle", "aws", uuid, version, 7, [
        {"uuid": file_uuid, "version": file_version, "name": "sample_0.json", "indexed": True}])
    assert blobstores["aws"].exists(buckets["aws"], Keys.bundle(uuid, version))
    for answer in (file_answer, bundle_answer):
        # A client gets the answer of the redelivered request (its repeat found the write), or the
        # error of the first run when that reply got out first: then it retries, as the API asks.
        assert isinstance(answer, Exception) or answer["status"] == "exists", answer

    # The fault happened: each event's first dispatch failed. The recovery: each sent afterwards.
    for event in (events.FILE_CREATED, events.BUNDLE_CREATED):
        attempts = cut.attempts[event]
        assert attempts and attempts[0].startswith("failed"), f"{event}: the cut missed the dispatch ({attempts})"
        # (The client may have had the first run's error before the repeat ran.)
        wait_until(lambda: "sent" in attempts, 60, f"{event} sent after the broker came back",
                   on_timeout=lambda: str(attempts))

    with ServiceRpcProxy("indexer", {"AMQP_URI": amqp_uri}, timeout=RPC_TIMEOUT) as client:
        for replica in ("aws", "gcp"):
            wait_until(lambda: fqid in search_fqids(client, replica, tag), 120, f"the bundle searchable in {replica}",
                       on_timeout=lambda: f"--- indexer ---\n{indexer.process.tail()}\n--- replicator ---\n"
                                          f"{replicator.process.tail()}")
            assert search_fqids(client, replica, tag) == [fqid], replica
            creates = journal_creates(client, replica, since)
            assert creates == {fqid: 1}, f"{replica} journal: {creates}"
    took = time.monotonic() - started

    keys = [sums.blob_key(), Keys.file(file_uuid, file_version), Keys.bundle(uuid, version)]
    for key in keys:
        assert blobstores["gcp"].exists(buckets["gcp"], key), f"{key} was not replicated to gcp"
    assert replicas.recheck(blobstores, buckets, keys, deep=True) == []
    assert dead_letters(amqp_uri) == 0
    assert {queue: dead_letters(amqp_uri, queue) for queue in INDEXER_QUEUES} == {q: 0 for q in INDEXER_QUEUES}
    indexer.assert_alive("after the outage")
    print(f"dispatches {dict(cut.attempts)}; the clients got put_file -> {file_answer!r}, put_bundle -> "
          f"{bundle_answer!r}; replicated, verified and indexed in both replicas {took:.1f}s after the first write")
