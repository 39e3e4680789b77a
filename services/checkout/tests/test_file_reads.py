"""Unit tests of file reads (GET /files): the checkout service built with worker_factory over
in-memory buckets, so only the cloud is faked (see ``file_reads_world``). The sweeper's tests are in
``test_sweeping``, DRS's in ``test_drs``."""
import base64
import json

import eventlet
import pytest

from shared import events
from shared.blobstore import BlobStoreUnavailable
from shared.checksums import checksum_bytes
from shared.concurrency import ExpiringCache
from shared.exceptions import InvalidParameter, NotFound, Unavailable
from shared.identifiers import Keys, new_uuid, new_version
from shared.schemas import FileCheckoutRequested
from devtools.fakes import MemoryBlobStore
from devtools.waiting import wait_until

from services.checkout.file_reads.blobs import Blob, file_version_of_key
from services.checkout.file_reads.reads import MARKER_PREFIX
from services.checkout.file_reads.tokens import CheckoutToken
from services.checkout.lifetime import CHECKED_OUT_METADATA, CopyState, Lifetime, rfc3339
from services.checkout.tests.file_reads_world import KiB, FileWorld, copy_of, make_old

LARGE = 100 * KiB  # above the world's inline threshold (64 KiB)


@pytest.fixture
def world():
    return FileWorld()


# --- reads answered at once ---------------------------------------------------------------------------

@pytest.mark.parametrize("replica, scheme", [("aws", "s3"), ("gcp", "gs")])
def test_a_small_file_is_copied_inline_and_served_from_the_checkout_bucket(world, replica, scheme):
    doc = world.add_file(b"hello checkout", replica)
    answer = world.service.get_file(replica, doc["uuid"])
    blob_key = Blob.of_file(doc).key
    checkout_bucket = world.settings.bucket(replica, "checkout")
    assert answer == {"status": "ready", "metadata": doc,
                      "url": f"memory://{checkout_bucket}/{blob_key}?expires_in=3600"}
    data, content_type, metadata = copy_of(world, doc, replica)
    assert data == b"hello checkout" and content_type == "application/octet-stream"
    assert metadata == {CHECKED_OUT_METADATA: rfc3339(world.clock.now)}
    assert world.service.dispatch.call_count == 0
    direct = world.service.get_file(replica, doc["uuid"], doc["version"], directurl=True)
    assert direct["url"] == f"{scheme}://{checkout_bucket}/{blob_key}"


def test_the_metadata_is_what_head_file_answers_and_the_latest_version_is_served(world):
    uuid = new_uuid()
    world.add_file(b"one", uuid=uuid, version="2020-01-01T000000.000000Z")
    newer = world.add_file(b"two", uuid=uuid, version="2021-01-01T000000.000000Z")
    answer = world.service.get_file("aws", uuid)
    assert answer["metadata"] == newer
    assert set(newer) == {"format", "uuid", "version", "creator_uid", "content-type", "size", "sha256", "sha1",
                          "s3-etag", "crc32c"}
    older = world.service.get_file("aws", uuid, "2020-01-01T000000.000000Z")
    assert older["metadata"]["size"] == 3 and older["url"] != answer["url"]


def test_a_repeat_read_costs_no_storage_call_while_cached_then_one_stat(world):
    doc = world.add_file(b"x" * 100)
    store = world.stores["aws"]
    world.service.get_file("aws", doc["uuid"], doc["version"])
    store.calls.clear()
    world.new_worker().get_file("aws", doc["uuid"], doc["version"])
    assert sum(store.calls.values()) == 0
    world.clock.advance(world.settings.checkout_cache_seconds)
    world.new_worker().get_file("aws", doc["uuid"], doc["version"])
    assert store.calls == {"stat": 1}  # the copy looked at again; the document stays cached


