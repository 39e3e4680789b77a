"""Unit tests of the indexer: the service built with worker_factory over in-memory buckets
(``devtools.fakes.MemoryBlobStore``) and real embedded search indexes in a temporary directory, so
only the clouds are faked; the documents, the journal, the indexes and the reindex job are real.
``dispatch`` is nameko's mock."""
import collections
import json
import time

import eventlet
import pytest
from eventlet.patcher import original
from nameko.containers import ServiceContainer
from nameko.testing.services import worker_factory
from nameko.testing.utils import get_extension
from prometheus_client import REGISTRY

from shared import events
from shared.bundle_documents import CREATE, DELETE, TOMBSTONE
from shared.checksums import checksum_bytes
from shared.config import Settings
from shared.exceptions import InvalidParameter, NotFound, Unavailable, Unprocessable
from shared.identifiers import Keys, new_uuid, new_version
from shared.retry import PERMANENT_ERRORS, RetryingEventHandler
from shared.schemas import BUNDLE_FORMAT, Tombstone
from shared.search import ElasticsearchBadRequest, SearchBusy, SearchTimeout, open_index_backend
from shared.storage import ReplicaStorage, Replicas
from devtools.fakes import MemoryBlobStore
from devtools.waiting import wait_until

from services.indexer.documents import BundleSourceAPI
from services.indexer.indexes import GuardedIndex, IndexesAPI, IndexState
from services.indexer.journal import ANNOUNCED_PREFIX, EventJournalAPI, JournalClock
from services.indexer.service import IndexerService

ADMIN_TOMBSTONE = {"email": "admin@example.org", "reason": "withdrawn", "details": None, "admin_deleted": True}


class World:
    """Both replicas' buckets in memory, both indexes on disk, and workers of the service over them."""

    def __init__(self, index_dir, **settings):
        self.settings = Settings.from_config({"DSS_INDEX_DIR": str(index_dir), **settings}, environ={})
        self.stores = {name: MemoryBlobStore(name) for name in ("aws", "gcp")}
        for name, store in self.stores.items():
            store.create_bucket(self.settings.bucket(name))
        self.replicas = Replicas({name: ReplicaStorage(name, store, self.settings)
                                  for name, store in self.stores.items()})
        self.state = IndexState({name: open_index_backend(self.settings, name) for name in ("aws", "gcp")},
                                offload=True, spawn=lambda function, name: eventlet.spawn(function),
                                search_slots=self.settings.search_concurrency,
                                search_timeout=self.settings.search_timeout_seconds)
        self.clock = JournalClock()
        self.source = BundleSourceAPI(self.replicas, self.settings)
        self.service = self.new_worker()

    def new_worker(self):
        return worker_factory(IndexerService, bundles=self.source, journal=EventJournalAPI(self.replicas, self.clock),
                              indexes=IndexesAPI(self.state))

    def objects(self, replica="aws") -> dict:
        return self.stores[replica].buckets[self.settings.bucket(replica)]

    def write(self, key, data, replica="aws"):
        data = data if isinstance(data, bytes) else json.dumps(data).encode()
        self.objects(replica)[key] = (data, "application/json", {})

    def read(self, key, replica="aws"):
        return json.loads(self.objects(replica)[key][0])

    def entry(self, name, content, indexed=True, content_type="application/json", replica="aws"):
        """A manifest entry for ``content`` (bytes, or JSON), its blob written to the bucket."""
        data = content if isinstance(content, bytes) else json.dumps(content).encode()
        sums = checksum_bytes(data)
        self.write(sums.blob_key(), data, replica)
        return {"name": name, "uuid": new_uuid(), "version": new_version(), "content-type": content_type,
                "size": len(data), "indexed": indexed, **sums.as_stored()}

    def bundle(self, entries, replica="aws", uuid=None, version=None):
        uuid, version = uuid or new_uuid(), version or new_version()
        manifest = {"format": BUNDLE_FORMAT, "version": version, "creator_uid": 7, "files": entries}
        self.write(Keys.bundle(uuid, version), manifest, replica)
        return uuid, version, manifest

    def tombstone(self, uuid, version=None, replica="aws", **fields):
        doc = Tombstone().dump({**ADMIN_TOMBSTONE, **fields})
        self.write(Keys.bundle_tombstone(uuid, version), doc, replica)
        return doc

    def created(self, uuid, version, replica="aws"):
        return self.service.handle_bundle_created({"replica": replica, "uuid": uuid, "version": version,
                                                   "key": Keys.bundle(uuid, version), "file_count": 1})

    def tombstoned(self, uuid, version=None, replica="aws"):
        return self.service.handle_bundle_tombstoned({"replica": replica, "uuid": uuid, "version": version,
                                                      "key": Keys.bundle_tombstone(uuid, version),
                                                      "reason": "withdrawn"})

    def replicated(self, key, destination="gcp"):
        source = "aws" if destination == "gcp" else "gcp"
        return self.service.handle_object_replicated({"source_replica": source, "destination_replica": destination,
                                                      "key": key, "size": 1, "copied": True, "lag_seconds": 0.1})

    def purged(self, uuid, version, replica="aws"):
        """The manifest removed from the bucket, and the bridge's notice of it handled."""
        self.objects(replica).pop(Keys.bundle(uuid, version), None)
        return self.deletion_noticed(Keys.bundle(uuid, version), replica)

    def deletion_noticed(self, key, replica="aws"):
        return self.service.handle_object_changed({"replica": replica, "bucket": self.settings.bucket(replica),
                                                   "key": key, "kind": "deleted", "size": None, "checksums": {}})

    def indexed(self, uuid, version, replica="aws"):
        return self.state.index(replica).get(f"{uuid}.{version}")

    def found(self, uuid, replica="aws") -> list[str]:
        query = {"query": {"prefix": {"uuid": uuid}}}
        return [hit["bundle_fqid"] for hit in self.service.search(replica, query, "summary", 100)["results"]]


