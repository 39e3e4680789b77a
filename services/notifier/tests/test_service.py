"""Unit tests of the notifier: the service built with worker_factory over in-memory buckets
(``devtools.fakes.MemoryBlobStore``) and real embedded search indexes in a temporary directory,
so only the clouds are faked; the subscription store, matching and percolation are real. Webhook
delivery is mocked here (its rules are tested in test_delivery.py), except where
its outcome metrics are checked against a local receiver."""
import json
import logging

import pytest
from nameko.testing.services import worker_factory
from prometheus_client import REGISTRY

from shared import events
from shared.blobstore import BlobStoreUnavailable
from shared.bundle_documents import event_document
from shared.config import Settings
from shared.exceptions import Forbidden, InvalidParameter, NotAcceptable, NotFound, Unauthorized, Unavailable
from shared.identifiers import new_uuid, new_version
from shared.search import ElasticsearchBadRequest, open_index_backend
from shared.storage import ReplicaStorage, Replicas
from devtools.fakes import MemoryBlobStore
from devtools.receivers import Receiver

from services.notifier import subscriptions
from services.notifier.delivery import RetryableDeliveryError
from services.notifier.dependencies import WebhookAPI
from services.notifier.subscriptions import (SubscriptionCache, SubscriptionStoreAPI, disabled_key, subscription_key,
                                             transaction_id)
from services.notifier.service import NotifierService

OWNER = {"email": "owner@example.org", "groups": ["dbio"], "is_admin": False}
OTHER = {"email": "other@example.org", "groups": ["dbio"], "is_admin": False}
SECRET = "never-show-this-secret"
HOOK = "http://127.0.0.1:9/hook"  # validation never connects; an IP literal needs no DNS either
HEART = {"query": {"term": {"files.cell_suspension_json.organ": "heart"}}}
DOUBLING = "'ab'" + " | join('', [@,@])" * 40  # 2**40 times 'ab', in 760 characters
# What a subscription made before the cost model may hold: 2 MiB built on every event, and a
# chain of pipes nested deeper than the interpreter can recurse.
STORED_DOUBLING = "'ab'" + " | join('', [@,@])" * 20
DEEP_PIPES = "|".join(["@"] * 2000)  # 3,999 characters
FUZZY = {"query": {"fuzzy": {"files.cell_suspension_json.organ": "hart"}}}  # a clause the parser no longer takes


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class World:
    """Both replicas' buckets in memory, their embedded indexes on disk, and workers over them
    sharing the provider-level cache, as nameko gives each call a fresh worker."""

    def __init__(self, tmp_path):
        self.config = {"DSS_INDEX_DIR": str(tmp_path / "index"), "DSS_NOTIFY_ALLOWED_HOSTS": "127.0.0.1",
                       "DSS_NOTIFY_MAX_SUBSCRIPTIONS": 3, "DSS_PUBLIC_URL": "https://dss.example/"}
        self.settings = Settings.from_config(self.config, environ={})
        self.stores = {name: MemoryBlobStore(name) for name in ("aws", "gcp")}
        for name, store in self.stores.items():
            store.create_bucket(self.settings.bucket(name))
        self.replicas = Replicas({name: ReplicaStorage(name, store, self.settings)
                                  for name, store in self.stores.items()})
        self.indexes = {name: open_index_backend(self.settings, name) for name in ("aws", "gcp")}
        self.clock = Clock()
        self.cache = SubscriptionCache(5, clock=self.clock)

    def api(self, **settings):
        settings = Settings.from_config({**self.config, **settings}, environ={}) if settings else self.settings
        return SubscriptionStoreAPI(self.replicas, self.indexes, settings, self.cache)

    def worker(self, attempt=1, **settings):
        return worker_factory(NotifierService, subscriptions=self.api(**settings), attempt=attempt)

    def subscribe(self, caller=OWNER, replica="aws", **fields):
        fields.setdefault("callback_url", HOOK)
        return self.worker().put_subscription(replica, fields, caller)["uuid"]

    def stored(self, uuid, replica="aws", key=subscription_key):
        data = self.stores[replica].buckets[self.settings.bucket(replica)].get(key(uuid))
        return None if data is None else json.loads(data[0])

    def store_directly(self, like, replica="aws", **fields):
        """A subscription written straight into the bucket, as one made before today's rules is
        there: ``like``'s document with other ``fields``; its uuid."""
        uuid = new_uuid()
        document = {**self.stored(like, replica), "uuid": uuid, **fields}
        self.replicas[replica].write_json_once(subscription_key(uuid), document)
        return uuid

    def register_directly(self, uuid, es_query, replica="aws"):
        """A percolator entry written straight into the embedded index's file, unchecked."""
        path = self.indexes[replica].subscriptions.path
        entries = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**entries, uuid: es_query}))

    def bundle_indexed(self, event_type="CREATE", replica="aws", organ="heart", uuid=None, version=None):
        uuid, version = uuid or new_uuid(), version or new_version()
        document = event_document(event_type, uuid, version, {"version": version, "files": []},
                                  {"cell_suspension_json": [{"organ": organ}]})
        return {"replica": replica, "uuid": uuid, "version": version, "event_type": event_type,
                "event_timestamp": "2026-11-25T01:02:03.000000Z", "document": document}

    def matched(self, event):
        """(subscription ids, dispatched payloads) of handling one bundle_indexed event."""
        worker = self.worker()
        result = worker.handle_bundle_indexed(event)
        dispatched = [call.args for call in worker.dispatch.call_args_list]
        assert all(name == events.SUBSCRIPTION_MATCHED for name, _ in dispatched)
        return result["matched"], [payload for _, payload in dispatched]


