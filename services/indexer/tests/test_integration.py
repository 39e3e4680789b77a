"""The indexer with the files and bundles services on the real broker and both storage emulators,
called over real RPC; its ``bundle_indexed`` events received by a listener on the same bus.

Each test has main buckets of its own (fresh names, in both emulators) and a search index
directory of its own, so what it lists, journals and reindexes is only what it wrote."""
import datetime
import io
import json
import random
import time
import uuid as uuid_module
from unittest import mock

import eventlet
import pytest
from nameko.events import event_handler
from nameko.standalone.events import event_dispatcher
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.testing.services import entrypoint_waiter
from nameko.testing.utils import get_container, get_extension

from shared import events
from shared.bundle_documents import CREATE, TOMBSTONE
from shared.checksums import checksum_bytes
from shared.exceptions import InvalidParameter, NotFound
from shared.identifiers import Keys, new_uuid, new_version
from shared.schemas import BUNDLE_FORMAT, FileMetadata, ObjectReplicated
from shared.search import ElasticsearchBadRequest
from devtools.fakes import stage_object
from devtools.waiting import wait_until

from services.bundles.service import BundlesService
from services.files.service import FilesService
from services.indexer.cli import run_reindex_command
from services.indexer.dependencies import SearchIndexes
from services.indexer.documents import BundleSourceAPI
from services.indexer.service import IndexerService

USER = {"email": "user@example.org", "groups": ["dbio"], "is_admin": False}
ADMIN = {"email": "admin@example.org", "groups": ["dbio"], "is_admin": True}


class IndexedListener:
    name = "bundle_indexed_listener"

    @event_handler("indexer", events.BUNDLE_INDEXED)
    def on_bundle_indexed(self, payload):
        return payload


class Stack:
    def __init__(self, config, cluster, listener, blobstores, settings, indexer=None):
        self.config = config
        self.rpc = cluster
        self.listener = listener
        self.blobstores = blobstores
        self.settings = settings
        self.indexer = indexer  # the indexer's container

    def indexed(self, uuid, event_type=CREATE, replica="aws"):
        """``with stack.indexed(uuid) as event:`` waits for its ``bundle_indexed``; ``event.get()``."""
        def matches(worker_ctx, result, exc_info):
            return bool(result) and (result["uuid"], result["event_type"], result["replica"]) == (
                uuid, event_type, replica)
        return entrypoint_waiter(self.listener, "on_bundle_indexed", timeout=30, callback=matches)

    def put_json_file(self, content, replica="aws"):
        """A JSON file ingested by the files service from a staging object; its bundle reference."""
        store = self.blobstores[replica]
        source_url, _ = stage_object(store, self.settings.bucket(replica, "staging"), json.dumps(content).encode(),
                                     content_type="application/json")
        uuid, version = new_uuid(), new_version()
        self.rpc.files.put_file(uuid, version, source_url, 1, USER)
        return {"uuid": uuid, "version": version}

    def put_bundle(self, files, replica="aws"):
        uuid, version = new_uuid(), new_version()
        with self.indexed(uuid, CREATE, replica) as event:
            self.rpc.bundles.put_bundle(replica, uuid, version, 1, files, USER)
        return uuid, version, event.get()

    def write_bundle(self, replicas, content):
        """A bundle written straight to the buckets (no event): one indexed JSON file."""
        data = json.dumps(content).encode()
        sums = checksum_bytes(data)
        uuid, version, file_uuid = new_uuid(), new_version(), new_uuid()
        entry = {"name": "sample_0.json", "uuid": file_uuid, "version": version, "content-type": "application/json",
                 "size": len(data), "indexed": True, **sums.as_stored()}
        manifest = {"format": BUNDLE_FORMAT, "version": version, "creator_uid": 1, "files": [entry]}
        metadata = FileMetadata().dump({"creator_uid": 1, "version": version, "content_type": "application/json",
                                        "size": len(data), **sums.as_api()})
        for replica in replicas:
            store, bucket = self.blobstores[replica], self.settings.bucket(replica)
            store.put_bytes(bucket, sums.blob_key(), data)
            store.put_bytes(bucket, Keys.file(file_uuid, version), json.dumps(metadata).encode())
            store.put_bytes(bucket, Keys.bundle(uuid, version), json.dumps(manifest).encode())
        return uuid, version

    def found(self, query, replica="aws"):
        return [hit["bundle_fqid"] for hit in self.rpc.indexer.search(replica, query)["results"]]