@pytest.fixture
def world(tmp_path):
    world = World(tmp_path / "index")
    yield world
    world.state.stop()


def dispatched(service):
    return [call.args[1] for call in service.dispatch.call_args_list if call.args[0] == events.BUNDLE_INDEXED]


def skipped(reason, replica="aws"):
    return REGISTRY.get_sample_value("dss_index_files_skipped_total", {"replica": replica, "reason": reason}) or 0


# --- documents ---------------------------------------------------------------------------------------

def test_a_created_bundle_is_indexed_with_its_indexed_json_files_grouped_by_key(world):
    entries = [world.entry("cell_suspension_0.json", {"id": "cs0"}),
               world.entry("project.json", {"title": "Liver atlas"}),
               world.entry("cell_suspension_1.json", [{"id": "cs1"}], content_type="application/json; dcp-type=x"),
               world.entry("notes.txt.json", {"n": 1}, content_type="text/plain"),
               world.entry("sample_2.json", {"id": "s2"}, indexed=False),
               world.entry("a.b.raw", {"raw": True})]
    uuid, version, manifest = world.bundle(entries)

    [payload] = world.created(uuid, version)

    files = {"cell_suspension_json": [{"id": "cs0"}, [{"id": "cs1"}]], "project_json": [{"title": "Liver atlas"}],
             "a_b_raw": [{"raw": True}]}
    assert world.indexed(uuid, version) == {"uuid": uuid, "manifest": manifest, "files": files}
    document = {"event_type": CREATE, "bundle_info": {"uuid": uuid, "version": version}, "manifest": manifest,
                "files": files}
    assert payload == {"replica": "aws", "uuid": uuid, "version": version, "event_type": CREATE,
                       "event_timestamp": payload["event_timestamp"], "document": document}
    assert dispatched(world.service) == [payload]
    assert world.found(uuid) == [f"{uuid}.{version}"]
    assert world.found(uuid, "gcp") == []  # each replica's index learns of its own writes


def test_unreadable_and_oversized_files_are_left_out_and_counted(tmp_path):
    world = World(tmp_path, DSS_INDEX_MAX_FILE_BYTES=64)
    before = {reason: skipped(reason) for reason in ("unparseable", "not_object", "too_large")}
    entries = [world.entry("good.json", {"ok": True}),
               world.entry("broken.json", b'{"unterminated": '),
               world.entry("binary.json", b"\xff\xfe\x00"),
               world.entry("scalar.json", b"42"),
               world.entry("large.json", {"text": "x" * 100})]
    uuid, version, _ = world.bundle(entries)

    world.created(uuid, version)

    assert world.indexed(uuid, version)["files"] == {"good_json": [{"ok": True}]}
    assert skipped("unparseable") - before["unparseable"] == 2
    assert skipped("not_object") - before["not_object"] == 1
    assert skipped("too_large") - before["too_large"] == 1
    world.state.stop()


def test_a_large_file_is_parsed_and_indexed(world):
    big = {"sequence": "ACGT" * 300_000}  # 1.2 MiB: parsed off the event loop
    uuid, version, _ = world.bundle([world.entry("matrix.json", big)])
    world.created(uuid, version)
    assert world.indexed(uuid, version)["files"]["matrix_json"] == [big]