@pytest.fixture
def world(tmp_path):
    world = World(tmp_path)
    yield world
    for index in world.indexes.values():
        index.close()


# --- creating, reading, listing, deleting ----------------------------------------------------------

def test_a_subscription_is_stored_with_its_defaults_and_never_shown_with_its_secret(world):
    uuid = world.subscribe(jmespath_query="event_type=='CREATE'", hmac_secret_key=SECRET, hmac_key_id="k1",
                           attachments={"organ": {"type": "jmespath", "expression": "files.cell_suspension_json"}})
    stored = world.stored(uuid)
    assert stored["hmac_secret_key"] == SECRET  # kept for signing ...
    assert {key: stored[key] for key in ("uuid", "owner", "replica", "callback_url", "method", "encoding",
                                         "hmac_key_id", "jmespath_query")} == {
        "uuid": uuid, "owner": OWNER["email"], "replica": "aws", "callback_url": HOOK, "method": "POST",
        "encoding": "application/json", "hmac_key_id": "k1", "jmespath_query": "event_type=='CREATE'"}
    assert "es_query" not in stored and stored["created"].endswith("Z")
    assert world.stored(uuid, "gcp") is None  # each replica keeps its own

    shown = world.worker().get_subscription("aws", uuid, OWNER)
    assert "hmac_secret_key" not in shown  # ... and never answered
    assert shown == {key: value for key, value in stored.items() if key != "hmac_secret_key"}
    listed = world.worker().list_subscriptions("aws", OWNER)["subscriptions"]
    assert listed == [shown]
    assert SECRET not in json.dumps(listed)


def test_subscriptions_are_listed_by_type_and_owner(world):
    jmespath = world.subscribe()
    elasticsearch = world.subscribe(es_query=HEART, hmac_secret_key=SECRET)
    world.subscribe(caller=OTHER)
    world.subscribe(replica="gcp")
    worker = world.worker()
    assert [s["uuid"] for s in worker.list_subscriptions("aws", OWNER)["subscriptions"]] == [jmespath]
    by_es = worker.list_subscriptions("aws", OWNER, "elasticsearch")["subscriptions"]
    assert [s["uuid"] for s in by_es] == [elasticsearch] and by_es[0]["es_query"] == HEART
    assert "hmac_secret_key" not in by_es[0]
    with pytest.raises(InvalidParameter):
        worker.list_subscriptions("aws", OWNER, "lucene")


