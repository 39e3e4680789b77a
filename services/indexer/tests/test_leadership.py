"""Several indexer instances on one index directory: one leads, the others stand by and take over
when it ends (services/indexer/leadership.py)."""
import subprocess
import sys
import time

import eventlet
from nameko.standalone.rpc import ServiceRpcProxy

from devtools.waiting import queue_state
from services.indexer.leadership import LeaderLock
from services.indexer.service import IndexerService

HOLDER = """
import sys, time
from services.indexer.leadership import LeaderLock
lock = LeaderLock(sys.argv[1])
assert lock.try_acquire()
print("leading", flush=True)
time.sleep(600)
"""


def test_a_standby_takes_over_when_the_leader_process_is_killed(tmp_path):
    leader = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert leader.stdout.readline().strip() == "leading"
        standby = LeaderLock(tmp_path, poll_seconds=0.1)
        assert not standby.try_acquire()
        waiting = eventlet.spawn(standby.acquire)
        eventlet.sleep(0.5)
        assert not waiting.dead and not standby.held
        leader.kill()  # SIGKILL: no code of the leader runs, the kernel drops its lock
        leader.wait(10)
        with eventlet.Timeout(5):
            waiting.wait()
        assert standby.held
        standby.release()
    finally:
        leader.kill()
        leader.wait(10)


def test_two_indexer_containers_on_one_index_directory_one_consumes_at_a_time(container_factory, service_config,
                                                                              tmp_path):
    config = {**service_config, "DSS_INDEX_DIR": str(tmp_path / "index")}
    first = container_factory(IndexerService, config)
    first.start()
    second = container_factory(IndexerService, config)
    starting = eventlet.spawn(second.start)
    eventlet.sleep(1.5)
    assert not starting.dead, "the second indexer started beside the leader"
    amqp_uri = config["AMQP_URI"]
    assert queue_state(amqp_uri, "rpc-indexer")[1] == 1
    handler_queue = "evt-bundles-bundle_created--indexer.handle_bundle_created"
    assert queue_state(amqp_uri, handler_queue)[1] == 1

    first.kill()  # as if its process died: its lock goes
    with eventlet.Timeout(30):
        starting.wait()
    deadline = time.monotonic() + 30
    while queue_state(amqp_uri, handler_queue)[1] != 1:
        assert time.monotonic() < deadline, "the standby never consumed"
        eventlet.sleep(0.2)
    with ServiceRpcProxy("indexer", config, timeout=30) as indexer:
        assert indexer.reindex_status("aws")["state"] == "idle"
