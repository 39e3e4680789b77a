"""Replication under faults (issue 3): the replicator runs as a real `nameko run` process on the
real broker against both emulators, a batch of 500 files (a blob and a ``files/`` document each)
and a bundle naming them is written into the aws main bucket, and the bucket's own notifications
drive everything (S3 -> SQS -> the replicator's bridge -> ``object_changed`` -> the copy). A fault
is injected once some but not all of the batch has arrived in gcp; the test then requires that
nothing was lost (``Batch.assert_nothing_lost``: every key in gcp with the bytes written, by our
hashes and by ``ops.replicas``'s verify, metadata and --deep) and that nothing was
dead-lettered.

A corrupted copy of unchanged size found by ``verify --deep`` and fixed by ``repair`` is covered by
services/replicator/tests/test_integration.py
(``test_verify_finds_a_same_size_corruption_only_deep_and_repair_fixes_it``), not repeated here.
"""
import time
import urllib.parse

from devtools.processes import child_listening_on, paused
from devtools.proxy import TcpProxy
from devtools.waiting import wait_until

from tests.faults.conftest import dead_letters

# Each fault hits the batch once at least this share of it is in gcp (and before all of it is).
FAULT_AT = 0.2
# Files of the batches of the broker and emulator outages: the emulators copy ~15-25 objects/s on a
# 2-core machine, so 200 files (401 objects) keep each test around a minute, outage included. The
# outages of SQS and Pub/Sub hold up the notifications too, so what arrived in the meantime is
# copied at once after them: half of it is enough.
OUTAGE_BATCH = 200
NOTIFIED_OUTAGE_BATCH = OUTAGE_BATCH // 2
BROKER_DOWN_SECONDS = 5
EMULATOR_DOWN_SECONDS = 15


def fault_point(batch) -> int:
    return int(batch.total * FAULT_AT)