@pytest.mark.parametrize("fields, error, code", [
    ({"callback_url": "ftp://127.0.0.1/x"}, InvalidParameter, "callback_url_scheme"),
    ({"callback_url": "http://10.1.2.3/hook"}, InvalidParameter, "callback_url_forbidden_address"),
    ({"callback_url": "http://169.254.169.254/latest/meta-data"}, InvalidParameter, "callback_url_forbidden_address"),
    ({"callback_url": 42}, InvalidParameter, "callback_url_invalid"),
    ({"es_query": HEART, "jmespath_query": "event_type"}, InvalidParameter, "conflicting_queries"),
    ({"jmespath_query": "files[?"}, InvalidParameter, "invalid_jmespath_query"),
    ({"jmespath_query": "nope(files)"}, InvalidParameter, "invalid_jmespath_query"),
    ({"attachments": {"a": {"type": "xpath", "expression": "x"}}}, InvalidParameter, "invalid_attachment_type"),
    ({"attachments": {"a": {"type": "jmespath", "expression": "[["}}}, InvalidParameter,
     "invalid_attachment_expression"),
    ({"jmespath_query": DOUBLING}, InvalidParameter, "jmespath_too_costly"),
    ({"jmespath_query": DEEP_PIPES}, InvalidParameter, "jmespath_too_costly"),
    ({"attachments": {"a": {"type": "jmespath", "expression": DOUBLING}}}, InvalidParameter, "jmespath_too_costly"),
    ({"es_query": {"query": {"no_such_query": {}}}}, ElasticsearchBadRequest, "elasticsearch_bad_request"),
    ({"es_query": "organ:heart"}, ElasticsearchBadRequest, "elasticsearch_bad_request"),
    ({"method": "GET"}, InvalidParameter, "invalid_method"),
    ({"encoding": "text/plain"}, InvalidParameter, "invalid_encoding"),
    ({"hmac_secret_key": ""}, InvalidParameter, "invalid_hmac_secret_key"),
    ({"colour": "blue"}, InvalidParameter, "illegal_arguments"),
])
def test_invalid_subscriptions_are_400_and_store_nothing(world, fields, error, code):
    with pytest.raises(error) as raised:
        world.subscribe(**fields)
    assert raised.value.error_code == code
    assert list(world.replicas["aws"].list_keys("subscriptions/")) == []
    assert world.indexes["aws"].subscriptions.queries() == {}


def test_calls_without_a_caller_or_with_bad_arguments(world):
    worker = world.worker()
    with pytest.raises(Unauthorized):
        worker.put_subscription("aws", {"callback_url": HOOK}, None)
    with pytest.raises(Unauthorized):
        worker.list_subscriptions("aws", {"groups": []})
    with pytest.raises(InvalidParameter):
        worker.put_subscription("azure", {"callback_url": HOOK}, OWNER)
    with pytest.raises(InvalidParameter):
        worker.put_subscription("aws", ["not", "an", "object"], OWNER)
    with pytest.raises(InvalidParameter) as raised:
        worker.get_subscription("aws", "not-a-uuid", OWNER)
    assert raised.value.error_code == "illegal_uuid"


def test_an_owner_may_have_so_many_subscriptions_per_replica(world):
    for _ in range(3):  # DSS_NOTIFY_MAX_SUBSCRIPTIONS is 3 here
        world.subscribe()
    with pytest.raises(NotAcceptable) as raised:
        world.subscribe(es_query=HEART)
    assert raised.value.error_code == "too_many_subscriptions"
    assert world.indexes["aws"].subscriptions.queries() == {}  # nothing registered either
    world.subscribe(caller=OTHER)  # others may
    world.subscribe(replica="gcp")  # and so may the owner in the other replica


def test_only_the_owner_reads_or_deletes_a_subscription(world):
    uuid = world.subscribe(es_query=HEART)
    worker = world.worker()
    with pytest.raises(Forbidden):
        worker.get_subscription("aws", uuid, OTHER)
    with pytest.raises(Forbidden):
        worker.delete_subscription("aws", uuid, OTHER)
    with pytest.raises(NotFound):
        worker.get_subscription("gcp", uuid, OWNER)  # subscriptions belong to one replica
    with pytest.raises(NotFound):
        worker.get_subscription("aws", new_uuid(), OWNER)

    assert worker.delete_subscription("aws", uuid, OWNER)["timeDeleted"].endswith("Z")
    assert world.stored(uuid) is None and uuid not in world.indexes["aws"].subscriptions.queries()
    with pytest.raises(NotFound):
        world.worker().get_subscription("aws", uuid, OWNER)
    with pytest.raises(NotFound):
        world.worker().delete_subscription("aws", uuid, OWNER)
    assert world.worker().list_subscriptions("aws", OWNER, "elasticsearch") == {"subscriptions": []}