@pytest.fixture
def stack(service_config, runner_factory, blobstores, dss_settings, tmp_path):
    bucket = f"indexer-{uuid_module.uuid4().hex[:12]}"
    for store in blobstores.values():
        store.create_bucket(bucket)
    config = {**service_config, "DSS_S3_BUCKET": bucket, "DSS_GS_BUCKET": bucket,
              "DSS_INDEX_DIR": str(tmp_path / "index"), "DSS_INDEX_RETRY_DELAYS": "1,1,1",
              "DSS_SEARCH_TIMEOUT_SECONDS": 120}
    settings = type(dss_settings).from_config({**service_config, **config}, environ={})
    runner = runner_factory(config, FilesService, BundlesService, IndexerService, IndexedListener)
    runner.start()
    with ClusterRpcProxy(config, timeout=60) as cluster:
        yield Stack(config, cluster, get_container(runner, IndexedListener), blobstores, settings,
                    get_container(runner, IndexerService))


def label_query(label):
    return {"query": {"term": {"files.project_json.label": label}}}


def test_a_bundle_is_searchable_and_journaled_until_tombstoned(stack):
    label = f"atlas-{new_uuid()[:8]}"
    start = datetime.datetime.now(datetime.timezone.utc).isoformat()
    files = [{**stack.put_json_file({"label": label, "organ": "liver"}), "name": "project.json", "indexed": True},
             {**stack.put_json_file({"id": "cs-1"}), "name": "cell_suspension_0.json", "indexed": True},
             {**stack.put_json_file({"id": "not indexed"}), "name": "extra.json", "indexed": False}]
    uuid, version, created = stack.put_bundle(files)
    fqid = f"{uuid}.{version}"

    assert created["document"]["files"] == {"project_json": [{"label": label, "organ": "liver"}],
                                            "cell_suspension_json": [{"id": "cs-1"}]}
    assert stack.found(label_query(label)) == [fqid]
    assert stack.found(label_query(label), "gcp") == []
    raw = stack.rpc.indexer.search("aws", label_query(label), "raw", 10)
    assert raw["total_hits"] == 1 and raw["search_after"] is None
    assert raw["results"][0]["metadata"]["manifest"]["version"] == version
    assert stack.rpc.indexer.get_event("aws", uuid, version) == created["document"]
    with pytest.raises(NotFound):
        stack.rpc.indexer.get_event("aws", uuid, new_version())
    with pytest.raises(ElasticsearchBadRequest):
        stack.rpc.indexer.search("aws", {"query": {"fuzzy": {"x": "y"}}})
    with pytest.raises(InvalidParameter):
        stack.rpc.indexer.search("aws", {}, "summary", 5)
    # A repeat of the write (the bundles service announces it again) is not indexed twice.
    assert stack.rpc.bundles.put_bundle("aws", uuid, version, 1, files, USER)["status"] == "exists"

    with stack.indexed(uuid, TOMBSTONE) as tombstoned:
        stack.rpc.bundles.delete_bundle("aws", uuid, version, "mislabelled", None, ADMIN)
    assert tombstoned.get()["document"]["files"] == created["document"]["files"]
    assert stack.found(label_query(label)) == []
    assert stack.rpc.indexer.get_event("aws", uuid, version)["event_type"] == TOMBSTONE

    journal = stack.rpc.indexer.list_events("aws", start)
    assert [(e["bundle_fqid"], e["event_type"]) for e in journal["event_streams"]] == [
        (fqid, CREATE), (fqid, TOMBSTONE)]
    assert journal["token"] is None
    assert journal["event_streams"][1]["document"] == tombstoned.get()["document"]


def test_the_journal_pages_by_token_between_dates(stack):
    written = []
    for n in range(4):
        uuid, version, event = stack.put_bundle([])
        written.append((f"{uuid}.{version}", event["event_timestamp"]))
    fqids = [fqid for fqid, _ in written]

    page = stack.rpc.indexer.list_events("aws", None, None, 3)
    assert [e["bundle_fqid"] for e in page["event_streams"]] == fqids[:3] and page["token"]
    rest = stack.rpc.indexer.list_events("aws", None, None, 3, page["token"])
    assert [e["bundle_fqid"] for e in rest["event_streams"]] == fqids[3:] and rest["token"] is None

    # from_date inclusive, to_date exclusive; ISO dates and DSS versions both work.
    first_stamp, last_stamp = written[1][1], written[3][1]
    as_version = datetime.datetime.fromisoformat(last_stamp).strftime("%Y-%m-%dT%H%M%S.%fZ")
    between = stack.rpc.indexer.list_events("aws", first_stamp, as_version, 10)
    assert [e["bundle_fqid"] for e in between["event_streams"]] == fqids[1:3]
    with pytest.raises(InvalidParameter):
        stack.rpc.indexer.list_events("aws", "last tuesday")