def test_a_file_listed_under_many_names_is_read_once_and_the_document_capped(tmp_path, monkeypatch):
    world = World(tmp_path, DSS_INDEX_MAX_DOCUMENT_BYTES=10_000)
    big = {"cells": "x" * 2990}  # 3,003 bytes: three copies fit the cap, a fourth does not
    entries = [world.entry(f"sample_{n}.json", big) for n in range(50)] + [world.entry("project_0.json", {"t": 1})]
    uuid, version, manifest = world.bundle(entries)
    reads = collections.Counter()
    store, get_bytes = world.stores["aws"], world.stores["aws"].get_bytes
    monkeypatch.setattr(store, "get_bytes", lambda bucket, key: reads.update([key]) or get_bytes(bucket, key))
    before = skipped("document_cap")

    [payload] = world.created(uuid, version)

    blob = Keys.blob(entries[0]["sha256"], entries[0]["sha1"], entries[0]["s3-etag"], entries[0]["crc32c"])
    assert reads[blob] == 1  # one read and one parse, however many names list it
    files = world.indexed(uuid, version)["files"]
    assert files == {"sample_json": [big] * 3, "project_json": [{"t": 1}]}  # a later, smaller file still fits
    assert skipped("document_cap") - before == 47
    [entry] = [world.read(key) for key in world.objects() if key.startswith("events/")]
    assert entry["files_left_out"] == {"document_cap": 47}
    assert entry["document"]["files"] == payload["document"]["files"] == files
    # What the journal and the bus carry is bounded by the cap (and the manifest).
    assert len(json.dumps(payload)) < 10_000 + len(json.dumps(manifest)) + 1_000
    world.state.stop()


class HeldSearches:
    """An index backend whose searches wait, on their native thread, until ``release`` is set: a
    search the engine is slow to answer."""

    def __init__(self, backend):
        self.backend = backend
        self.release = original("threading").Event()

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def search(self, *args, **kwargs):
        self.release.wait(30)
        return self.backend.search(*args, **kwargs)


def test_searches_run_beside_writes_in_bounded_slots_within_a_time_budget(tmp_path):
    backend = HeldSearches(open_index_backend(Settings.from_config({"DSS_INDEX_DIR": str(tmp_path)}, environ={}),
                                              "aws"))
    index = GuardedIndex(backend, offload=True, search_slots=1, search_timeout=0.5)
    before = {reason: REGISTRY.get_sample_value("dss_searches_refused_total", {"replica": "aws", "reason": reason})
              or 0 for reason in ("busy", "timeout")}
    searching = eventlet.spawn(index.search, {}, 10, None, False)
    wait_until(lambda: index.searches_in_flight == 1, 5, "the search to start")
    doc_id = f"{new_uuid()}.{new_version()}"
    started = time.monotonic()
    index.put(doc_id, {"uuid": "x"})  # while the search holds its slot
    # Generous (a loaded machine), and far below the 30 s the held search would make a queued write wait.
    assert time.monotonic() - started < 5 and index.get(doc_id) == {"uuid": "x"}
    started = time.monotonic()
    with pytest.raises(SearchBusy) as busy:  # no free slot: refused at once, never queued
        index.search({}, 10, None, False)
    # Busy, not a timeout (a queued search would time out at 0.5 s); the bound is generous sanity only.
    assert busy.value.error_code == "search_busy" and time.monotonic() - started < 5
    with pytest.raises(SearchTimeout):  # answered at its deadline...
        searching.wait()
    assert index.searches_in_flight == 1  # ...while the engine still works on it, in its slot
    backend.release.set()
    wait_until(lambda: index.searches_in_flight == 0, 5, "the engine to let go of the search")
    assert index.search({}, 10, None, False)["total"] == 1
    for reason in ("busy", "timeout"):
        after = REGISTRY.get_sample_value("dss_searches_refused_total", {"replica": "aws", "reason": reason})
        assert after - before[reason] == 1
    index.close()


def test_an_event_seen_twice_changes_and_announces_nothing_more(world):
    uuid, version, _ = world.bundle([world.entry("a.json", {"a": 1})])
    assert len(world.created(uuid, version)) == 1
    assert world.created(uuid, version) == []
    assert world.new_worker().handle_bundle_created({"replica": "aws", "uuid": uuid, "version": version,
                                                     "key": Keys.bundle(uuid, version), "file_count": 1}) == []
    assert len(dispatched(world.service)) == 1
    assert [e["bundle_fqid"] for e in world.service.list_events("aws")["event_streams"]] == [f"{uuid}.{version}"]


def test_a_failure_after_the_index_write_is_announced_by_the_next_attempt(world):
    uuid, version, _ = world.bundle([world.entry("a.json", {"a": 1})])
    world.service.dispatch.side_effect = ConnectionError("broker gone")
    with pytest.raises(ConnectionError):
        world.created(uuid, version)
    assert world.indexed(uuid, version) is not None  # written, but not announced

    world.service.dispatch.side_effect = None
    [payload] = world.created(uuid, version)
    assert payload["event_type"] == CREATE
    assert world.created(uuid, version) == []


def journaled(world, uuid, version, replica="aws") -> list[tuple[str, str]]:
    return [(e["event_type"], e["event_timestamp"]) for e in world.service.list_events(replica)["event_streams"]
            if e["bundle_fqid"] == f"{uuid}.{version}"]