def test_a_delete_that_failed_halfway_completes_when_retried(world, monkeypatch):
    uuid = world.subscribe(es_query=HEART)
    storage = world.replicas["aws"]
    real_delete = storage.delete

    def unavailable(key):
        raise BlobStoreUnavailable("aws is unreachable")

    monkeypatch.setattr(storage, "delete", unavailable)
    with pytest.raises(BlobStoreUnavailable):
        world.worker().delete_subscription("aws", uuid, OWNER)
    assert uuid not in world.indexes["aws"].subscriptions.queries()  # the percolator entry went first
    assert world.matched(world.bundle_indexed())[0] == []  # and so the subscription no longer fires

    monkeypatch.setattr(storage, "delete", real_delete)
    world.worker().delete_subscription("aws", uuid, OWNER)
    assert world.stored(uuid) is None


def test_a_document_that_cannot_be_written_leaves_no_percolator_entry(world, monkeypatch):
    def unavailable(key, doc):
        raise BlobStoreUnavailable("aws is unreachable")

    monkeypatch.setattr(world.replicas["aws"], "write_json_once", unavailable)
    with pytest.raises(BlobStoreUnavailable):
        world.subscribe(es_query=HEART)
    assert world.indexes["aws"].subscriptions.queries() == {}


def test_secrets_never_reach_the_logs(world, caplog):
    with caplog.at_level(logging.DEBUG):
        uuid = world.subscribe(es_query=HEART, hmac_secret_key=SECRET)
        world.subscribe(hmac_secret_key=SECRET, jmespath_query="event_type")
        world.worker().get_subscription("aws", uuid, OWNER)
        world.worker().list_subscriptions("aws", OWNER)
        world.matched(world.bundle_indexed())
        world.worker().delete_subscription("aws", uuid, OWNER)
    assert caplog.records and SECRET not in caplog.text


# --- matching -----------------------------------------------------------------------------------------

def test_jmespath_subscriptions_fire_when_their_query_is_truthy(world):
    heart = world.subscribe(jmespath_query="files.cell_suspension_json[0].organ == 'heart'")
    creates = world.subscribe(jmespath_query="event_type == 'CREATE'")
    everything = world.subscribe()  # no query: every event
    world.subscribe(replica="gcp")  # another replica's

    matched, payloads = world.matched(world.bundle_indexed(organ="heart"))
    assert matched == sorted([heart, creates, everything])
    assert world.matched(world.bundle_indexed(organ="liver"))[0] == sorted([creates, everything])
    assert world.matched(world.bundle_indexed("TOMBSTONE", organ="liver"))[0] == [everything]


def test_elasticsearch_subscriptions_fire_only_for_a_matching_create(world):
    heart = world.subscribe(es_query=HEART, hmac_secret_key=SECRET)
    world.subscribe(es_query={"query": {"term": {"files.cell_suspension_json.organ": "liver"}}})

    event = world.bundle_indexed(organ="heart")
    matched, [payload] = world.matched(event)
    assert matched == [heart]
    assert payload["subscription_id"] == heart and payload["replica"] == "aws"
    body = payload["payload"]
    assert body["es_query"] == HEART and "jmespath_query" not in body
    assert body["match"] == {"bundle_uuid": event["uuid"], "bundle_version": event["version"]}
    assert body["bundle_url"] == (f"https://dss.example/v1/bundles/{event['uuid']}?version={event['version']}"
                                  "&replica=aws")
    assert body["event_type"] == "CREATE" and body["event_timestamp"] == event["event_timestamp"]
    assert SECRET not in json.dumps(payload)
    # The same bundle content tombstoned, or deleted, is no CREATE: percolation is not asked.
    assert world.matched(world.bundle_indexed("TOMBSTONE", organ="heart"))[0] == []
    assert world.matched(world.bundle_indexed("DELETE", organ="heart"))[0] == []