def test_a_bundle_replicated_into_gcp_is_indexed_there(stack):
    label = f"copied-{new_uuid()[:8]}"
    uuid, version = stack.write_bundle(("aws", "gcp"), {"label": label})
    dispatch = event_dispatcher(stack.config)
    replicated = ObjectReplicated().dump({"source_replica": "aws", "destination_replica": "gcp",
                                          "key": Keys.bundle(uuid, version), "size": 10, "copied": True,
                                          "lag_seconds": 0.5})
    query = {"query": {"term": {"files.sample_json.label": label}}}

    with stack.indexed(uuid, CREATE, "gcp") as event:
        dispatch("replicator", events.OBJECT_REPLICATED, replicated)
    assert event.get()["document"]["files"] == {"sample_json": [{"label": label}]}
    assert stack.found(query, "gcp") == [f"{uuid}.{version}"]
    assert stack.found(query, "aws") == []  # no event for aws in this test

    tombstone = {"email": "admin@example.org", "reason": "withdrawn", "details": None, "admin_deleted": True}
    stack.blobstores["gcp"].put_bytes(stack.settings.bucket("gcp"), Keys.bundle_tombstone(uuid),
                                      json.dumps(tombstone).encode())
    with stack.indexed(uuid, TOMBSTONE, "gcp"):
        dispatch("replicator", events.OBJECT_REPLICATED, {**replicated, "key": Keys.bundle_tombstone(uuid)})
    assert stack.found(query, "gcp") == []
    assert [e["event_type"] for e in stack.rpc.indexer.list_events("gcp")["event_streams"]] == [CREATE, TOMBSTONE]


def test_a_reindex_rebuilds_the_index_while_it_keeps_answering(stack):
    label = f"reindexed-{new_uuid()[:8]}"
    query = {"query": {"term": {"files.sample_json.label": label}}}
    unindexed = [stack.write_bundle(("aws",), {"label": label}) for _ in range(3)]  # never announced
    indexed = stack.put_bundle([{**stack.put_json_file({"label": label}), "name": "sample_0.json",
                                 "indexed": True}])[:2]
    assert stack.found(query) == [f"{indexed[0]}.{indexed[1]}"]
    before = stack.rpc.indexer.reindex_status("aws")

    reached, release = eventlet.Event(), eventlet.Event()
    build = BundleSourceAPI.listed_document

    def held(source, replica, listed):
        document = build(source, replica, listed)
        if not reached.ready():
            reached.send()
        release.wait()
        return document

    output = io.StringIO()
    with mock.patch.object(BundleSourceAPI, "listed_document", held):
        command = eventlet.spawn(run_reindex_command, "aws", stack.config["AMQP_URI"], output, 0.1)
        reached.wait()
        status = stack.rpc.indexer.reindex_status("aws")
        assert status["state"] == "running" and status["generation"] != before["generation"]
        # During the reindex: a new bundle is indexed, and searches answer from the live generation.
        during = stack.put_bundle([{**stack.put_json_file({"label": label}), "name": "sample_0.json",
                                    "indexed": True}])[:2]
        assert sorted(stack.found(query)) == sorted(f"{u}.{v}" for u, v in (indexed, during))
        release.send()
        assert command.wait() == 0

    status = stack.rpc.indexer.reindex_status("aws")
    assert status["state"] == "succeeded" and status["done"] == status["total"] == 4
    assert sorted(stack.found(query)) == sorted(f"{u}.{v}" for u, v in (*unindexed, indexed, during))
    assert f"generation {status['generation']} is live" in output.getvalue()
    assert stack.rpc.indexer.health()["aws"]["ok"] is True


def test_the_reindex_command_says_when_no_indexer_runs(rabbit_config):
    output = io.StringIO()
    assert run_reindex_command("aws", rabbit_config["AMQP_URI"], output) == 2
    assert "not running" in output.getvalue()


def test_a_slow_search_never_holds_up_indexing(stack):
    """A search that takes seconds for real (patterns with leading wildcards over a term dictionary
    of 30,000 words), in flight while a bundle is indexed: the write is done long before it."""
    live = get_extension(stack.indexer, SearchIndexes).state.index("aws")
    words = random.Random(7)
    live.bulk_put([(f"{new_uuid()}.{new_version()}",
                    {"files": {"noise_json": [{"word": ["".join(words.choices("abcd", k=40)) for _ in range(200)]}]}})
                   for _ in range(150)])
    slow = {"query": {"bool": {"should": [
        {"wildcard": {"files.noise_json.word": "*" + "*".join(words.choices("abcd", k=12)) + "*"}}
        for _ in range(12)]}}}

    def search():
        with ClusterRpcProxy(stack.config, timeout=300) as cluster:  # a proxy per green thread
            return cluster.indexer.search("aws", slow, "summary", 10)

    searching = eventlet.spawn(search)
    wait_until(lambda: live.searches_in_flight == 1, 30, "the search to start")
    started = time.monotonic()
    uuid, version, event = stack.put_bundle([{**stack.put_json_file({"label": "written"}), "name": "sample_0.json",
                                              "indexed": True}])
    indexed_in = time.monotonic() - started
    assert not searching.dead and live.searches_in_flight == 1, "the search ended before the write"
    assert event["document"]["files"] == {"sample_json": [{"label": "written"}]}
    assert indexed_in < 10
    assert searching.wait()["total_hits"] == 150
