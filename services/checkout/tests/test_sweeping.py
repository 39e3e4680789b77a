"""Unit tests of the sweeper of the checkout buckets (``sweeping``): what expired of file reads'
copies, bundle checkouts, job records and markers is deleted, in bounded batches, on the ``sweep``
RPC and the timer; over the in-memory world of ``file_reads_world``."""
import json

import pytest

from shared.exceptions import InvalidParameter

from services.checkout.file_reads.reads import MARKER_PREFIX
from services.checkout.lifetime import rfc3339
from services.checkout.tests.file_reads_world import FileWorld, copy_of


@pytest.fixture
def world():
    return FileWorld()


def test_the_sweeper_deletes_the_mail_quota_of_past_hours(world):
    store, bucket = world.stores["aws"], world.settings.bucket("aws", "checkout")
    hour = int(world.clock.now // 3600)
    for window in (hour - 30, hour - 1, hour):
        store.put_bytes(bucket, f"mail-quota/{window:010d}/caller/job", b"")
    result = world.new_worker().sweep("aws")
    assert result["markers_deleted"] == 2 and result["examined"] == 0
    assert sorted(world.checkout()) == [f"mail-quota/{hour:010d}/caller/job"]


def test_the_sweeper_deletes_expired_copies_and_keeps_small_json_and_fresh_ones(world):
    old = world.add_file(b"old bytes")
    fresh = world.add_file(b"fresh bytes")
    small_json = world.add_file(b'{"a": 1}', content_type="application/json")
    big_json = world.add_file(b'{"a": "' + b"j" * 3000 + b'"}', content_type="application/json")
    for doc in (old, small_json, big_json):
        world.service.get_file("aws", doc["uuid"])
    world.clock.advance_days(15)
    world.new_worker().get_file("aws", fresh["uuid"])
    world.checkout()[MARKER_PREFIX + "blobs/lost"] = (json.dumps({"deadline": rfc3339(world.clock.now - 1)}).encode(),
                                                      "application/json", {})
    world.checkout()[MARKER_PREFIX + "blobs/running"] = (
        json.dumps({"deadline": rfc3339(world.clock.now + 60)}).encode(), "application/json", {})

    result = world.new_worker().sweep("aws")
    assert result == {"replica": "aws", "examined": 4, "deleted": 2, "kept": 1, "markers_deleted": 1,
                      "next_start_after": None}
    assert copy_of(world, old) is None and copy_of(world, big_json) is None
    assert copy_of(world, fresh) is not None and copy_of(world, small_json) is not None
    assert MARKER_PREFIX + "blobs/running" in world.checkout()
    # The swept copy is not served from memory: the next read copies again.
    assert world.new_worker().get_file("aws", old["uuid"])["status"] == "ready"
    assert copy_of(world, old) is not None


def test_the_sweeper_expires_bundle_checkouts_and_old_job_records_too(world):
    store, bucket = world.stores["aws"], world.settings.bucket("aws", "checkout")
    store.put_bytes(bucket, "bundles/b.v/old.bin", b"a bundle's file")
    store.put_bytes(bucket, "bundles/b.v/small.json", b'{"kept": true}', content_type="application/json")
    store.put_bytes(bucket, "checkout-jobs/old.json", b'{"status": "SUCCEEDED"}', content_type="application/json")
    world.clock.advance_days(15)
    store.put_bytes(bucket, "bundles/c.v/new.bin", b"a newer bundle's file")
    store.put_bytes(bucket, "checkout-jobs/new.json", b'{"status": "RUNNING"}', content_type="application/json")
    result = world.new_worker().sweep("aws")
    assert (result["examined"], result["deleted"], result["kept"]) == (5, 2, 1)
    assert sorted(world.checkout()) == ["bundles/b.v/small.json", "bundles/c.v/new.bin", "checkout-jobs/new.json"]


def test_the_sweeper_goes_through_a_bucket_in_bounded_batches(world):
    docs = [world.add_file(f"file {i}".encode()) for i in range(5)]
    for doc in docs:
        world.service.get_file("aws", doc["uuid"])
    world.clock.advance_days(15)
    first = world.service.sweep("aws", limit=2)
    assert first["examined"] == 2 and first["deleted"] == 2 and first["next_start_after"] is not None
    second = world.service.sweep("aws", start_after=first["next_start_after"], limit=2)
    assert second["examined"] == 2 and second["next_start_after"] > first["next_start_after"]
    assert world.service.sweep("aws", start_after=second["next_start_after"], limit=2)["next_start_after"] is None
    assert not any(key.startswith("blobs/") for key in world.checkout())


def test_the_timer_sweeps_each_replica_from_where_it_stopped(world):
    world = FileWorld(DSS_CHECKOUT_SWEEP_BATCH=2)
    docs = [world.add_file(f"timer {i}".encode()) for i in range(3)]
    for doc in docs:
        world.service.get_file("aws", doc["uuid"])
    world.clock.advance_days(15)
    first = world.new_worker().sweep_expired_copies()
    assert first["aws"]["deleted"] == 2 and first["gcp"]["examined"] == 0
    second = world.new_worker().sweep_expired_copies()
    assert second["aws"]["deleted"] == 1 and second["aws"]["next_start_after"] is None
    assert not any(key.startswith("blobs/") for key in world.checkout())


def test_sweep_arguments_are_checked(world):
    with pytest.raises(InvalidParameter):
        world.service.sweep("aws", limit=0)
    with pytest.raises(InvalidParameter):
        world.service.sweep("nowhere")


def test_two_instances_sweeping_the_same_batch_at_once_delete_each_expired_copy_once(world):
    """Every checkout instance runs the sweeper timer: two of them walking the same keys at the same
    time must neither fail nor delete what is fresh (deletes are idempotent, each stat taken anew;
    the store's own idempotent delete is tests/conformance/test_blobstore.py's)."""
    import eventlet

    from services.checkout.file_reads.reads import CheckoutState
    from services.checkout.sweeping import Sweeper

    docs = [world.add_file(f"swept {i}".encode()) for i in range(6)]
    for doc in docs:
        world.service.get_file("aws", doc["uuid"])
    world.clock.advance_days(15)
    fresh = world.add_file(b"fresh")
    world.new_worker().get_file("aws", fresh["uuid"])
    instances = [Sweeper(world.replicas, world.settings, CheckoutState(world.settings.checkout_cache_seconds,
                                                                       clock=world.clock)) for _ in range(2)]
    runs = [eventlet.spawn(instance.sweep_next_batch, "aws") for instance in instances]
    results = [run.wait() for run in runs]
    assert all(result["examined"] >= 1 for result in results)
    assert sum(result["deleted"] for result in results) >= len(docs)
    assert len([key for key in world.checkout() if key.startswith("blobs/")]) == 1
    assert copy_of(world, fresh) is not None and not any(copy_of(world, doc) for doc in docs)