def test_the_payload_carries_the_attachments(world):
    world.subscribe(attachments={"organs": {"type": "jmespath", "expression": "files.cell_suspension_json[].organ"},
                                 "bad": {"type": "jmespath", "expression": "abs(files)"}})
    _, [payload] = world.matched(world.bundle_indexed(organ="heart"))
    attachments = payload["payload"]["attachments"]
    assert attachments["organs"] == ["heart"] and "bad" in attachments["_errors"]
    assert payload["payload"]["jmespath_query"] is None


def test_transaction_ids_are_the_same_for_a_redelivered_event(world):
    first, second = world.subscribe(), world.subscribe(jmespath_query="event_type")
    event = world.bundle_indexed()
    _, once = world.matched(event)
    _, again = world.matched(event)
    ids = {payload["subscription_id"]: payload["transaction_id"] for payload in once}
    assert ids == {payload["subscription_id"]: payload["transaction_id"] for payload in again}
    assert set(ids) == {first, second} and len(set(ids.values())) == 2
    assert all(payload["payload"]["transaction_id"] == payload["transaction_id"] for payload in once)
    assert ids[first] == transaction_id(first, "aws", event["uuid"], event["version"], "CREATE")
    # Another event of the same bundle version is another transaction.
    assert transaction_id(first, "aws", event["uuid"], event["version"], "TOMBSTONE") != ids[first]
    assert transaction_id(first, "gcp", event["uuid"], event["version"], "CREATE") != ids[first]


def test_an_event_that_names_no_bundle_is_unusable(world):
    world.subscribe()
    event = world.bundle_indexed()
    event["document"]["bundle_info"] = {}
    with pytest.raises(InvalidParameter):
        world.worker().handle_bundle_indexed(event)
    event = world.bundle_indexed()
    event["uuid"] = new_uuid()  # the document is about another bundle
    with pytest.raises(InvalidParameter):
        world.worker().handle_bundle_indexed(event)


def test_matching_reuses_a_recent_listing_but_not_past_its_time(world):
    first = world.subscribe()
    assert world.matched(world.bundle_indexed())[0] == [first]
    # Made through another notifier process: only the bucket knows.
    elsewhere = new_uuid()
    document = dict(world.stored(first), uuid=elsewhere)
    world.replicas["aws"].write_json_once(subscription_key(elsewhere), document)
    assert world.matched(world.bundle_indexed())[0] == [first]
    world.clock.now += 5
    assert world.matched(world.bundle_indexed())[0] == sorted([first, elsewhere])
    # Made through this process: at once.
    mine = world.subscribe()
    assert world.matched(world.bundle_indexed())[0] == sorted([first, elsewhere, mine])


def test_a_percolator_entry_without_its_document_is_skipped(world):
    orphan = new_uuid()
    world.indexes["aws"].put_subscription(orphan, HEART)
    assert world.matched(world.bundle_indexed(organ="heart"))[0] == []


# --- subscriptions that break the limits of evaluation ---------------------------------------------

