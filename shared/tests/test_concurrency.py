"""``shared.concurrency.SingleFlight``: one run per key, its result shared; its failure shared or not."""
import eventlet
import pytest

from shared.concurrency import SingleFlight


def _slow(runs: list, result, seconds: float = 0.02):
    def run():
        runs.append(result)
        eventlet.sleep(seconds)
        if isinstance(result, Exception):
            raise result
        return result
    return run


def test_concurrent_callers_share_one_run_and_a_finished_run_is_forgotten():
    flights, runs = SingleFlight(), []
    waiters = [eventlet.spawn(flights.run, "k", _slow(runs, "first")) for _ in range(3)]
    assert [waiter.wait() for waiter in waiters] == ["first"] * 3 and runs == ["first"]
    assert not flights.running("k") and flights.run("k", lambda: "again") == "again"


def test_waiters_share_the_error_by_default():
    flights, runs = SingleFlight(), []
    failing = [eventlet.spawn(flights.run, "k", _slow(runs, ValueError("boom"))) for _ in range(2)]
    for waiter in failing:
        with pytest.raises(ValueError):
            waiter.wait()
    assert len(runs) == 1 and not flights.running("k")


def test_without_shared_failures_a_waiter_runs_for_itself_after_the_first_run_fails():
    flights, runs = SingleFlight(share_failures=False), []
    first = eventlet.spawn(flights.run, "f", _slow(runs, RuntimeError("boom"), 0.05))
    eventlet.sleep(0)
    second = eventlet.spawn(flights.run, "f", _slow(runs, "recovered"))
    assert second.wait() == "recovered"
    with pytest.raises(RuntimeError):
        first.wait()
    assert len(runs) == 2 and not flights.running("f")