def held_batch(batch_factory, files: int, **options):
    """A batch of which half the files are written at once and the rest only once ``release()``d,
    after the fault is in place: the fault cannot miss the batch, however fast it is copied
    (``fault_point`` is well inside the first half)."""
    return batch_factory(files=files, **options).start_writing(hold_after=files // 2)


def assert_mid_batch(batch, arrived: int) -> None:
    # A fault after the last copy would prove nothing; a held batch makes sure it cannot be.
    assert arrived < batch.total, f"the whole batch ({batch.total}) had arrived before the fault"


def test_replicator_killed_mid_batch_then_restarted_loses_nothing(replicator, batch_factory):
    # Three 20 MiB blobs among the small ones (at 10, 20 and 30% of the batch): the kill aims at one
    # of their copies streamed in parts, whose parts are visible under tmp/compose/ in gcp until
    # they are composed; else it falls once 30% of the batch has arrived.
    batch = batch_factory(files=500, large=3).start_writing(hold_after=400)
    gcp, bucket = batch.stores["gcp"], batch.buckets["gcp"]
    stale = set(gcp.list_keys(bucket, "tmp/compose/"))  # an earlier kill's leftovers, if any
    started = time.monotonic()
    batch.wait_arrived(batch.total // 10, timeout=90, replicator=replicator)

    def parts_in_flight():
        return set(gcp.list_keys(bucket, "tmp/compose/")) - stale

    deadline, checked = time.monotonic() + 90, 0.0
    while not parts_in_flight():
        if time.monotonic() - checked > 1:
            checked = time.monotonic()
            if len(batch.arrived()) >= 3 * batch.total // 10:
                break
        assert time.monotonic() < deadline, "the batch stopped arriving before the kill"
        replicator.assert_alive("before the kill")
        time.sleep(0.05)

    replicator.process.kill()  # SIGKILL: no shutdown, in-flight copies and unacked messages abandoned
    arrived = len(batch.arrived())
    assert_mid_batch(batch, arrived)
    batch.release()
    # Parts of a composite upload the kill interrupted stay under tmp/compose/ (documented: a
    # lifecycle rule removes them in real buckets); the copy is redone from the start.
    orphans = len(parts_in_flight())
    replicator.start()

    batch.wait_all_arrived(timeout=120, replicator=replicator)
    took = time.monotonic() - started
    batch.assert_nothing_lost()
    assert dead_letters(replicator.amqp_uri) == 0
    print(f"killed at {arrived}/{batch.total} arrived ({orphans} parts of an interrupted composite copy left in "
          f"gcp tmp/compose/); all {batch.total} verified {took:.1f}s after the first write")


def test_rabbitmq_restarted_mid_batch_the_replicator_reconnects_and_loses_nothing(replicator, batch_factory,
                                                                                  system_broker):
    batch = held_batch(batch_factory, OUTAGE_BATCH)
    started = time.monotonic()
    batch.wait_arrived(fault_point(batch), timeout=90, replicator=replicator)

    # The whole broker goes away (every connection closed, nothing answers) while copies, their
    # acks, the bridge's dispatches and retries are in flight. What the bridge had already put on
    # the bus waits in the durable queue (persistent messages); what is written meanwhile (the
    # held half of the batch) is notified to SQS, but the bridge cannot dispatch it until the
    # broker is back.
    system_broker.stop_app()
    down_at = time.monotonic()
    arrived = len(batch.arrived())
    assert_mid_batch(batch, arrived)
    batch.release()
    batch.wait_written(timeout=60)
    time.sleep(max(0.0, BROKER_DOWN_SECONDS - (time.monotonic() - down_at)))
    replicator.assert_alive("while RabbitMQ was down")
    system_broker.start_app()
    system_broker.ensure_up()
    outage = time.monotonic() - started

    # No restart of the replicator: it must reconnect by itself, its consumer and its bridge alike.
    batch.wait_all_arrived(timeout=150, replicator=replicator)
    took = time.monotonic() - started
    replicator.assert_alive("after RabbitMQ came back")
    batch.assert_nothing_lost()
    assert dead_letters(replicator.amqp_uri) == 0
    print(f"broker stopped at {arrived}/{batch.total} arrived, {batch.files - batch.hold_after} files more written "
          f"while it was down, "
          f"back {outage:.1f}s after the first write; all verified after {took:.1f}s; the replicator logged "
          f"{replicator.count('Connection to broker lost')} lost broker connections")


def test_gcs_hung_for_15s_mid_batch_replication_catches_up(replicator, batch_factory, local_cloud_settings):
    # The session's fake-gcs-server, found among this process's own children by its port (never a
    # `make up` stack's). Stopped, it still accepts connections (the kernel does) but answers
    # nothing: every request to it hangs, as behind a black-holed network path.
    gcs = child_listening_on(urllib.parse.urlsplit(local_cloud_settings["DSS_GCS_ENDPOINT"]).port)
    batch = held_batch(batch_factory, OUTAGE_BATCH)
    started = time.monotonic()
    arrived = batch.wait_arrived(fault_point(batch), timeout=90, replicator=replicator)
    assert_mid_batch(batch, arrived)  # counted just before: gcp cannot be listed while it is stopped

    with paused(gcs):
        batch.release()  # the rest is written into aws and notified while its copies hang
        time.sleep(EMULATOR_DOWN_SECONDS)
        replicator.assert_alive("while GCS hung")

    batch.wait_all_arrived(timeout=150, replicator=replicator)
    took = time.monotonic() - started
    batch.assert_nothing_lost()
    assert dead_letters(replicator.amqp_uri) == 0
    print(f"GCS hung at {arrived}/{batch.total} arrived for {EMULATOR_DOWN_SECONDS}s; all {batch.total} "
          f"verified after {took:.1f}s; {replicator.count('retrying in')} broker retries")


def replicate_through_an_outage(replicator_factory, batch_factory, env: dict, what: str, cut: list[TcpProxy],
                                cut_once_failing: tuple[TcpProxy, ...] = (), source: str = "aws",
                                files: int = OUTAGE_BATCH):
    """The replicator reaches ``what`` through the proxies ``cut`` (and ``cut_once_failing``;
    ``env``: its settings naming their ``url`` or ``address``), which go down for
    ``EMULATOR_DOWN_SECONDS`` once a share of a batch written into ``source`` has arrived in the
    other replica: open connections reset, new ones refused, as when the endpoint crashed or its
    address is unreachable. The held rest of the batch is written once ``cut`` is down; the proxies
    ``cut_once_failing`` go down only after a copy has failed on the first cut (a retry logged), so
    that the outage surely hits copies in flight. The stores' data and their notifications are
    untouched (the test and the emulators reach each other directly). Afterwards the whole batch
    arrives, verified, with nothing dead-lettered, and without restarting the replicator. Returns
    (the replicator, a report line)."""
    proxies = [*cut, *cut_once_failing]
    try:
        replicator = replicator_factory(**env)
        batch = held_batch(batch_factory, files, source=source)
        started = time.monotonic()
        batch.wait_arrived(fault_point(batch), timeout=90, replicator=replicator)

        for proxy in cut:
            proxy.down()
        down_at = time.monotonic()
        arrived = len(batch.arrived())
        assert_mid_batch(batch, arrived)
        batch.release()
        if cut_once_failing:
            wait_until(lambda: replicator.count("retrying in"), EMULATOR_DOWN_SECONDS,
                       f"a copy failing while {what} refused connections", on_timeout=replicator.process.tail)
            for proxy in cut_once_failing:
                proxy.down()
        # The outage itself: its length is what is under test.
        time.sleep(max(0.0, EMULATOR_DOWN_SECONDS - (time.monotonic() - down_at)))
        replicator.assert_alive(f"while {what} refused connections")
        during = len(batch.arrived()) - arrived
        for proxy in proxies:
            proxy.up()

        batch.wait_all_arrived(timeout=150, replicator=replicator)
        took = time.monotonic() - started
    finally:
        for proxy in proxies:
            proxy.close()
    batch.assert_nothing_lost()
    retries = replicator.count("retrying in")
    assert dead_letters(replicator.amqp_uri) == 0, (
        f"dead letters after a {EMULATOR_DOWN_SECONDS}s outage of {what} ({retries} retries):\n"
        f"{replicator.process.tail()}")
    return replicator, (f"{what} refused connections at {arrived}/{batch.total} arrived for {EMULATOR_DOWN_SECONDS}s "
            f"({during} arrived meanwhile); all {batch.total} verified after {took:.1f}s; {retries} broker retries; "
            f"{sum(proxy.accepted for proxy in proxies)} connections through the proxies")


def proxy_to(url: str) -> TcpProxy:
    target = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    return TcpProxy(target.hostname, target.port).up()


def test_gcs_refusing_connections_for_15s_mid_batch_replication_catches_up(replicator_factory, batch_factory,
                                                                           local_cloud_settings):
    # The copies fail (after the GCS client's own 5 s of retries) and go round the broker's delay
    # queues; this test still lists the bucket directly.
    proxy = proxy_to(local_cloud_settings["DSS_GCS_ENDPOINT"])
    replicator, report = replicate_through_an_outage(replicator_factory, batch_factory,
                                                     {"DSS_GCS_ENDPOINT": proxy.url}, "GCS", [proxy])
    assert replicator.count("retrying in") > 0, f"the outage failed no copy: it tested nothing ({report})"
    print(report)


def test_s3_and_sqs_refusing_connections_for_15s_mid_batch_replication_catches_up(
        replicator_factory, batch_factory, local_cloud_settings):
    # moto serves both S3 and SQS on one endpoint, reached here through a proxy each: the outage
    # takes both from the replicator, the source of the copies and the queue of their
    # notifications. S3 goes first, so that the notifications of the rest of the batch still reach
    # the bridge and their copies fail on the source (they go round the delay queues); then SQS:
    # the bridge's long polls fail and are retried, and what the bucket notified meanwhile waits in
    # SQS: its messages were never deleted.
    # A refused S3 connection fails an attempt at once (the GCS client retries for 5 s first), so
    # the attempts of a copy are spent as fast as the delays allow: the schedule here outlasts the
    # outage (1+2+4+8+16 s), as the default one (about 76 min) outlasts a real one. With the other
    # tests' 1,2,4 s, copies in flight are dead-lettered after 7 s of outage.
    assert local_cloud_settings["DSS_SQS_ENDPOINT"] == local_cloud_settings["DSS_S3_ENDPOINT"]
    s3, sqs = proxy_to(local_cloud_settings["DSS_S3_ENDPOINT"]), proxy_to(local_cloud_settings["DSS_SQS_ENDPOINT"])
    replicator, report = replicate_through_an_outage(
        replicator_factory, batch_factory, {"DSS_S3_ENDPOINT": s3.url, "DSS_SQS_ENDPOINT": sqs.url,
                                            "DSS_REPLICATION_RETRY_DELAYS": "1,2,4,8,16"}, "S3 and SQS",
        [s3], cut_once_failing=(sqs,), files=NOTIFIED_OUTAGE_BATCH)
    assert replicator.count("retrying in") > 0, f"the outage failed no copy: it tested nothing ({report})"
    assert replicator.count("cannot fetch notifications") > 0, f"the bridge never missed SQS ({report})"
    print(report)


def test_pubsub_refusing_connections_for_15s_mid_batch_replication_catches_up(
        replicator_factory, batch_factory, local_cloud_settings, pubsub_emulator_host):
    # A batch written into gcp reaches the replicator only through the GCS bucket's Pub/Sub
    # notifications; the outage cuts the replicator's pulls and acknowledgements. fake-gcs-server
    # publishes to the emulator directly, so the notifications of what is written meanwhile wait in
    # the subscription; those pulled but not acknowledged come again after their deadline.
    proxy = proxy_to(pubsub_emulator_host)
    replicator, report = replicate_through_an_outage(replicator_factory, batch_factory,
                                                     {"DSS_PUBSUB_EMULATOR_HOST": proxy.address}, "Pub/Sub", [proxy],
                                                     source="gcp", files=NOTIFIED_OUTAGE_BATCH)
    assert replicator.count("cannot fetch notifications") > 0, f"the bridge never missed Pub/Sub ({report})"
    print(report)