def test_subscriptions_breaking_the_limits_are_disabled_and_the_others_still_fire(world, monkeypatch):
    good = world.subscribe(jmespath_query="event_type == 'CREATE'",
                           attachments={"organ": {"type": "jmespath", "expression": "files.cell_suspension_json[0].organ"}})
    doubling = world.store_directly(good, jmespath_query=STORED_DOUBLING, attachments=None)
    deep = world.store_directly(good, jmespath_query=DEEP_PIPES, attachments=None)
    attachment = world.store_directly(good, attachments={
        "organ": {"type": "jmespath", "expression": "files.cell_suspension_json[0].organ"},
        "big": {"type": "jmespath", "expression": STORED_DOUBLING}})

    matched, [payload] = world.matched(world.bundle_indexed())
    assert matched == [good] and payload["payload"]["attachments"] == {"organ": "heart"}

    worker = world.worker()
    for uuid, what in ((doubling, "jmespath_query"), (deep, "jmespath_query"), (attachment, "attachment 'big'")):
        disabled = worker.get_subscription("aws", uuid, OWNER)["disabled"]
        assert disabled["code"] == "jmespath_too_costly" and what in disabled["reason"]
        assert disabled["at"].endswith("Z") and set(disabled) == {"code", "reason", "at"}
        assert world.stored(uuid, key=disabled_key)["code"] == "jmespath_too_costly"  # for good, in the bucket
    assert "nests 2000 levels deep" in worker.get_subscription("aws", deep, OWNER)["disabled"]["reason"]
    assert "disabled" not in worker.get_subscription("aws", good, OWNER)
    listed = {s["uuid"]: s.get("disabled") for s in worker.list_subscriptions("aws", OWNER)["subscriptions"]}
    assert listed[good] is None and all(listed[uuid]["code"] == "jmespath_too_costly"
                                        for uuid in (doubling, deep, attachment))
    assert REGISTRY.get_sample_value("dss_subscriptions_disabled_total",
                                     {"replica": "aws", "code": "jmespath_too_costly"}) >= 3

    # From now on they are not even evaluated.
    evaluated = []
    real = subscriptions.jmespath_matches
    monkeypatch.setattr(subscriptions, "jmespath_matches",
                        lambda query, *args: evaluated.append(query) or real(query, *args))
    assert world.matched(world.bundle_indexed())[0] == [good]
    assert evaluated == ["event_type == 'CREATE'"]

    # The way back: delete it (the marker goes too) and make a new one.
    world.worker().delete_subscription("aws", doubling, OWNER)
    assert world.stored(doubling, key=disabled_key) is None


def test_evaluation_that_spends_its_budget_disables_the_subscription(world):
    good = world.subscribe(jmespath_query="files.cell_suspension_json[?organ == 'heart']")
    # Within the cost model, but more characters than this notifier allows one event to build.
    text = world.subscribe(attachments={"text": {"type": "jmespath", "expression": "to_string(@)"}})
    steps = world.subscribe(jmespath_query=" && ".join(["files.cell_suspension_json[0].organ == 'heart'"] * 10))
    worker = world.worker(DSS_NOTIFY_JMESPATH_MAX_CHARS=100, DSS_NOTIFY_JMESPATH_MAX_STEPS=25)
    assert worker.handle_bundle_indexed(world.bundle_indexed())["matched"] == [good]
    disabled = world.worker().get_subscription("aws", text, OWNER)["disabled"]
    assert disabled["code"] == "jmespath_limit_exceeded"
    assert disabled["reason"] == ("evaluating the expression of attachment 'text' would build more than 100 "
                                  "characters of strings")
    disabled = world.worker().get_subscription("aws", steps, OWNER)["disabled"]
    assert disabled["code"] == "jmespath_limit_exceeded" and "more than 25 steps" in disabled["reason"]


def test_a_subscription_disabled_by_another_process_is_skipped_once_the_listing_is_renewed(world):
    first, second = world.subscribe(), world.subscribe()
    assert world.matched(world.bundle_indexed())[0] == sorted([first, second])
    marker = {"uuid": second, "code": "jmespath_limit_exceeded", "reason": "r", "at": "2026-01-01T00:00:00.000000Z"}
    world.replicas["aws"].write_json_once(disabled_key(second), marker)
    assert world.worker().get_subscription("aws", second, OWNER)["disabled"] == {
        "code": "jmespath_limit_exceeded", "reason": "r", "at": "2026-01-01T00:00:00.000000Z"}  # the owner sees it now
    world.clock.now += 5
    assert world.matched(world.bundle_indexed())[0] == [first]


def test_an_elasticsearch_subscription_whose_percolation_fails_is_disabled(world):
    heart = world.subscribe(es_query=HEART)
    fuzzy = world.store_directly(heart, es_query=FUZZY)
    world.register_directly(fuzzy, FUZZY)
    refused = []  # the engine leaves the query out and says so (it once failed the whole event)
    assert world.indexes["aws"].percolate({"uuid": new_uuid(), "files": {}},
                                          refused=lambda uuid, error: refused.append(uuid)) == []
    assert refused == [fuzzy]

    matched, [payload] = world.matched(world.bundle_indexed(organ="heart"))
    assert matched == [heart] and payload["payload"]["es_query"] == HEART
    disabled = world.worker().get_subscription("aws", fuzzy, OWNER)["disabled"]
    assert disabled["code"] == "elasticsearch_bad_request" and "fuzzy" in disabled["reason"]
    assert fuzzy not in json.loads(world.indexes["aws"].subscriptions.path.read_text())  # out of the percolator
    assert world.matched(world.bundle_indexed(organ="heart"))[0] == [heart]


