"""The notifier on the real broker against both storage emulators, called over real RPC, fed
``bundle_indexed`` events dispatched here as the indexer would, delivering to a real local HTTP
receiver that verifies both HMAC signatures (``devtools.receivers.Receiver``)."""
import json
import pathlib

import pytest
from nameko.standalone.events import event_dispatcher
from nameko.standalone.rpc import ServiceRpcProxy
from nameko.testing.services import entrypoint_waiter
from nameko.testing.utils import get_container

from shared import events
from shared.bundle_documents import event_document
from shared.config import Settings
from shared.exceptions import Forbidden, InvalidParameter, NotAcceptable, NotFound
from shared.identifiers import new_uuid, new_version
from shared.retry import DEAD_SUFFIX, peek_dead_letters
from shared.search import ElasticsearchBadRequest
from shared.storage import open_replicas
from devtools.waiting import queue_state, record_settled_successes, wait_until

from services.notifier.delivery import ATTEMPT_HEADER
from services.notifier.service import NotifierService
from services.notifier.subscriptions import SubscriptionCache, SubscriptionStoreAPI
from services.notifier.tests.conftest import KEY_ID, SECRET

OWNER = {"email": "owner@example.org", "groups": ["dbio"], "is_admin": False}
STRANGER = {"email": "stranger@example.org", "groups": ["dbio"], "is_admin": False}
DELIVERY_QUEUE = "evt-notifier-subscription_matched--notifier.handle_subscription_matched"
HEART = {"query": {"bool": {"must": [{"term": {"files.cell_suspension_json.organ": "heart"}}]}}}


class Notifier:
    """The running notifier, its RPC proxy, and a stand-in for the indexer's events."""

    def __init__(self, config, runner, rpc):
        self.config = config
        self.container = get_container(runner, NotifierService)
        self.rpc = rpc
        self._dispatch = event_dispatcher(config)

    def subscribe(self, callback_url, caller=OWNER, replica="aws", **fields):
        return self.rpc.put_subscription(replica, {"callback_url": callback_url, **fields}, caller)["uuid"]

    def bundle_indexed(self, event_type="CREATE", organ="heart", replica="aws"):
        """Dispatch a bundle_indexed event as the indexer does; its payload."""
        uuid, version = new_uuid(), new_version()
        document = event_document(event_type, uuid, version, {"version": version, "files": []},
                                  {"cell_suspension_json": [{"organ": organ, "count": 3}]})
        event = {"replica": replica, "uuid": uuid, "version": version, "event_type": event_type,
                 "event_timestamp": "2026-11-25T01:02:03.000000Z", "document": document}
        self._dispatch("indexer", events.BUNDLE_INDEXED, event)
        return event

    def matched(self, event_type="CREATE", organ="heart"):
        """Dispatch a bundle_indexed event and wait until it was matched: (event, subscription ids)."""
        with entrypoint_waiter(self.container, "handle_bundle_indexed", timeout=20) as waited:
            event = self.bundle_indexed(event_type, organ)
        return event, waited.get()["matched"]


@pytest.fixture
def notifier(notifier_config, runner_factory):
    runner = runner_factory(notifier_config, NotifierService)
    runner.start()
    with ServiceRpcProxy("notifier", notifier_config, timeout=30) as rpc:
        yield Notifier(notifier_config, runner, rpc)


def attempts(requests):
    return [request.headers[ATTEMPT_HEADER.lower()] for request in requests]


def test_subscriptions_over_rpc_arrive_typed_and_without_secrets(notifier, receiver):
    uuid = notifier.subscribe(receiver.url(), hmac_secret_key=SECRET, hmac_key_id=KEY_ID, es_query=HEART)
    shown = notifier.rpc.get_subscription("aws", uuid, OWNER)
    assert shown["uuid"] == uuid and shown["es_query"] == HEART and "hmac_secret_key" not in shown
    assert notifier.rpc.list_subscriptions("aws", OWNER, "elasticsearch") == {"subscriptions": [shown]}
    assert notifier.rpc.list_subscriptions("aws", OWNER) == {"subscriptions": []}
    with pytest.raises(Forbidden):
        notifier.rpc.get_subscription("aws", uuid, STRANGER)
    with pytest.raises(ElasticsearchBadRequest):
        notifier.subscribe(receiver.url(), es_query={"query": {"percolate": {}}})
    with pytest.raises(InvalidParameter):
        notifier.subscribe("http://192.168.1.1/hook")
    assert notifier.rpc.health()["ok"] is True
    assert "timeDeleted" in notifier.rpc.delete_subscription("aws", uuid, OWNER)
    with pytest.raises(NotFound):
        notifier.rpc.get_subscription("aws", uuid, OWNER)


