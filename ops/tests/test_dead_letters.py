"""`dss-ops dead-letters list|show|replay` (ops.dead_letters) on the real RabbitMQ, in the test's own
vhost: dead letters parked as shared.retry parks them, listed, shown and replayed."""
import io
import json

from kombu import Connection, Queue

from devtools.waiting import queue_state, wait_until
from ops import dead_letters
from shared.retry import ATTEMPT_HEADER, DEAD_SUFFIX, ERROR_HEADER, dead_letter_queue

QUEUE = "evt-source-thing_happened--worker.handle_thing_happened"


def park(amqp_uri: str, *payloads: dict) -> None:
    """The handler's queue, and ``payloads`` in its dead-letter queue as given up after 3 attempts."""
    with Connection(amqp_uri) as connection:
        channel = connection.channel()
        Queue(QUEUE, durable=True, auto_delete=False)(channel).declare()
        dead_letter_queue(QUEUE)(channel).declare()
        producer = connection.Producer(channel)
        for payload in payloads:
            producer.publish(payload, routing_key=QUEUE + DEAD_SUFFIX, exchange="", serializer="json",
                             headers={ATTEMPT_HEADER: 3, ERROR_HEADER: "Unavailable('still down')"})
        channel.close()


def run(*args, **kwargs) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return dead_letters.run_command(*args, out=out, err=err, **kwargs), out.getvalue(), err.getvalue()


def test_dead_letters_are_listed_shown_and_replayed(rabbit_config, request):
    amqp_uri, management = rabbit_config["AMQP_URI"], request.config.getoption("RABBIT_API_URI")
    park(amqp_uri, {"key": "a"}, {"key": "b"})

    listing = f"       2  {QUEUE}\n"  # the queues of the AMQP URI's vhost only

    def listed():
        code, out, _ = run("list", amqp_uri, management)
        return code == 0 and out == listing

    wait_until(listed, 15, "the dead-letter queue listed with its count")  # the management API's counts lag

    code, out, _ = run("show", amqp_uri, management, QUEUE)
    shown = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [letter["payload"] for letter in shown] == [{"key": "a"}, {"key": "b"}]
    assert {letter["attempts"] for letter in shown} == {3} and "still down" in shown[0]["error"]
    assert queue_state(amqp_uri, QUEUE + DEAD_SUFFIX)[0] == 2  # showing leaves them in place

    code, _, err = run("replay", amqp_uri, management, QUEUE, limit=1)
    assert code == 0 and err == f"replayed 1 message(s) into {QUEUE}\n"
    assert queue_state(amqp_uri, QUEUE)[0] == 1 and queue_state(amqp_uri, QUEUE + DEAD_SUFFIX)[0] == 1


def test_show_and_replay_need_the_queue(rabbit_config, request):
    amqp_uri, management = rabbit_config["AMQP_URI"], request.config.getoption("RABBIT_API_URI")
    for action in ("show", "replay"):
        code, out, err = run(action, amqp_uri, management)
        assert code == 2 and out == "" and "needs the handler queue" in err


def test_no_dead_letters_is_said_on_stderr(rabbit_config, request):
    code, out, err = run("list", rabbit_config["AMQP_URI"], request.config.getoption("RABBIT_API_URI"))
    assert (code, out, err) == (0, "", "no dead-letter queues\n")