def test_a_percolation_failure_no_subscription_explains_fails_the_event(world, monkeypatch):
    heart = world.subscribe(es_query=HEART)
    for error in (ElasticsearchBadRequest("the cluster refused a mapping"), Unavailable("down")):
        def percolate(document, refused=None, error=error):
            raise error
        monkeypatch.setattr(world.indexes["aws"], "percolate", percolate)
        with pytest.raises(type(error)):
            world.worker().handle_bundle_indexed(world.bundle_indexed())
    assert "disabled" not in world.worker().get_subscription("aws", heart, OWNER)


# --- delivery -----------------------------------------------------------------------------------------

def notification(world, uuid, event=None):
    event = event or world.bundle_indexed()
    _, payloads = world.matched(event)
    return next(payload for payload in payloads if payload["subscription_id"] == uuid)


def test_a_notification_is_delivered_with_the_attempt_number_of_its_message(world):
    uuid = world.subscribe(hmac_secret_key=SECRET)
    matched = notification(world, uuid)
    worker = world.worker(attempt=3)
    worker.webhooks.deliver.return_value.status = 200
    worker.webhooks.deliver.return_value.attempt = 3
    result = worker.handle_subscription_matched(matched)
    [call] = worker.webhooks.deliver.call_args_list
    replica, subscription, payload, attempt = call.args
    assert (replica, payload, attempt) == ("aws", matched["payload"], 3)
    assert subscription["hmac_secret_key"] == SECRET  # the stored one signs
    assert result == {"subscription_id": uuid, "transaction_id": matched["transaction_id"], "status": 200,
                      "attempt": 3}


def test_a_notification_of_a_deleted_subscription_is_dropped(world):
    uuid = world.subscribe()
    matched = notification(world, uuid)
    assert ("aws", uuid) in world.cache.documents  # cached in this process ...
    world.replicas["aws"].delete(subscription_key(uuid))  # ... and deleted through another one
    worker = world.worker()
    assert worker.handle_subscription_matched(matched) is None
    worker.webhooks.deliver.assert_not_called()
    worker.webhooks.dropped.assert_called_once_with("aws", uuid, matched["transaction_id"])


def outcomes(replica):
    return {outcome: REGISTRY.get_sample_value("dss_notifications_total", {"replica": replica, "outcome": outcome})
            or 0.0 for outcome in ("delivered", "retrying", "dead_lettered", "dropped")}


def test_webhook_outcomes_are_counted(world):
    receiver = Receiver({})
    try:
        settings = Settings.from_config({"DSS_NOTIFY_ALLOWED_HOSTS": "127.0.0.1", "DSS_NOTIFY_RETRY_DELAYS": "1,1"},
                                        environ={})
        webhooks = WebhookAPI(settings)
        subscription = {"uuid": new_uuid(), "callback_url": receiver.url("/flaky/3/500")}
        before = outcomes("gcp")
        for attempt in (1, 2, 3):
            with pytest.raises(RetryableDeliveryError):
                webhooks.deliver("gcp", subscription, {"event_timestamp": "2026-01-01T00:00:00Z"}, attempt)
        webhooks.deliver("gcp", subscription, {"event_timestamp": "2026-01-01T00:00:00Z"}, 4)
        webhooks.dropped("gcp", subscription["uuid"], "tx")
        after = outcomes("gcp")
        assert {outcome: after[outcome] - before[outcome] for outcome in after} == {
            "retrying": 2, "dead_lettered": 1, "delivered": 1, "dropped": 1}
    finally:
        receiver.stop()


def test_health(world):
    assert world.worker().health() == {"ok": True, "aws": {"ok": True, "detail": "bucket dss-main"},
                                       "gcp": {"ok": True, "detail": "bucket dss-main"}}
    world.stores["gcp"].unavailable = True
    assert world.worker().health()["ok"] is False