def test_the_limit_per_owner_is_406(notifier_config, runner_factory, receiver):
    runner = runner_factory({**notifier_config, "DSS_NOTIFY_MAX_SUBSCRIPTIONS": 2}, NotifierService)
    runner.start()
    with ServiceRpcProxy("notifier", notifier_config, timeout=30) as rpc:
        for _ in range(2):
            rpc.put_subscription("gcp", {"callback_url": receiver.url()}, OWNER)
        with pytest.raises(NotAcceptable) as raised:
            rpc.put_subscription("gcp", {"callback_url": receiver.url()}, OWNER)
    assert raised.value.error_code == "too_many_subscriptions"


def test_a_matching_bundle_is_notified_signed_with_its_attachments(notifier, receiver):
    signed = notifier.subscribe(receiver.url("/hook?channel=a"), hmac_secret_key=SECRET, hmac_key_id=KEY_ID,
                                jmespath_query="files.cell_suspension_json[0].organ == 'heart'",
                                attachments={"count": {"type": "jmespath",
                                                       "expression": "files.cell_suspension_json[0].count"}})
    form = notifier.subscribe(receiver.url("/form"), method="PUT", encoding="multipart/form-data",
                              form_fields={"project": "p1"}, payload_form_field="notification",
                              jmespath_query="event_type == 'CREATE'")
    event, matched = notifier.matched()
    assert sorted(matched) == sorted([signed, form])
    wait_until(lambda: len(receiver.accepted()) == 2, 20, "both notifications delivered")

    by_path = {request.path: request for request in receiver.requests}
    hook = by_path["/hook?channel=a"]
    assert hook.key_ids == (KEY_ID, KEY_ID)  # both signatures verified by the receiver
    assert attempts([hook]) == ["1"]
    payload = hook.payload()
    assert payload["subscription_id"] == signed and payload["event_type"] == "CREATE"
    assert payload["match"] == {"bundle_uuid": event["uuid"], "bundle_version": event["version"]}
    assert payload["bundle_url"] == (f"https://dss.example/v1/bundles/{event['uuid']}?version={event['version']}"
                                     "&replica=aws")
    assert payload["attachments"] == {"count": 3}
    assert payload["jmespath_query"] == "files.cell_suspension_json[0].organ == 'heart'"
    assert SECRET not in hook.body.decode()

    put = by_path["/form"]
    assert put.method == "PUT" and put.key_ids is None  # no key: unsigned
    fields = put.form()
    assert fields["project"] == "p1" and json.loads(fields["notification"])["subscription_id"] == form

    # A liver is no heart: only the CREATE subscription fires.
    _, matched = notifier.matched(organ="liver")
    assert matched == [form]


def test_a_failing_receiver_gets_one_accepted_delivery_after_retries(notifier, receiver, monkeypatch):
    succeeded = record_settled_successes(monkeypatch)
    notifier.subscribe(receiver.url("/flaky/2/500"), hmac_secret_key=SECRET, hmac_key_id=KEY_ID)
    notifier.matched()
    wait_until(lambda: receiver.accepted(), 20, "the third attempt accepted")
    # The delivery acknowledged as a success, so neither retried nor dead-lettered: nothing more comes.
    wait_until(lambda: [queue for queue, _ in succeeded if events.SUBSCRIPTION_MATCHED in queue], 20,
               "the accepted delivery acknowledged")
    assert [request.status for request in receiver.requests] == [500, 500, 200]
    assert attempts(receiver.requests) == ["1", "2", "3"]
    assert len({request.payload()["transaction_id"] for request in receiver.requests}) == 1


def test_a_permanent_failure_is_dead_lettered_at_once(notifier, notifier_config):
    # Made while the policy allowed the private network, delivered after it no longer does.
    permissive = Settings.from_config({**notifier_config, "DSS_NOTIFY_ALLOWED_HOSTS": "10.0.0.0/8"},
                                      environ={})
    store = SubscriptionStoreAPI(open_replicas(permissive), {}, permissive, SubscriptionCache(0))
    uuid = store.create("aws", {"callback_url": "http://10.20.30.40/hook"}, OWNER["email"])["uuid"]

    _, matched = notifier.matched()
    assert matched == [uuid]
    amqp_uri = notifier_config["AMQP_URI"]
    [letter] = wait_until(lambda: peek_dead_letters(amqp_uri, DELIVERY_QUEUE), 20, "a dead letter")
    assert letter["attempts"] == 1 and "callback_url_forbidden_address" in letter["error"]
    assert letter["payload"]["subscription_id"] == uuid
    assert queue_state(amqp_uri, DELIVERY_QUEUE + DEAD_SUFFIX)[0] == 1  # what `dss-ops dead-letters` lists
    assert queue_state(amqp_uri, DELIVERY_QUEUE + ".retry-1s") is None  # never scheduled for a retry