def test_identical_bytes_share_one_copy(world):
    first = world.add_file(b"same bytes")
    second = world.add_file(b"same bytes")
    world.service.get_file("aws", first["uuid"])
    world.stores["aws"].calls.clear()
    assert world.new_worker().get_file("aws", second["uuid"])["status"] == "ready"
    assert "put_bytes" not in world.stores["aws"].calls and "copy" not in world.stores["aws"].calls


def test_a_missing_file_is_404_and_bad_arguments_400(world):
    with pytest.raises(NotFound):
        world.service.get_file("aws", new_uuid())
    doc = world.add_file(b"abc")
    with pytest.raises(NotFound):
        world.service.get_file("aws", doc["uuid"], new_version())
    with pytest.raises(NotFound):
        world.service.get_file("gcp", doc["uuid"])
    with pytest.raises(InvalidParameter) as raised:
        world.service.get_file("azure", doc["uuid"])
    assert raised.value.error_code == "unknown_replica"
    with pytest.raises(InvalidParameter) as raised:
        world.service.get_file("aws", "not-a-uuid")
    assert raised.value.error_code == "illegal_uuid"


def test_a_blob_that_does_not_match_its_key_is_never_checked_out(world):
    doc = world.add_file(b"the right bytes", blob=b"other bytes!!!!")
    with pytest.raises(Unavailable) as raised:
        world.service.get_file("aws", doc["uuid"])
    assert raised.value.error_code == "copy_not_verified"
    assert Blob.of_file(doc).key not in raised.value.title and "dss-" not in raised.value.title
    assert copy_of(world, doc) is None


def test_a_copy_of_other_bytes_or_without_its_checkout_time_is_made_again(world):
    doc = world.add_file(b"abcdef")
    key = Blob.of_file(doc).key
    world.checkout()[key] = (b"abcdeX", "application/octet-stream", {CHECKED_OUT_METADATA: rfc3339(world.clock.now)})
    world.service.get_file("aws", doc["uuid"])
    assert world.checkout()[key][0] == b"abcdef"
    world.checkout()[key] = (b"abcdef", "application/octet-stream", {})  # not made by the service: unverified
    world.state.copies.forget(("aws", key))
    world.new_worker().get_file("aws", doc["uuid"])
    assert CHECKED_OUT_METADATA in world.checkout()[key][2]


FUTURE = "2999-01-01T00:00:00.000000Z"


def test_a_copy_carries_the_checkouts_metadata_never_its_sources(world):
    doc = world.add_file(b"staged with metadata of its own")
    key = Blob.of_file(doc).key
    data, content_type, _ = world.main()[key]
    world.main()[key] = (data, content_type, {CHECKED_OUT_METADATA: FUTURE, "owner": "mallory"})
    world.service.get_file("aws", doc["uuid"])
    assert world.checkout()[key][2] == {CHECKED_OUT_METADATA: rfc3339(world.clock.now)}


def test_a_copy_stamped_in_the_future_is_neither_served_nor_kept(world):
    doc = world.add_file(b"stamped by someone else")
    key = Blob.of_file(doc).key
    world.checkout()[key] = (world.main()[key][0], "application/octet-stream", {CHECKED_OUT_METADATA: FUTURE})
    assert world.service.get_file("aws", doc["uuid"])["status"] == "ready"
    assert world.checkout()[key][2] == {CHECKED_OUT_METADATA: rfc3339(world.clock.now)}  # made again

    store, bucket = world.stores["aws"], world.settings.bucket("aws", "checkout")
    stamp = {CHECKED_OUT_METADATA: FUTURE}
    store.put_bytes(bucket, "bundles/b.v/future.bin", b"a bundle's file", metadata=stamp)
    store.put_bytes(bucket, "bundles/b.v/future.json", b'{"small": 1}', content_type="application/json",
                    metadata=stamp)
    store.put_bytes(bucket, "bundles/b.v/skewed.bin", b"from a clock ahead",
                    metadata={CHECKED_OUT_METADATA: rfc3339(world.clock.now + 60)})
    result = world.new_worker().sweep("aws")
    assert (result["deleted"], result["kept"]) == (2, 0)
    assert sorted(world.checkout()) == [key, "bundles/b.v/skewed.bin"]