def test_an_announcement_redone_after_a_failed_dispatch_journals_the_event_once(world):
    uuid, version, _ = world.bundle([world.entry("a.json", {"a": 1})])
    world.service.dispatch.side_effect = ConnectionError("broker gone")
    with pytest.raises(ConnectionError):
        world.created(uuid, version)
    [(kind, stamp)] = journaled(world, uuid, version)

    world.service.dispatch.side_effect = None
    redo = world.new_worker()  # as another indexer process taking over would
    [payload] = redo.handle_bundle_created({"replica": "aws", "uuid": uuid, "version": version,
                                            "key": Keys.bundle(uuid, version), "file_count": 1})

    assert journaled(world, uuid, version) == [(CREATE, stamp)]
    assert payload["event_timestamp"] == stamp  # the same event: receivers can tell the repeat
    assert world.created(uuid, version) == []


def test_a_writer_that_died_before_journaling_leaves_the_event_to_a_new_stamp(world):
    """The marker says an event was being journaled, but its entry was never written: the redo
    journals it afresh with a stamp of its own (a poller may have passed the dead writer's)."""
    uuid, version, _ = world.bundle([world.entry("a.json", {"a": 1})])
    world.replicas["aws"].write_json(f"{ANNOUNCED_PREFIX}{uuid}.{version}.{CREATE}",
                                     {"event_id": f"2020-01-01T000000.000000Z.{uuid}.{version}.{CREATE}",
                                      "dispatched": False})
    [payload] = world.created(uuid, version)
    [(kind, stamp)] = journaled(world, uuid, version)
    assert kind == CREATE and payload["event_timestamp"] == stamp and not stamp.startswith("2020")
    assert world.created(uuid, version) == []


def test_a_bundle_whose_manifest_or_file_is_not_readable_yet_is_retried(world):
    uuid, version = new_uuid(), new_version()
    with pytest.raises(Unavailable) as missing:
        world.created(uuid, version)
    assert missing.value.error_code == "bundle_not_readable"
    assert not isinstance(missing.value, PERMANENT_ERRORS)

    entry = world.entry("a.json", {"a": 1})
    del world.objects()[Keys.blob(entry["sha256"], entry["sha1"], entry["s3-etag"], entry["crc32c"])]
    uuid, version, _ = world.bundle([entry])
    with pytest.raises(Unavailable):
        world.created(uuid, version)
    assert world.indexed(uuid, version) is None


def test_malformed_events_are_permanent_errors(world):
    with pytest.raises(PERMANENT_ERRORS):
        world.created("not-a-uuid", new_version())
    with pytest.raises(PERMANENT_ERRORS):
        world.service.handle_bundle_created({"replica": "azure", "uuid": new_uuid()})
    with pytest.raises(PERMANENT_ERRORS):
        world.replicated("bundles/not-a-uuid.2020")


def test_an_invalid_stored_tombstone_is_a_permanent_error(world):
    uuid, version, _ = world.bundle([])
    world.write(Keys.bundle_tombstone(uuid, version), {"reason": "no email"})
    with pytest.raises(Unprocessable):
        world.tombstoned(uuid, version)


def test_retry_delays_come_from_config():
    container = ServiceContainer(IndexerService, {"AMQP_URI": "memory://", "DSS_INDEX_RETRY_DELAYS": "2, 3"})
    handlers = [get_extension(container, RetryingEventHandler, method_name=name)
                for name in ("handle_bundle_created", "handle_bundle_tombstoned", "handle_object_replicated")]
    for handler in handlers:
        handler.setup()
        assert handler.delays == (2, 3)
    assert handlers[0].queue.name == "evt-bundles-bundle_created--indexer.handle_bundle_created"


# --- tombstones --------------------------------------------------------------------------------------

def test_a_versioned_tombstone_replaces_that_version_only(world):
    uuid, first, manifest = world.bundle([world.entry("a.json", {"a": 1})])
    _, second, _ = world.bundle([world.entry("a.json", {"a": 2})], uuid=uuid)
    world.created(uuid, first)
    world.created(uuid, second)
    tombstone = world.tombstone(uuid, first, reason="bad", details={"ticket": 7})

    [payload] = world.tombstoned(uuid, first)

    assert world.indexed(uuid, first) == tombstone
    assert world.found(uuid) == [f"{uuid}.{second}"]
    assert payload["event_type"] == TOMBSTONE and payload["version"] == first
    assert payload["document"] == {"event_type": TOMBSTONE, "bundle_info": {"uuid": uuid, "version": first},
                                   "manifest": manifest, "files": {"a_json": [{"a": 1}]}}
    assert world.tombstoned(uuid, first) == []


def test_the_tombstone_of_every_version_replaces_each_indexed_one(world):
    uuid, first, _ = world.bundle([world.entry("a.json", {"a": 1})])
    _, second, _ = world.bundle([world.entry("a.json", {"a": 2})], uuid=uuid)
    world.created(uuid, first)
    world.created(uuid, second)
    own = world.tombstone(uuid, first, reason="first one only")
    world.tombstoned(uuid, first)
    every = world.tombstone(uuid, reason="all of them")

    payloads = world.tombstoned(uuid)

    # The first version keeps its own tombstone (announced already); the second takes the uuid's.
    assert [(p["version"], p["event_type"]) for p in payloads] == [(second, TOMBSTONE)]
    assert world.indexed(uuid, first) == own
    assert world.indexed(uuid, second) == every
    assert world.found(uuid) == []
    assert payloads[0]["document"]["files"] == {"a_json": [{"a": 2}]}


