"""The services' sampling profiler of the benchmarks (bench/sampling, bench/_service_profiles.py): a
`nameko run services.*` process started with its environment samples between SIGUSR1 and SIGUSR2
and writes folded stacks; the stacks are sorted into kinds of work and scaled to CPU per file."""
from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import psutil
import pytest

from bench._service_profiles import REST, ServiceProfiles, categorise, read_folded, totals
from devtools.waiting import wait_until

# A stand-in for `nameko run --config ... services.fake.service`: the sampler only looks at argv.
BUSY_SCRIPT = textwrap.dedent("""\
    import hashlib, sys
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    def spin():
        while True:
            hashlib.sha256(b"x" * 4096).digest()
    spin()
""")


def test_stacks_are_sorted_into_the_first_matching_kind_of_work():
    publish_in_http = "eventlet/wsgi.py:handle;services/gateway/service.py:put;nameko/amqp/publish.py:publish;amqp/x.py:y"
    assert categorise(publish_in_http) == "bus: publish (events, RPC calls and replies)"
    assert categorise("services/replicator/replication.py:object;botocore/client.py:_make_api_call") == \
        "S3, SQS (botocore)"
    assert categorise("shared/blobstore/gcs.py:put_bytes;google/cloud/storage/blob.py:upload_from_string;"
                      "requests/sessions.py:request") == "GCS (google-cloud-storage)"
    assert categorise("eventlet/greenthread.py:main;nameko/containers.py:_run_worker") == REST


def test_breakdown_scales_each_service_by_its_measured_cpu(tmp_path):
    (tmp_path / "files-11.folded").write_text("a.py:f;botocore/client.py:call 3\nnameko/x.py:w 1\n")
    (tmp_path / "files-12.folded").write_text("a.py:f;botocore/client.py:call 1\n")  # a second instance
    (tmp_path / "gateway-13.folded").write_text("eventlet/wsgi.py:handle 2\nnot a line\n")
    assert read_folded(tmp_path / "gateway-13.folded") == {"eventlet/wsgi.py:handle": 2}
    breakdown = ServiceProfiles(tmp_path).breakdown({"files": 0.010, "gateway": 0.002})
    assert breakdown == {"files": {"S3, SQS (botocore)": 8.0, REST: 2.0}, "gateway": {"HTTP server (gateway)": 2.0}}
    assert totals(breakdown) == {"S3, SQS (botocore)": 8.0, REST: 2.0, "HTTP server (gateway)": 2.0}


@pytest.fixture
def service_stand_in(tmp_path):
    """A busy process whose argv is a nameko service's, started with the profiler's environment."""
    script = tmp_path / "bin" / "nameko"
    script.parent.mkdir()
    script.write_text(BUSY_SCRIPT)
    profiles = ServiceProfiles(tmp_path / "profile")
    process = subprocess.Popen([sys.executable, str(script), "run", "--config", "x.yml", "services.fake.service"],
                               env={**profiles.environment(), "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE)
    try:
        assert process.stdout.readline() == b"ready\n"  # the sampler is installed before any of the script runs
        yield profiles, psutil.Process(process.pid)
    finally:
        process.kill()
        process.wait()


def test_a_service_process_samples_between_the_two_signals(service_stand_in):
    profiles, process = service_stand_in
    profiles.start([process])
    cpu_before = sum(process.cpu_times()[:2])
    wait_until(lambda: sum(process.cpu_times()[:2]) - cpu_before > 0.3, timeout=30, what="0.3 s of CPU sampled")
    profiles.stop([process])
    [written] = list(profiles.directory.glob("*.folded"))
    assert written.name == f"fake-{process.pid}.folded"
    samples = read_folded(written)
    assert sum(samples.values()) >= 50  # 0.3 s at one sample per 2 ms of CPU, with room for a loaded machine
    # The script's own frames, root first (hashlib is C: no frame of its own).
    script = process.cmdline()[1]
    assert max(samples, key=samples.get) == f"{script}:<module>;{script}:spin"
    assert process.is_running()  # both signals handled, not fatal


def test_other_processes_get_no_signal(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        profiles = ServiceProfiles(tmp_path)
        profiles.start([psutil.Process(other.pid)])  # SIGUSR1 would end it: it has no sampler
        profiles.stop([psutil.Process(other.pid)], timeout=0.5)
        assert other.poll() is None
        assert not list(tmp_path.glob("*.folded"))
    finally:
        other.kill()
        other.wait()