def test_concurrent_reads_of_one_blob_make_one_copy(world):
    doc = world.add_file(b"y" * 1000)
    store = world.stores["aws"]
    copy = store.copy

    def slow_copy(*args, **kwargs):
        eventlet.sleep(0.05)  # the copy is under way while the other reads arrive
        return copy(*args, **kwargs)

    store.copy = slow_copy
    readers = [eventlet.spawn(world.new_worker().get_file, "aws", doc["uuid"], doc["version"]) for _ in range(5)]
    answers = [reader.wait() for reader in readers]
    assert {answer["status"] for answer in answers} == {"ready"}
    assert store.calls["copy"] == 1


# --- large blobs: copied in the background ---------------------------------------------------------------

def test_a_large_file_is_pending_with_a_token_until_its_background_copy_is_made(world):
    doc = world.add_file(b"L" * LARGE)
    answer = world.service.get_file("aws", doc["uuid"])
    assert answer["status"] == "pending" and answer["metadata"] == doc
    assert answer["retry_after"] == world.settings.checkout_retry_after == 10
    token = CheckoutToken.decode(answer["token"], world.clock.now)
    assert (token.replica, token.uuid, token.version, token.attempt) == ("aws", doc["uuid"], doc["version"], 1)
    [request] = world.dispatched(world.service, events.FILE_CHECKOUT_REQUESTED)
    assert FileCheckoutRequested().load(request) == {
        "replica": "aws", "blob_key": Blob.of_file(doc).key, "size": LARGE,
        "content_type": "application/octet-stream", "reason": "read"}
    assert MARKER_PREFIX + Blob.of_file(doc).key in world.checkout()
    assert copy_of(world, doc) is None

    # The client comes back before the copy is made: pending again, no second copy requested, even
    # from another process (which sees the marker in the bucket).
    world.clock.advance(10)
    again = world.new_worker()
    second = again.get_file("aws", doc["uuid"], token=answer["token"])
    assert second["status"] == "pending" and CheckoutToken.decode(second["token"], world.clock.now).attempt == 2
    world.state.requested.forget(("aws", Blob.of_file(doc).key))
    assert again.get_file("aws", doc["uuid"], token=second["token"])["status"] == "pending"
    assert world.dispatched(again, events.FILE_CHECKOUT_REQUESTED) == []

    handler = world.new_worker()
    assert handler.handle_file_checkout_requested(request)["state"] == "fresh"
    assert copy_of(world, doc)[0] == b"L" * LARGE
    assert MARKER_PREFIX + Blob.of_file(doc).key not in world.checkout()
    done = world.new_worker().get_file("aws", doc["uuid"], token=second["token"])
    assert done["status"] == "ready" and done["url"].endswith(Blob.of_file(doc).key + "?expires_in=3600")
    # A redelivered request finds the copy fresh and leaves it alone.
    world.stores["aws"].calls.clear()
    world.new_worker().handle_file_checkout_requested(request)
    assert "copy" not in world.stores["aws"].calls


def test_the_token_pins_the_version_the_first_round_found(world):
    uuid = new_uuid()
    first = world.add_file(b"1" * LARGE, uuid=uuid, version="2020-01-01T000000.000000Z")
    pending = world.service.get_file("aws", uuid)
    world.add_file(b"2" * LARGE, uuid=uuid, version="2021-01-01T000000.000000Z")
    world.service.note_file_version({"replica": "aws", "uuid": uuid, "version": "2021-01-01T000000.000000Z",
                                     "key": "k", "blob_key": "b", "size": 1, "content_type": "c"})
    again = world.new_worker().get_file("aws", uuid, token=pending["token"])
    assert again["metadata"]["version"] == first["version"]
    # The gateway's 301 names the version too: the same version is accepted, another one is not.
    assert world.new_worker().get_file("aws", uuid, first["version"], token=pending["token"])["status"] == "pending"
    with pytest.raises(InvalidParameter) as raised:
        world.new_worker().get_file("aws", uuid, "2021-01-01T000000.000000Z", token=pending["token"])
    assert raised.value.error_code == "illegal_token"