def test_an_elasticsearch_subscription_fires_by_percolation_for_a_matching_create_only(notifier, receiver):
    uuid = notifier.subscribe(receiver.url("/es"), es_query=HEART, hmac_secret_key=SECRET, hmac_key_id=KEY_ID)
    assert notifier.matched(organ="liver")[1] == []
    assert notifier.matched("TOMBSTONE", organ="heart")[1] == []
    event, matched = notifier.matched(organ="heart")
    assert matched == [uuid]
    [request] = wait_until(lambda: receiver.accepted(), 20, "the notification delivered")
    payload = request.payload()
    assert payload["es_query"] == HEART and payload["match"]["bundle_uuid"] == event["uuid"]
    assert request.key_ids == (KEY_ID, KEY_ID)
    assert len(receiver.requests) == 1


def test_a_deleted_subscription_is_not_delivered(notifier, receiver):
    gone = notifier.subscribe(receiver.url("/gone"))
    notifier.rpc.delete_subscription("aws", gone, OWNER)
    assert notifier.matched()[1] == []

    # Deleted while its notification waits for a retry: the retry finds it gone and drops it.
    waiting = notifier.subscribe(receiver.url("/flaky/1/500"))
    dropped = entrypoint_waiter(notifier.container, "handle_subscription_matched", timeout=20,
                                callback=lambda worker_ctx, result, exc_info: exc_info is None and result is None)
    with dropped:
        notifier.matched()
        wait_until(lambda: receiver.requests, 20, "the first attempt")
        notifier.rpc.delete_subscription("aws", waiting, OWNER)
    assert [request.status for request in receiver.requests] == [500]


def test_a_subscription_breaking_the_limits_of_evaluation_is_disabled_and_the_others_delivered(
        notifier_config, runner_factory, receiver):
    # Within the cost model, but more characters than this notifier lets one event build.
    config = {**notifier_config, "DSS_NOTIFY_JMESPATH_MAX_CHARS": 100}
    runner = runner_factory(config, NotifierService)
    runner.start()
    with ServiceRpcProxy("notifier", config, timeout=30) as rpc:
        notifier = Notifier(config, runner, rpc)
        good = notifier.subscribe(receiver.url("/good"), jmespath_query="event_type == 'CREATE'")
        text = notifier.subscribe(receiver.url("/text"),
                                  attachments={"text": {"type": "jmespath", "expression": "to_string(@)"}})
        _, matched = notifier.matched()
        assert matched == [good]
        [delivered] = wait_until(lambda: receiver.accepted(), 20, "the good subscription's notification")
        assert delivered.path == "/good"
        disabled = rpc.get_subscription("aws", text, OWNER)["disabled"]
        assert disabled["code"] == "jmespath_limit_exceeded" and "attachment 'text'" in disabled["reason"]
        assert [s.get("disabled") for s in rpc.list_subscriptions("aws", OWNER)["subscriptions"]
                if s["uuid"] == text] == [disabled]
        # Later events skip it; the good one is notified again.
        assert notifier.matched()[1] == [good]
        wait_until(lambda: len(receiver.accepted()) == 2, 20, "the second notification")
    assert {request.path for request in receiver.requests} == {"/good"}


def test_an_elasticsearch_subscription_whose_percolation_fails_is_disabled_and_the_others_delivered(
        notifier, notifier_config, receiver):
    heart = notifier.subscribe(receiver.url("/es"), es_query=HEART)
    # Stored before a stricter query parser: the bucket's document and the index's entry.
    fuzzy_query = {"query": {"fuzzy": {"files.cell_suspension_json.organ": "hart"}}}
    fuzzy = new_uuid()
    storage = open_replicas(Settings.from_config(notifier_config, environ={}))["aws"]
    document = {**storage.read_json(f"subscriptions/{heart}"), "uuid": fuzzy, "es_query": fuzzy_query,
                "callback_url": receiver.url("/fuzzy")}
    storage.write_json_once(f"subscriptions/{fuzzy}", document)
    entries = pathlib.Path(notifier_config["DSS_INDEX_DIR"]) / "aws" / "subscriptions.json"
    entries.write_text(json.dumps({**json.loads(entries.read_text()), fuzzy: fuzzy_query}))

    _, matched = notifier.matched(organ="heart")
    assert matched == [heart]
    [delivered] = wait_until(lambda: receiver.accepted(), 20, "the notification of the other subscription")
    assert delivered.path == "/es"
    disabled = notifier.rpc.get_subscription("aws", fuzzy, OWNER)["disabled"]
    assert disabled["code"] == "elasticsearch_bad_request" and "fuzzy" in disabled["reason"]
    assert fuzzy not in json.loads(entries.read_text())