def test_a_tombstone_of_a_version_never_indexed_carries_what_the_bucket_has(world):
    uuid, version, manifest = world.bundle([world.entry("a.json", {"a": 1})])
    world.tombstone(uuid, version)
    [payload] = world.tombstoned(uuid, version)
    assert payload["document"]["manifest"] == manifest
    assert payload["document"]["files"] == {"a_json": [{"a": 1}]}


def test_a_tombstone_event_without_its_tombstone_in_the_bucket_is_retried(world):
    uuid, version, _ = world.bundle([])
    with pytest.raises(Unavailable):
        world.tombstoned(uuid, version)


def test_a_create_never_brings_back_a_tombstoned_version(world):
    uuid, version, _ = world.bundle([world.entry("a.json", {"a": 1})])
    tombstone = world.tombstone(uuid, version)
    # The create arrives after the tombstone was written, before or after its event was handled.
    assert world.created(uuid, version) == []
    assert world.indexed(uuid, version) is None
    world.tombstoned(uuid, version)
    assert world.created(uuid, version) == []
    assert world.indexed(uuid, version) == tombstone
    assert [p["event_type"] for p in dispatched(world.service)] == [TOMBSTONE]

    other, later, _ = world.bundle([])
    world.tombstone(other)
    assert world.created(other, later) == []


def test_a_create_and_its_tombstone_racing_end_tombstoned(world):
    """Both events of one bundle handled at once by two workers: whatever the interleaving of
    their storage reads, the tombstone wins."""
    uuid, version, _ = world.bundle([world.entry(f"f{i}.json", {"i": i}) for i in range(20)])
    created = eventlet.spawn(world.new_worker().handle_bundle_created,
                             {"replica": "aws", "uuid": uuid, "version": version, "key": "", "file_count": 20})
    eventlet.sleep(0)  # the create is reading its files
    tombstone = world.tombstone(uuid, version)
    world.new_worker().handle_bundle_tombstoned({"replica": "aws", "uuid": uuid, "version": version, "key": "",
                                                 "reason": "x"})
    created.wait()
    assert world.indexed(uuid, version) == tombstone


# --- the replicated path --------------------------------------------------------------------------------

def test_a_bundle_replicated_into_a_replica_is_indexed_there(world):
    entry = world.entry("a.json", {"a": 1}, replica="gcp")
    blob = Keys.blob(entry["sha256"], entry["sha1"], entry["s3-etag"], entry["crc32c"])
    world.objects("aws")[blob] = world.objects("gcp")[blob]
    uuid, version, manifest = world.bundle([entry], replica="gcp")
    world.bundle([entry], replica="aws", uuid=uuid, version=version)

    [payload] = world.replicated(Keys.bundle(uuid, version), destination="gcp")

    assert payload["replica"] == "gcp" and payload["event_type"] == CREATE
    assert world.indexed(uuid, version, "gcp")["manifest"] == manifest
    assert world.indexed(uuid, version, "aws") is None

    # The echo of the copy (gcp -> aws, already there) indexes aws too; its repeat is silent.
    assert len(world.replicated(Keys.bundle(uuid, version), destination="aws")) == 1
    assert world.replicated(Keys.bundle(uuid, version), destination="aws") == []

    world.tombstone(uuid, replica="gcp")
    [tombstoned] = world.replicated(Keys.bundle_tombstone(uuid), destination="gcp")
    assert tombstoned["event_type"] == TOMBSTONE and world.found(uuid, "gcp") == []
    assert world.found(uuid, "aws") == [f"{uuid}.{version}"]


def test_other_replicated_keys_are_ignored(world):
    for key in ("files/x", "blobs/y", f"collections/{new_uuid()}.{new_version()}", f"collections/{new_uuid()}.dead"):
        assert world.replicated(key) == []
    world.service.dispatch.assert_not_called()


def test_a_manifest_removed_from_the_bucket_leaves_the_index_and_is_announced_once(world):
    uuid, version, manifest = world.bundle([world.entry("project.json", {"title": "kept"})])
    other, other_version, _ = world.bundle([world.entry("project.json", {"title": "other"})], uuid=uuid)
    world.created(uuid, version)
    world.created(other, other_version)

    [payload] = world.purged(uuid, version)

    assert world.indexed(uuid, version) is None and world.found(uuid) == [f"{uuid}.{other_version}"]
    assert payload["event_type"] == DELETE and payload["replica"] == "aws"
    # What it was when indexed: nothing of it is left in the bucket.
    assert payload["document"] == {"event_type": DELETE, "bundle_info": {"uuid": uuid, "version": version},
                                   "manifest": manifest, "files": {"project_json": [{"title": "kept"}]}}
    assert dispatched(world.service)[-1] == payload
    journal = world.service.list_events("aws")["event_streams"]
    assert [(e["bundle_fqid"], e["event_type"]) for e in journal][-1] == (f"{uuid}.{version}", DELETE)
    with pytest.raises(NotFound):
        world.service.get_event("aws", uuid, version)
    # The notice again (S3 may repeat it), from a fresh worker: nothing more.
    world.service = world.new_worker()
    assert world.deletion_noticed(Keys.bundle(uuid, version)) == []
    world.service.dispatch.assert_not_called()