def _token(fields) -> str:
    return base64.urlsafe_b64encode(json.dumps(fields).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("make_token", [
    lambda good: "",
    lambda good: "not base64!",
    lambda good: good + "=",
    lambda good: "x" * 2000,
    lambda good: base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("="),
    lambda good: _token([1, 2]),
    lambda good: _token({**good_fields(good), "extra": 1}),
    lambda good: _token({k: v for k, v in good_fields(good).items() if k != "attempt"}),
    lambda good: _token({**good_fields(good), "attempt": 0}),
    lambda good: _token({**good_fields(good), "attempt": "1"}),
    lambda good: _token({**good_fields(good), "started": 1.5}),
    lambda good: _token({**good_fields(good), "started": 0}),             # a month and more ago
    lambda good: _token({**good_fields(good), "started": 4_000_000_000}),  # the future
    lambda good: _token({**good_fields(good), "uuid": new_uuid()}),         # another file
    lambda good: _token({**good_fields(good), "replica": "gcp"}),
    lambda good: _token({**good_fields(good), "version": "yesterday"}),
], ids=["empty", "alphabet", "padding", "too-long", "not-utf8", "not-an-object", "unknown-field", "missing-field",
        "attempt-zero", "attempt-string", "started-float", "too-old", "future", "other-file", "other-replica",
        "bad-version"])
def test_a_malformed_or_foreign_token_is_a_400(world, make_token):
    doc = world.add_file(b"Z" * LARGE)
    good = world.service.get_file("aws", doc["uuid"])["token"]
    with pytest.raises(InvalidParameter) as raised:
        world.new_worker().get_file("aws", doc["uuid"], token=make_token(good))
    assert raised.value.error_code == "illegal_token"


def good_fields(token: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def test_a_request_that_cannot_be_dispatched_leaves_no_marker(world):
    doc = world.add_file(b"D" * LARGE)
    worker = world.new_worker()
    worker.dispatch.side_effect = ConnectionError("broker gone")
    with pytest.raises(ConnectionError):
        worker.get_file("aws", doc["uuid"])
    assert not any(key.startswith(MARKER_PREFIX) for key in world.checkout())
    retry = world.new_worker()
    assert retry.get_file("aws", doc["uuid"])["status"] == "pending"
    assert len(world.dispatched(retry, events.FILE_CHECKOUT_REQUESTED)) == 1


def test_a_lost_background_copy_is_requested_again_after_its_deadline(world):
    doc = world.add_file(b"Q" * LARGE)
    world.service.get_file("aws", doc["uuid"])
    world.clock.advance(3600)  # the copy never happened (its message was dead-lettered, say)
    late = world.new_worker()
    assert late.get_file("aws", doc["uuid"])["status"] == "pending"
    assert len(world.dispatched(late, events.FILE_CHECKOUT_REQUESTED)) == 1


def test_a_background_request_for_no_blob_key_is_given_up(world):
    from shared.exceptions import Unprocessable
    with pytest.raises(Unprocessable):
        world.service.handle_file_checkout_requested({"replica": "aws", "blob_key": "blobs/../../etc", "size": 1,
                                                      "content_type": "x", "reason": "read"})


# --- expiry and refresh --------------------------------------------------------------------------------

def test_lifetime_rules():
    lifetime = Lifetime(expiry=14 * 86400, refresh_margin=2 * 86400, keep_json_bytes=100)
    data = b"0123456789"
    checksums = checksum_bytes(data)
    blob = Blob(checksums.blob_key(), checksums, len(data), "application/octet-stream")

    def info(made_days_ago, size=len(data), content_type="application/octet-stream", metadata=None):
        from shared.blobstore import BlobInfo
        meta = {CHECKED_OUT_METADATA: rfc3339(now - made_days_ago * 86400)} if metadata is None else metadata
        return BlobInfo(blob.key, size, content_type, meta, checksums.s3_etag, None, None)

    now = 1_800_000_000.0
    assert lifetime.judge(None, blob, now).state is CopyState.MISSING
    assert lifetime.judge(info(0), blob, now).state is CopyState.FRESH
    assert lifetime.judge(info(0), blob, now).refresh_at == now + 12 * 86400
    assert lifetime.judge(info(11.9), blob, now).state is CopyState.FRESH
    assert lifetime.judge(info(12.1), blob, now).state is CopyState.DUE
    assert lifetime.judge(info(14.1), blob, now).state is CopyState.MISSING
    assert lifetime.judge(info(1, size=11), blob, now).state is CopyState.MISSING
    assert lifetime.judge(info(1, metadata={}), blob, now).state is CopyState.MISSING
    assert lifetime.judge(info(1, metadata={CHECKED_OUT_METADATA: "soon"}), blob, now).state is CopyState.MISSING
    # A time in the future was written by no process of the store (beyond clock skew): not trusted.
    assert lifetime.judge(info(-1), blob, now).state is CopyState.MISSING
    assert lifetime.judge(info(-60 / 86400), blob, now).state is CopyState.FRESH
    assert lifetime.expired(info(-1), now) and not lifetime.expired(info(-60 / 86400), now)
    json_blob = Blob(blob.key, checksums, len(data), "application/json; charset=utf-8")
    assert lifetime.judge(info(400, content_type="application/json; charset=utf-8"), json_blob, now).state \
        is CopyState.FRESH
    assert lifetime.expired(info(15), now) and not lifetime.expired(info(13), now)
    assert not lifetime.expired(info(400, content_type="application/json"), now)  # small JSON is kept
    assert lifetime.expired(info(-1, content_type="application/json"), now)  # unless stamped in the future
    big_json = Lifetime(14 * 86400, 2 * 86400, keep_json_bytes=5)
    assert big_json.expired(info(15, content_type="application/json"), now)


def test_a_copy_read_near_its_expiry_is_refreshed(world):
    doc = world.add_file(b"refresh me")
    world.service.get_file("aws", doc["uuid"])
    world.clock.advance_days(12.5)
    make_old(world, doc, 12.5)  # (the copy's time is what counts, not the cache)
    world.state.copies.forget(("aws", Blob.of_file(doc).key))
    answer = world.new_worker().get_file("aws", doc["uuid"])
    assert answer["status"] == "ready"
    assert copy_of(world, doc)[2][CHECKED_OUT_METADATA] == rfc3339(world.clock.now)


def test_a_large_copy_near_its_expiry_is_served_and_refreshed_in_the_background(world):
    doc = world.add_file(b"R" * LARGE)
    world.service.get_file("aws", doc["uuid"])
    [request] = world.dispatched(world.service, events.FILE_CHECKOUT_REQUESTED)
    world.new_worker().handle_file_checkout_requested(request)
    world.clock.advance_days(13)
    world.state.copies.forget(("aws", Blob.of_file(doc).key))
    reader = world.new_worker()
    assert reader.get_file("aws", doc["uuid"])["status"] == "ready"
    [refresh] = world.dispatched(reader, events.FILE_CHECKOUT_REQUESTED)
    assert refresh["reason"] == "refresh"
    world.new_worker().handle_file_checkout_requested(refresh)
    assert copy_of(world, doc)[2][CHECKED_OUT_METADATA] == rfc3339(world.clock.now)


def test_an_expired_copy_is_copied_again_on_read(world):
    doc = world.add_file(b"expired")
    world.service.get_file("aws", doc["uuid"])
    world.clock.advance_days(15)
    world.new_worker().get_file("aws", doc["uuid"])
    assert copy_of(world, doc)[2][CHECKED_OUT_METADATA] == rfc3339(world.clock.now)


# --- warming ------------------------------------------------------------------------------------------------

def file_created(doc, replica="aws") -> dict:
    return {"replica": replica, "uuid": doc["uuid"], "version": doc["version"],
            "key": Keys.file(doc["uuid"], doc["version"]), "blob_key": Blob.of_file(doc).key, "size": doc["size"],
            "content_type": doc["content-type"]}


def test_a_small_new_file_is_warmed_and_its_first_read_costs_no_copy(world):
    doc = world.add_file(b"warm me", content_type="text/plain")
    assert world.service.handle_file_created(file_created(doc))["state"] == "fresh"
    assert copy_of(world, doc)[:2] == (b"warm me", "text/plain")
    world.stores["aws"].calls.clear()
    assert world.new_worker().get_file("aws", doc["uuid"])["status"] == "ready"
    assert "put_bytes" not in world.stores["aws"].calls


def test_a_larger_new_file_is_not_warmed(world):
    doc = world.add_file(b"w" * (5 * KiB))
    assert world.service.handle_file_created(file_created(doc)) is None
    assert copy_of(world, doc) is None


# --- the latest version, as seen by each process ---------------------------------------------------------

def test_a_new_version_is_seen_at_once_when_announced_and_after_the_cache_time_otherwise(world):
    uuid = new_uuid()
    world.add_file(b"v1", uuid=uuid, version="2020-01-01T000000.000000Z")
    assert world.service.get_file("aws", uuid)["metadata"]["version"] == "2020-01-01T000000.000000Z"
    second = world.add_file(b"v2", uuid=uuid, version="2021-01-01T000000.000000Z")
    assert world.new_worker().get_file("aws", uuid)["metadata"]["version"] == "2020-01-01T000000.000000Z"
    world.service.note_file_version(file_created(second))
    assert world.new_worker().get_file("aws", uuid)["metadata"]["version"] == second["version"]

    third = world.add_file(b"v3", uuid=uuid, version="2022-01-01T000000.000000Z", replica="aws")
    world.clock.advance(world.settings.checkout_cache_seconds)  # no event arrived: the cache ages out
    assert world.new_worker().get_file("aws", uuid)["metadata"]["version"] == third["version"]

    copied = world.add_file(b"g", uuid=uuid, version="2023-01-01T000000.000000Z", replica="gcp")
    world.add_file(b"g0", uuid=uuid, version="2019-01-01T000000.000000Z", replica="gcp")
    world.new_worker().get_file("gcp", uuid)
    newer = world.add_file(b"g2", uuid=uuid, version="2024-01-01T000000.000000Z", replica="gcp")
    world.service.note_replicated_file_version({
        "source_replica": "aws", "destination_replica": "gcp", "key": Keys.file(uuid, newer["version"]),
        "size": 10, "copied": True, "lag_seconds": 0.5})
    assert copied["version"] < newer["version"]
    assert world.new_worker().get_file("gcp", uuid)["metadata"]["version"] == newer["version"]
    world.service.note_replicated_file_version({  # not a file: nothing to note
        "source_replica": "aws", "destination_replica": "gcp", "key": "bundles/x", "copied": True})


def test_an_announced_older_version_changes_nothing_and_a_listing_that_missed_one_is_not_kept(world):
    uuid = new_uuid()
    world.add_file(b"v1", uuid=uuid, version="2020-01-01T000000.000000Z")
    latest = world.add_file(b"v2", uuid=uuid, version="2021-01-01T000000.000000Z")
    world.service.get_file("aws", uuid)
    world.service.note_file_version({**file_created(latest), "version": "2020-01-01T000000.000000Z"})
    world.stores["aws"].calls.clear()
    assert world.new_worker().get_file("aws", uuid)["metadata"]["version"] == latest["version"]
    assert "list_keys" not in world.stores["aws"].calls
    # A version announced before its listing shows it (another replica's event, say): listed each time.
    world.service.note_file_version({**file_created(latest), "version": "2030-01-01T000000.000000Z"})
    for _ in range(2):
        assert world.new_worker().get_file("aws", uuid)["metadata"]["version"] == latest["version"]
    assert world.stores["aws"].calls["list_keys"] == 2


def test_a_read_during_the_warming_of_a_new_file_shares_its_lookups_and_copy(world):
    doc = world.add_file(b"shared lookups")
    store = world.stores["aws"]
    for name in ("get_bytes", "list_keys", "copy"):
        original = getattr(store, name)

        def slow(*args, _original=original, **kwargs):
            eventlet.sleep(0.02)  # every lookup still under way when the read arrives
            return _original(*args, **kwargs)
        setattr(store, name, slow)
    store.calls.clear()
    warming = eventlet.spawn(world.service.handle_file_created, file_created(doc))
    eventlet.sleep(0.001)
    assert world.new_worker().get_file("aws", doc["uuid"])["status"] == "ready"
    assert warming.wait()["state"] == "fresh"
    # The warming's own calls only, no stat among them: the listing, the document, the copy (judged
    # from the store's answer). The read made none of its own.
    assert store.calls == {"list_keys": 1, "get_bytes": 1, "copy": 1}


def test_the_document_a_file_created_event_carries_is_kept_instead_of_read_back(world):
    doc = world.add_file(b"carried")
    stored = {name: value for name, value in doc.items() if name != "uuid"}
    store = world.stores["aws"]
    store.calls.clear()
    assert world.service.handle_file_created({**file_created(doc), "metadata": stored})["state"] == "fresh"
    assert store.calls == {"list_keys": 1, "copy": 1}  # the document not read back
    store.calls.clear()
    assert world.new_worker().get_file("aws", doc["uuid"])["metadata"] == doc
    assert dict(store.calls) == {}


@pytest.mark.parametrize("change", [{"sha256": "0" * 64}, {"version": "2020-01-01T000000.000000Z"}, {"sha1": None}],
                         ids=["other bytes", "other version", "broken"])
def test_a_carried_document_that_does_not_match_its_event_is_read_from_the_bucket(world, change):
    doc = world.add_file(b"carried wrongly")
    carried = {**{name: value for name, value in doc.items() if name != "uuid"}, **change}
    store = world.stores["aws"]
    store.calls.clear()
    assert world.service.handle_file_created({**file_created(doc), "metadata": carried})["state"] == "fresh"
    assert store.calls["get_bytes"] == 1  # the document read back
    assert world.new_worker().get_file("aws", doc["uuid"])["metadata"] == doc


def test_the_announced_versions_document_is_read_while_the_latest_version_is_listed(world):
    uuid = new_uuid()
    world.add_file(b"v1", uuid=uuid, version="2020-01-01T000000.000000Z")
    latest = world.add_file(b"v2", uuid=uuid, version="2021-01-01T000000.000000Z")
    world.service.note_file_version(file_created(latest))
    store, running, most_running = world.stores["aws"], [0], [0]
    for name in ("get_bytes", "list_keys"):
        original = getattr(store, name)

        def slow(*args, _original=original):
            running[0] += 1
            most_running[0] = max(most_running[0], running[0])
            eventlet.sleep(0.02)
            running[0] -= 1
            return _original(*args)
        setattr(store, name, slow)
    store.calls.clear()
    assert world.new_worker().get_file("aws", uuid)["metadata"]["version"] == latest["version"]
    assert most_running[0] == 2  # the listing and the document at once
    assert store.calls["list_keys"] == 1 and store.calls["get_bytes"] == 1

    # An announced version the listing does not confirm (another replica's, say) costs one more read.
    world.service.note_file_version({**file_created(latest), "version": "2030-01-01T000000.000000Z"})
    world.clock.advance(world.settings.checkout_cache_seconds)
    store.calls.clear()
    assert world.new_worker().get_file("aws", uuid)["metadata"]["version"] == latest["version"]
    # The look-ahead (a green thread of its own) has read and finished: not found, logged, nothing kept.
    wait_until(lambda: store.calls.get("get_bytes", 0) >= 1 and running[0] == 0, timeout=10, interval=0.005,
               what="the look-ahead's read done")
    # The one read is the look-ahead's, which found nothing; v2's document was known already.
    assert store.calls["list_keys"] == 1 and store.calls["get_bytes"] == 1


def test_file_version_of_key():
    uuid = new_uuid()
    assert file_version_of_key(f"files/{uuid}.2020-01-01T000000.000000Z") == (uuid, "2020-01-01T000000.000000Z")
    assert file_version_of_key(f"files/{uuid}") is None
    assert file_version_of_key(f"bundles/{uuid}.2020-01-01T000000.000000Z") is None


# --- the process-wide helpers ---------------------------------------------------------------------------------

def test_the_expiring_cache():
    now = [100.0]
    cache = ExpiringCache(lambda: now[0], max_entries=2)
    cache.put("a", 1, until=110)
    assert cache.get("a") == 1
    now[0] = 110
    assert cache.get("a") is None
    cache.put("b", 2, until=200)
    cache.forget("b")
    assert cache.get("b") is None
    cache.put("b", 2, until=200)
    assert cache.get("b") == 2
    cache.put("c", 3, until=200)
    cache.put("d", 4, until=200)
    assert cache.get("b") is None and len(cache) == 2  # the least recently used went first
    cache.put("e", 5, until=now[0])  # already over: not kept
    assert cache.get("e") is None


# --- health -----------------------------------------------------------------------------------------------

def test_health_reports_both_buckets_of_both_replicas(world):
    report = world.service.health()
    assert report["ok"] is True and report["aws"]["ok"] and report["gcp"]["ok"]
    del world.stores["gcp"].buckets[world.settings.bucket("gcp", "checkout")]
    report = world.service.health()
    assert report["ok"] is False and "missing" in report["gcp"]["detail"]
    world.stores["aws"].unavailable = True
    report = world.service.health()
    assert report["aws"] == {"ok": False, "detail": "unreachable: storage_unavailable: aws is unreachable"}


class TalkativeStore(MemoryBlobStore):
    """Unreachable, with errors that name buckets and keys as S3's and GCS's do."""

    def stat(self, bucket, key):
        raise BlobStoreUnavailable(f"head s3://{bucket}/{key}: Could not connect to secret-endpoint")

    def list_keys(self, bucket, prefix="", start_after=None):
        raise BlobStoreUnavailable(f"list s3://{bucket}/{prefix}: Could not connect to secret-endpoint")


def test_an_unreachable_store_is_a_503_that_names_no_bucket_key_or_store_error(world):
    doc = world.add_file(b"abc")
    world.stores["aws"].__class__ = TalkativeStore
    for call in (lambda worker: worker.get_file("aws", doc["uuid"], doc["version"]),
                 lambda worker: worker.get_file("aws", doc["uuid"]),
                 lambda worker: worker.drs_object("aws", doc["uuid"], None, "http://dss.example"),
                 lambda worker: worker.drs_access("aws", doc["uuid"], f"aws.{doc['version']}")):
        with pytest.raises(Unavailable) as raised:
            call(world.new_worker())
        error = raised.value
        assert error.error_code == "storage_unavailable", error
        assert "secret" not in error.title and "s3://" not in error.title and "dss-" not in error.title, error
