"""A sampling CPU profiler for the store's services, loaded by Python at start-up when this folder is
on PYTHONPATH (`bench/small_files.py --profile` puts it there for the stack it starts).

It does nothing unless DSS_BENCH_PROFILE_DIR is set and the process is `nameko run services.<name>...`.
Then SIGUSR1 starts sampling (every 2 ms of the process's CPU time, ITIMER_PROF) and SIGUSR2 stops it
and writes the samples to DSS_BENCH_PROFILE_DIR/<name>-<pid>.folded: one line per distinct stack,
root first, frames as `<module path>:<function>` joined by `;`, then the count (the "folded" format
that flame graph tools read). Samples are of the interrupted green thread's stack: under eventlet
that is the one using the CPU.

Bench tooling only: not part of the installed package, never on a service's path outside a benchmark.
"""
import os
import signal
import sys

SAMPLE_SECONDS = 0.002


def _service_name(argv: list[str]) -> str | None:
    if not argv or "nameko" not in os.path.basename(argv[0]):
        return None
    for arg in argv:
        if arg.startswith("services.") and arg.count(".") >= 2:
            return arg.split(".")[1]
    return None


def _label(filename: str, cache: dict) -> str:
    label = cache.get(filename)
    if label is None:
        marker = "site-packages" + os.sep
        at = filename.rfind(marker)
        if at >= 0:
            label = filename[at + len(marker):]
        elif filename.startswith(_ROOT):
            label = filename[len(_ROOT):].lstrip(os.sep)
        else:
            label = filename
        cache[filename] = label
    return label


def _install(directory: str, service: str) -> None:
    counts: dict[str, int] = {}
    labels: dict[str, str] = {}

    def sample(_signum, frame):
        parts = []
        while frame is not None:
            code = frame.f_code
            parts.append(f"{_label(code.co_filename, labels)}:{code.co_name}")
            frame = frame.f_back
        stack = ";".join(reversed(parts))
        counts[stack] = counts.get(stack, 0) + 1

    def start(_signum, _frame):
        counts.clear()
        signal.signal(signal.SIGPROF, sample)
        signal.setitimer(signal.ITIMER_PROF, SAMPLE_SECONDS, SAMPLE_SECONDS)

    def stop(_signum, _frame):
        signal.setitimer(signal.ITIMER_PROF, 0)
        path = os.path.join(directory, f"{service}-{os.getpid()}.folded")
        with open(path + ".part", "w") as out:
            for stack, count in counts.items():
                out.write(f"{stack} {count}\n")
        os.replace(path + ".part", path)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_DIRECTORY = os.environ.get("DSS_BENCH_PROFILE_DIR")
_SERVICE = _service_name(sys.argv) if _DIRECTORY else None
if _SERVICE:
    _install(_DIRECTORY, _SERVICE)