def test_a_deletion_notice_of_a_manifest_still_there_or_never_indexed_changes_nothing(world):
    uuid, version, _ = world.bundle([world.entry("a.json", {"a": 1})])
    world.created(uuid, version)
    assert world.deletion_noticed(Keys.bundle(uuid, version)) == []  # stale: the manifest is there
    assert world.found(uuid) == [f"{uuid}.{version}"]

    never, never_version, _ = world.bundle([])
    assert world.purged(never, never_version) == []
    for key in (Keys.bundle_tombstone(uuid), f"files/{new_uuid()}.{new_version()}", "blobs/x"):
        assert world.deletion_noticed(key) == []
    created = world.service.handle_object_changed({"replica": "aws", "bucket": "b", "key": Keys.bundle(uuid, version),
                                                   "kind": "created"})
    assert created == [] and world.found(uuid) == [f"{uuid}.{version}"]
    assert len(dispatched(world.service)) == 1  # the CREATE only


def test_a_tombstoned_version_removed_from_the_bucket_is_announced_without_its_content(world):
    uuid, version, _ = world.bundle([world.entry("a.json", {"a": 1})])
    world.created(uuid, version)
    world.tombstone(uuid, version)
    world.tombstoned(uuid, version)

    [payload] = world.purged(uuid, version)

    assert payload["document"] == {"event_type": DELETE, "bundle_info": {"uuid": uuid, "version": version},
                                   "manifest": {}, "files": {}}
    assert world.indexed(uuid, version) is None


def test_a_version_written_back_after_its_deletion_is_indexed_and_announced_again(world):
    uuid, version, manifest = world.bundle([world.entry("a.json", {"a": 1})])
    world.created(uuid, version)
    world.purged(uuid, version)
    world.write(Keys.bundle(uuid, version), manifest)  # e.g. a repair from the other replica

    [payload] = world.created(uuid, version)

    assert payload["event_type"] == CREATE and world.found(uuid) == [f"{uuid}.{version}"]
    [deleted] = world.purged(uuid, version)
    assert deleted["event_type"] == DELETE and world.found(uuid) == []
    assert [kind for kind, _ in journaled(world, uuid, version)] == [CREATE, DELETE, CREATE, DELETE]


# --- search ---------------------------------------------------------------------------------------------

def test_search_pages_and_formats(world):
    uuid = new_uuid()
    versions = [world.bundle([world.entry("a.json", {"n": n})], uuid=uuid)[1] for n in range(12)]
    for version in versions:
        world.created(uuid, version)
    query = {"query": {"bool": {"must": [{"prefix": {"uuid": uuid}}, {"range": {"files.a_json.n": {"gte": 1}}}]}}}

    first = world.service.search("aws", query, "raw", 10)
    assert first["total_hits"] == 11
    assert [r["bundle_fqid"] for r in first["results"]] == [f"{uuid}.{v}" for v in reversed(versions[1:])][:10]
    assert first["results"][0]["metadata"]["files"] == {"a_json": [{"n": 11}]}
    assert first["search_after"] == first["results"][-1]["bundle_fqid"]
    second = world.service.search("aws", query, None, None, first["search_after"])
    assert second["results"] == [{"bundle_fqid": f"{uuid}.{versions[1]}", "search_score": None}]
    assert second["search_after"] is None


@pytest.mark.parametrize("arguments,code", [
    (("azure", {}), "illegal_arguments"),
    (("aws", {}, "full"), "illegal_arguments"),
    (("aws", {}, "summary", 9), "illegal_arguments"),
    (("aws", {}, "summary", 501), "illegal_arguments"),
    (("aws", {}, "summary", "10"), "illegal_arguments"),
    (("aws", {}, "summary", 10, "not-a-cursor"), "illegal_search_after"),
])
def test_search_arguments_are_checked(world, arguments, code):
    with pytest.raises(InvalidParameter) as error:
        world.service.search(*arguments)
    assert error.value.error_code == code


@pytest.mark.parametrize("es_query", [[], {"query": {"no_such_clause": {}}}, {"size": 10}, "match everything"])
def test_bad_queries_are_elasticsearch_bad_requests(world, es_query):
    with pytest.raises(ElasticsearchBadRequest):
        world.service.search("aws", es_query)


