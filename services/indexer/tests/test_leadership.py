"""Several indexer instances on one index directory: one leads, the others stand by and take over
when it ends (services/indexer/leadership.py)."""
import subprocess
import sys
from urllib.parse import quote

import eventlet
import requests
from nameko.standalone.rpc import ServiceRpcProxy

from devtools.waiting import queue_state, wait_until
from ops import status
from shared.entrypoints import STANDBY_QUEUE_PREFIX
from ops.broker import vhost_of
from services.indexer.leadership import LeaderLock
from services.indexer.service import IndexerService

def standby_connections(management: str, vhost: str) -> list[str]:
    """The broker connections consuming an indexer's standby queue in ``vhost``."""
    consumers = requests.get(f"{management}/api/consumers/{quote(vhost, safe='')}", timeout=10).json()
    # channel_details is [] for a consumer whose channel is going away
    return [c["channel_details"]["connection_name"] for c in consumers
            if c["queue"]["name"].startswith(f"{STANDBY_QUEUE_PREFIX}indexer.") and c["channel_details"]]


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
        polls = []
        waiting = eventlet.spawn(standby.acquire, while_waiting=lambda: polls.append(1))
        wait_until(lambda: len(polls) >= 3, 10, "the standby polling the held lock")
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
                                                                              tmp_path, request):
    config = {**service_config, "DSS_INDEX_DIR": str(tmp_path / "index")}
    first = container_factory(IndexerService, config)
    first.start()
    second = container_factory(IndexerService, config)
    starting = eventlet.spawn(second.start)
    management = request.config.getoption("RABBIT_API_URI").rstrip("/")
    vhost = vhost_of(config["AMQP_URI"])
    wait_until(lambda: standby_connections(management, vhost), 20, "the second indexer standing by")
    assert not starting.dead, "the second indexer started beside the leader"
    amqp_uri = config["AMQP_URI"]
    assert queue_state(amqp_uri, "rpc-indexer")[1] == 1
    handler_queue = "evt-bundles-bundle_created--indexer.handle_bundle_created"
    assert queue_state(amqp_uri, handler_queue)[1] == 1

    first.kill()  # as if its process died: its lock goes
    with eventlet.Timeout(30):
        starting.wait()
    wait_until(lambda: queue_state(amqp_uri, handler_queue)[1] == 1, 30, "the standby consuming")
    with ServiceRpcProxy("indexer", config, timeout=30) as indexer:
        assert indexer.reindex_status("aws")["state"] == "idle"


def test_two_indexer_processes_the_leader_killed_the_standby_consumes(rabbit_config, local_cloud_settings, tmp_path,
                                                                      request):
    """As `make up SCALE=2` runs them: two `nameko run` indexers on one DSS_INDEX_DIR; kill -9 the
    one consuming, and the other consumes within seconds. dss-ops status sees both, the standby as such."""
    import os

    from devtools.processes import ServiceProcess

    env = {name: value for name, value in os.environ.items()
           if not name.startswith("DSS_") and name not in ("AMQP_URI", "METRICS_PORT")}
    env.update({name: str(value) for name, value in local_cloud_settings.items()})
    env.update({"AMQP_URI": rabbit_config["AMQP_URI"], "DSS_INDEXER_METRICS_PORT": "0",
                "DSS_INDEX_DIR": str(tmp_path / "index"), "DSS_LOG_LEVEL": "INFO"})
    amqp_uri = rabbit_config["AMQP_URI"]
    processes = [ServiceProcess("indexer", env, tmp_path / f"indexer-{n}.log") for n in (1, 2)]

    def consumers():
        try:
            state = queue_state(amqp_uri, "rpc-indexer")
        except OSError:
            return 0
        return state[1] if state else 0

    def instances(count):
        """The indexer instances dss-ops status lists, leaders first, once there are ``count`` and
        each has its pid (a connection the management API lists a moment before its details)."""
        found = status.summarise(status.fetch([request.config.getoption("RABBIT_API_URI")],
                                              vhost_of(amqp_uri))[1])["services"].get("indexer", [])
        if len(found) != count or any(i["pid"] is None for i in found):
            return None
        assert sum(i["standby"] for i in found) == count - 1
        return sorted(found, key=lambda i: i["standby"])

    def wait(predicate, what, timeout=60):
        wait_until(predicate, timeout, what, on_timeout=lambda: "\n".join(p.tail(20) for p in processes))

    try:
        processes[0].start()
        wait(lambda: consumers() == 1, "the first indexer consuming")
        processes[1].start()
        wait(lambda: "standing by" in processes[1].log(), "the second indexer standing by")
        [leading, standing_by] = wait_until(lambda: instances(2), 30, "both indexers in dss-ops status")
        assert (leading["pid"], standing_by["pid"]) == (processes[0].pid, processes[1].pid)
        assert consumers() == 1 and processes[1].alive
        processes[0].kill()
        wait(lambda: "took over" in processes[1].log() and consumers() == 1, "the standby taking over")
        assert processes[1].alive
        [leading] = wait_until(lambda: instances(1), 30, "the new leader alone in dss-ops status")
        assert leading["pid"] == processes[1].pid
    finally:
        for process in processes:
            process.stop()


def test_a_standby_shows_itself_again_after_its_broker_connection_drops(rabbit_config, request):
    from services.indexer.leadership import StandbyPresence

    management = request.config.getoption("RABBIT_API_URI").rstrip("/")
    vhost = vhost_of(rabbit_config["AMQP_URI"])
    presence = StandbyPresence(rabbit_config["AMQP_URI"], "indexer")
    try:
        presence.keep()
        [first] = wait_until(lambda: standby_connections(management, vhost), 20, "the standby's queue consumed")
        dropped = requests.delete(f"{management}/api/connections/{quote(first, safe='')}", timeout=10)
        assert dropped.status_code == 204
        wait_until(lambda: first not in standby_connections(management, vhost), 20, "the dropped connection gone")

        def reopened():
            presence.keep()  # the first call after the drop notices it, a later one reopens
            return [c for c in standby_connections(management, vhost) if c != first]
        [second] = wait_until(reopened, 20, "the standby's queue consumed again")
        presence.close()
        wait_until(lambda: not standby_connections(management, vhost), 20, "the presence gone once closed")
    finally:
        presence.close()
