"""The checkout service as `make up` runs it (``nameko run``, a process of its own) killed with SIGKILL
in the middle of a bundle checkout job: the job's message was never acknowledged, so the broker
delivers it again to the restarted service, which resumes the job (files already copied and verified
are skipped) and ends it SUCCEEDED with every file in place; the job is never left RUNNING."""
import hashlib
import json
import os
import re
import uuid as uuid_module

from nameko.standalone.rpc import ServiceRpcProxy

from devtools.fakes import store_bundle
from devtools.processes import ServiceProcess
from devtools.waiting import queue_state, wait_until

from services.checkout.bundle_jobs.jobs import job_key

JOB_QUEUE = "evt-checkout-bundle_checkout_requested--checkout.handle_bundle_checkout_requested"
FILES = 240
KILL_AFTER = 40  # files recorded as done: well into the job, far from its end
CALLER = {"email": "user@example.org", "groups": ["dbio"], "is_admin": False}


def start(process: ServiceProcess, amqp_uri: str) -> ServiceProcess:
    """Start it and wait until it consumes the job queue."""
    process.start()

    def consuming():
        assert process.alive, f"the checkout service exited ({process.returncode}):\n{process.tail()}"
        state = queue_state(amqp_uri, JOB_QUEUE)
        return state is not None and state[1] >= 1

    wait_until(consuming, 60, "the checkout service consuming its job queue", on_timeout=process.tail)
    return process


def test_a_job_killed_midway_is_resumed_by_the_restarted_service(service_config, blobstores, dss_settings, tmp_path):
    amqp_uri = service_config["AMQP_URI"]
    store, main = blobstores["aws"], dss_settings.bucket("aws")
    contents = {f"part-{i:03d}.bin": os.urandom(16 * 1024) for i in range(FILES)}
    uuid, version, _ = store_bundle(store, main, contents)
    destination = f"checkout-fault-{uuid_module.uuid4().hex[:12]}"
    store.create_bucket(destination)

    # A `nameko run` process takes its settings from the environment; a developer's own DSS_*
    # must not leak in and point it at a `make up` stack.
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("DSS_") and name not in ("AMQP_URI", "METRICS_PORT")}
    env.update({name: str(value) for name, value in service_config.items() if name.startswith("DSS_")})
    env.update({"AMQP_URI": amqp_uri, "DSS_CHECKOUT_METRICS_PORT": "0", "DSS_CHECKOUT_JOB_CONCURRENCY": "1",
                "DSS_CHECKOUT_JOB_HEARTBEAT": "0.2", "DSS_CHECKOUT_JOB_RETRY_DELAYS": "1,1",
                "DSS_CHECKOUT_DESTINATIONS": "checkout-fault-*"})
    checkout = start(ServiceProcess("checkout", env, tmp_path / "checkout.log"), amqp_uri)
    try:
        with ServiceRpcProxy("checkout", {"AMQP_URI": amqp_uri}, timeout=30) as rpc:
            job_id = rpc.start_bundle_checkout("aws", uuid, version, destination, None, CALLER)["checkout_job_id"]

            def record():
                return json.loads(store.get_bytes(dss_settings.bucket("aws", "checkout"), job_key(job_id)))
            wait_until(lambda: record()["files_done"] >= KILL_AFTER, 30, "the job well under way", interval=0.05,
                       on_timeout=checkout.tail)
            checkout.kill()
            killed = record()
            assert killed["status"] == "RUNNING" and killed["files_done"] < FILES
            wait_until(lambda: queue_state(amqp_uri, JOB_QUEUE) == (1, 0), 10,
                       "the unacknowledged job back in its queue")

            start(checkout, amqp_uri)

            def ended():
                view = rpc.get_checkout_job("aws", job_id)
                return view if view["status"] != "RUNNING" else None
            view = wait_until(ended, 60, "the resumed job ended", interval=0.2, on_timeout=checkout.tail)
    finally:
        checkout.stop()

    assert view == {"status": "SUCCEEDED", "location": f"s3://{destination}/bundles/{uuid}.{version}/"}
    assert record()["attempts"] == 2 and record()["files_done"] == FILES
    prefix = f"bundles/{uuid}.{version}/"
    assert sorted(store.list_keys(destination, prefix)) == sorted(prefix + name for name in contents)
    for name, data in contents.items():
        assert hashlib.sha256(store.get_bytes(destination, prefix + name)).digest() == hashlib.sha256(data).digest()
    [resumed] = re.findall(r"this run copied (\d+) of the (\d+) files", checkout.log())
    assert int(resumed[1]) == FILES and int(resumed[0]) <= FILES - killed["files_done"], resumed
    assert queue_state(amqp_uri, JOB_QUEUE) == (0, 0)