# --- events ---------------------------------------------------------------------------------------------

def test_get_event_builds_the_document_from_the_bucket(world):
    uuid, version, manifest = world.bundle([world.entry("a.json", {"a": 1})])
    assert world.service.get_event("aws", uuid.upper(), version) == {
        "event_type": CREATE, "bundle_info": {"uuid": uuid, "version": version}, "manifest": manifest,
        "files": {"a_json": [{"a": 1}]}}
    world.tombstone(uuid, version)
    assert world.service.get_event("aws", uuid, version)["event_type"] == TOMBSTONE
    with pytest.raises(NotFound):
        world.service.get_event("gcp", uuid, version)
    with pytest.raises(InvalidParameter) as error:
        world.service.get_event("aws", "x", version)
    assert error.value.error_code == "illegal_uuid"
    with pytest.raises(InvalidParameter) as error:
        world.service.get_event("aws", uuid, "2020-01-01")
    assert error.value.error_code == "illegal_version"


class Clock:
    def __init__(self, *moments):
        import datetime
        self.moments = [datetime.datetime.fromisoformat(m) for m in moments]

    def __call__(self):
        return self.moments.pop(0)


def test_list_events_pages_in_time_order_between_dates(tmp_path):
    world = World(tmp_path)
    world.clock.now = Clock("2020-01-01T10:00:00+00:00", "2020-01-02T10:00:00+00:00", "2020-01-02T10:00:00+00:00",
                            "2020-01-03T10:00:00+00:00", "2020-01-04T10:00:00+00:00")
    fqids = []
    for _ in range(4):
        uuid, version, _ = world.bundle([])
        world.created(uuid, version)
        fqids.append(f"{uuid}.{version}")
    world.tombstone(uuid, version)
    world.tombstoned(uuid, version)

    everything = world.service.list_events("aws", per_page=500)
    assert [e["bundle_fqid"] for e in everything["event_streams"]] == fqids + [fqids[-1]]
    assert everything["token"] is None
    stamps = [e["event_timestamp"] for e in everything["event_streams"]]
    # The same clock reading twice: stamps stay strictly increasing.
    assert stamps == ["2020-01-01T10:00:00.000000Z", "2020-01-02T10:00:00.000000Z", "2020-01-02T10:00:00.000001Z",
                      "2020-01-03T10:00:00.000000Z", "2020-01-04T10:00:00.000000Z"]
    assert everything["event_streams"][-1]["event_type"] == TOMBSTONE
    assert everything["event_streams"][0]["event_id"].startswith("2020-01-01T100000.000000Z." + fqids[0])

    page = world.service.list_events("aws", "2020-01-02", "2020-01-04T100000.000000Z", 2)
    assert [e["bundle_fqid"] for e in page["event_streams"]] == fqids[1:3]
    rest = world.service.list_events("aws", "2020-01-02", "2020-01-04T100000.000000Z", 2, page["token"])
    assert [e["bundle_fqid"] for e in rest["event_streams"]] == fqids[3:4]
    assert rest["token"] is None
    assert world.service.list_events("aws", "2020-01-04T11:00:00+01:00")["event_streams"] == [
        everything["event_streams"][-1]]
    assert world.service.list_events("gcp") == {"event_streams": [], "token": None}
    world.state.stop()


@pytest.mark.parametrize("arguments,code", [
    (("aws", "yesterday"), "illegal_date"),
    (("aws", None, "2020-13-01"), "illegal_date"),
    (("aws", None, None, 0), "illegal_arguments"),
    (("aws", None, None, 10, "events/../x"), "illegal_token"),
    (("azure",), "illegal_arguments"),
])
def test_list_events_arguments_are_checked(world, arguments, code):
    with pytest.raises(InvalidParameter) as error:
        world.service.list_events(*arguments)
    assert error.value.error_code == code


def test_a_listing_stops_before_an_entry_still_being_written(world):
    uuid, version, _ = world.bundle([])
    world.created(uuid, version)
    with world.clock.stamp("aws"):  # an older entry in flight while a newer one is already there
        later, later_version, _ = world.bundle([])
        world.created(later, later_version)
        page = world.service.list_events("aws")
        assert [e["bundle_fqid"] for e in page["event_streams"]] == [f"{uuid}.{version}"]
        assert page["token"] == page["event_streams"][0]["event_id"]
    rest = world.service.list_events("aws", token=page["token"])
    assert [e["bundle_fqid"] for e in rest["event_streams"]] == [f"{later}.{later_version}"]
    assert rest["token"] is None


# --- reindexing -------------------------------------------------------------------------------------------

class Gate:
    """Holds the documents the reindex job built (from what the bucket had then) until ``open()``."""

    def __init__(self, source):
        self.source = source
        self.reached = eventlet.Event()
        self.opened = eventlet.Event()
        self.built = []  # the fqids of the documents held

    def __getattr__(self, name):
        return getattr(self.source, name)

    def listed_document(self, replica, listed):
        document = self.source.listed_document(replica, listed)
        self.built.append(listed.fqid)
        if not self.reached.ready():
            self.reached.send()
        self.opened.wait()
        return document

    def open(self):
        self.opened.send()


def test_a_reindex_rebuilds_the_index_while_writes_and_searches_go_on(world):
    # Bundles the live index never heard of (written straight to the bucket), one tombstoned.
    uuid = new_uuid()
    versions = [world.bundle([world.entry("a.json", {"n": n})], uuid=uuid)[1] for n in range(5)]
    tombstone = world.tombstone(uuid, versions[0])
    racing, racing_version, _ = world.bundle([world.entry("a.json", {"n": 99})])
    world.created(racing, racing_version)
    live_generation = world.state.index("aws").current_generation()
    gate = Gate(world.source)

    status = IndexesAPI(world.state).start_reindex("aws", gate)
    assert status["started"] is True and status["state"] == "running"
    assert status["generation"] != live_generation
    gate.reached.wait()
    wait_until(lambda: f"{uuid}.{versions[1]}" in gate.built, timeout=10, interval=0.01,
               what="the job to have built versions[1]'s document")
    assert world.service.start_reindex("aws")["started"] is False  # one at a time
    # Meanwhile: a new bundle, a tombstone of one the job has already read; searches answer.
    fresh, fresh_version, _ = world.bundle([world.entry("b.json", {"n": 7})])
    world.created(fresh, fresh_version)
    world.tombstone(racing, racing_version)
    world.tombstoned(racing, racing_version)
    assert world.purged(uuid, versions[1]) == []  # read by the job already; never in the live index
    assert world.found(fresh) == [f"{fresh}.{fresh_version}"]
    assert world.service.reindex_status("aws")["state"] == "running"
    gate.open()

    world.state.jobs["aws"].finished.wait()
    status = world.service.reindex_status("aws")
    assert status["state"] == "succeeded" and status["total"] == 6 and status["done"] == 6
    assert world.state.index("aws").current_generation() == status["generation"]
    assert world.state.index("aws").generations() == [status["generation"]]
    assert world.found(uuid) == [f"{uuid}.{v}" for v in reversed(versions[2:])]
    assert world.indexed(uuid, versions[0]) == tombstone
    assert world.found(fresh) == [f"{fresh}.{fresh_version}"]
    assert world.found(racing) == []  # the handler's tombstone, not the job's older reading
    # Writes after the switch go to the new generation.
    later, later_version, _ = world.bundle([])
    world.created(later, later_version)
    assert world.found(later) == [f"{later}.{later_version}"]
    assert REGISTRY.get_sample_value("dss_reindex_running", {"replica": "aws"}) == 0
    assert REGISTRY.get_sample_value("dss_reindex_progress_ratio", {"replica": "aws"}) == 1


def test_a_failed_reindex_leaves_the_live_index_as_it_was(world):
    uuid, version, _ = world.bundle([world.entry("a.json", {"a": 1})])
    world.created(uuid, version)
    live_generation = world.state.index("aws").current_generation()
    world.bundle([{**world.entry("b.json", {"b": 1}), "sha256": "0" * 64}])  # its blob is missing

    world.service.start_reindex("aws")
    world.state.jobs["aws"].finished.wait()

    status = world.service.reindex_status("aws")
    assert status["state"] == "failed" and "not readable" in status["error"]
    assert world.state.index("aws").generations() == [live_generation]
    assert world.found(uuid) == [f"{uuid}.{version}"]
    world.created(*world.bundle([])[:2])  # still writable


def test_reindex_status_and_health(world):
    assert world.service.reindex_status("gcp") == {"replica": "gcp", "state": "idle", "done": 0, "total": None,
                                                  "generation": world.state.index("gcp").current_generation()}
    with pytest.raises(InvalidParameter):
        world.service.reindex_status("azure")
    health = world.service.health()
    assert health["ok"] is True and health["aws"]["index"]["ok"] is True and health["gcp"]["bucket"]["ok"] is True
    world.stores["gcp"].unavailable = True
    assert world.service.health()["ok"] is False



def test_a_stopping_indexer_cancels_its_reindex_between_batches(world, monkeypatch):
    monkeypatch.setattr("services.indexer.reindex.BATCH_DOCUMENTS", 1)
    for _ in range(3):
        world.bundle([])
    live_generation = world.state.index("aws").current_generation()
    gate = Gate(world.source)
    IndexesAPI(world.state).start_reindex("aws", gate)
    gate.reached.wait()

    stopping = eventlet.spawn(world.state.stop)
    wait_until(lambda: world.state.jobs["aws"].cancelled, timeout=10, interval=0.01, what="stop() to cancel the job")
    gate.open()
    stopping.wait()

    status = world.service.reindex_status("aws")
    assert status["state"] == "failed" and "stopping" in status["error"] and status["done"] == 1
    assert world.state.index("aws").generations() == [live_generation]
