"""End to end over HTTP: search, subscriptions and the event journal, from a bundle written through
the gateway to a signed webhook at a real local receiver. The gateway, files, bundles, indexer and
notifier services run on the real broker and both emulators, with main buckets and a search index
of this test's own (subscriptions are per bucket: another test's would fire on these events)."""
import json
import time
import uuid

import pytest

from devtools import http
from shared import events
from shared.identifiers import Keys, new_uuid, new_version
from devtools.receivers import Receiver
from devtools.waiting import record_settled_successes, wait_until
from services.replicator.service import ReplicatorService
from tests.e2e.conftest import start_api
from tests.e2e.test_http_api import assert_problem, put_file

KEY_ID, SECRET = "e2e-key", "e2e-secret"
DOUBLING = "'ab'" + " | join('', [@,@])" * 40  # 2**40 times 'ab' (2 TiB) in 760 characters
# A subscription made before the cost model may hold this: 2 MiB built on every bundle event.
STORED_DOUBLING = "'ab'" + " | join('', [@,@])" * 20


@pytest.fixture
def search_stack(service_config, web_config, runner_factory, blobstores, tmp_path):
    """The API over main buckets of this test's own: (API URL, bucket name)."""
    bucket = f"e2e-search-{uuid.uuid4().hex[:10]}"
    for store in blobstores.values():
        store.create_bucket(bucket)
    config = {**service_config, "DSS_S3_BUCKET": bucket, "DSS_GS_BUCKET": bucket,
              "DSS_INDEX_DIR": str(tmp_path / "index"), "DSS_NOTIFY_ALLOWED_HOSTS": "127.0.0.1",
              "DSS_NOTIFY_RETRY_DELAYS": "1,1,1"}
    return start_api(config, web_config, runner_factory), bucket


@pytest.fixture
def search_api(search_stack):
    return search_stack[0]


@pytest.fixture
def purge_api(bucket_notifications, gcs_notification_settings, service_config, web_config, runner_factory,
              blobstores, tmp_path):
    """As ``search_api``, with the S3 bucket's change notifications (to a queue of this test's own)
    bridged onto the bus by the replicator: how the indexer hears of an object removed outright.
    The notification fixtures come first so that they outlive the runner."""
    bucket = f"e2e-purge-{uuid.uuid4().hex[:10]}"
    for store in blobstores.values():
        store.create_bucket(bucket)
    config = {**service_config, **gcs_notification_settings, **bucket_notifications(bucket), "DSS_GS_BUCKET": bucket,
              "DSS_INDEX_DIR": str(tmp_path / "index"), "DSS_NOTIFY_ALLOWED_HOSTS": "127.0.0.1",
              "DSS_NOTIFY_RETRY_DELAYS": "1,1,1", "DSS_REPLICATION_RETRY_DELAYS": "1,1,2"}
    return start_api(config, web_config, runner_factory, ReplicatorService), bucket


@pytest.fixture
def receiver():
    server = Receiver({KEY_ID: SECRET.encode()})
    yield server
    server.stop()


def search(api, es_query, **params):
    return http.post(f"{api}/search", params={"replica": "aws", **params}, json={"es_query": es_query})


def put_bundle(api, auth, stage, documents):
    """A bundle of JSON files (name -> document), all indexed; (uuid, version)."""
    files = []
    for name, document in documents.items():
        source_url, _ = stage(json.dumps(document).encode(), content_type="application/json")
        file_uuid, file_version, response = put_file(api, auth, source_url)
        assert response.status_code == 201, response.text
        files.append({"uuid": file_uuid, "version": file_version, "name": name, "indexed": True})
    bundle_uuid, bundle_version = new_uuid(), new_version()
    response = http.put(f"{api}/bundles/{bundle_uuid}", params={"replica": "aws", "version": bundle_version},
                        headers=auth, json={"creator_uid": 7, "files": files})
    assert response.status_code == 201, response.text
    return bundle_uuid, bundle_version


def test_a_bundle_is_found_notified_and_journaled_until_it_is_deleted(search_api, auth, admin, stage, receiver,
                                                                      monkeypatch):
    succeeded = record_settled_successes(monkeypatch)
    api, title = search_api, f"liver atlas {uuid.uuid4().hex[:8]}"
    title_query = {"query": {"match_phrase": {"files.project_json.project_core.title": title}}}

    # Two subscriptions of the caller: JMESPath (with an attachment) and Elasticsearch, both signed.
    signed = {"callback_url": receiver.url("/ok"), "hmac_secret_key": SECRET, "hmac_key_id": KEY_ID}
    jmespath_sub = http.put(f"{api}/subscriptions", params={"replica": "aws"}, headers=auth, json={
        **signed, "jmespath_query": f"event_type=='CREATE' && files.project_json[0].project_core.title=='{title}'",
        "attachments": {"organ": {"type": "jmespath", "expression": "files.specimen_json[0].organ"}}})
    assert jmespath_sub.status_code == 201, jmespath_sub.text
    es_sub = http.put(f"{api}/subscriptions", params={"replica": "aws"}, headers=auth,
                      json={**signed, "es_query": title_query})
    assert es_sub.status_code == 201, es_sub.text
    jmespath_id, es_id = jmespath_sub.json()["uuid"], es_sub.json()["uuid"]

    bundle_uuid, bundle_version = put_bundle(api, auth, stage, {
        "project_0.json": {"project_core": {"title": title}},
        "specimen_from_organism_0.json": {"organ": {"text": "liver"}},
        "specimen_0.json": {"organ": "liver"}})
    fqid = f"{bundle_uuid}.{bundle_version}"

    # Search: found once indexed; summary and raw output.
    wait_until(lambda: search(api, title_query).json().get("total_hits") == 1, 30, "the bundle to be searchable")
    found = search(api, title_query)
    assert found.status_code == 200 and found.headers["X-OpenAPI-Paginated-Content-Key"] == "results"
    [hit] = found.json()["results"]
    assert hit["bundle_fqid"] == fqid and "metadata" not in hit
    assert hit["bundle_url"].endswith(f"/v1/bundles/{bundle_uuid}?version={bundle_version}&replica=aws")
    assert http.get(hit["bundle_url"]).status_code == 200
    [raw] = search(api, title_query, output_format="raw").json()["results"]
    assert raw["metadata"]["files"]["project_json"] == [{"project_core": {"title": title}}]
    assert raw["metadata"]["manifest"]["version"] == bundle_version
    assert search(api, {"query": {"term": {"files.specimen_json.organ": "LIVER"}}}).json()["total_hits"] >= 1

    # Webhooks: one accepted, verified delivery per subscription.
    wait_until(lambda: len(receiver.accepted()) >= 2, 30, "both notifications")
    # Both deliveries acknowledged as successes (neither retried nor dead-lettered): no duplicate to come.
    wait_until(lambda: len([q for q, _ in succeeded if events.SUBSCRIPTION_MATCHED in q]) >= 2, 30,
               "both deliveries acknowledged")
    deliveries = {r.payload()["subscription_id"]: r for r in receiver.accepted()}
    assert set(deliveries) == {jmespath_id, es_id} and len(receiver.accepted()) == 2
    for delivery in deliveries.values():
        assert delivery.key_ids == (KEY_ID, KEY_ID)  # both signature forms verified
        payload = delivery.payload()
        assert payload["match"] == {"bundle_uuid": bundle_uuid, "bundle_version": bundle_version}
        assert payload["event_type"] == "CREATE"
        assert payload["bundle_url"].endswith(f"/v1/bundles/{bundle_uuid}?version={bundle_version}&replica=aws")
    assert deliveries[jmespath_id].payload()["attachments"] == {"organ": "liver"}
    assert deliveries[es_id].payload()["es_query"] == title_query

    # Subscriptions: listed by kind, never with their secret; owner only.
    listed = http.get(f"{api}/subscriptions", params={"replica": "aws", "subscription_type": "elasticsearch"},
                      headers=auth)
    assert listed.status_code == 200 and [s["uuid"] for s in listed.json()["subscriptions"]] == [es_id]
    assert SECRET not in listed.text
    one = http.get(f"{api}/subscriptions/{jmespath_id}", params={"replica": "aws"}, headers=auth)
    assert one.status_code == 200 and one.json()["callback_url"] == receiver.url("/ok") and SECRET not in one.text
    assert_problem(http.get(f"{api}/subscriptions/{jmespath_id}", params={"replica": "aws"}, headers=admin),
                   403)

    # The event journal: the CREATE event, by uuid and in the dated listing.
    event = http.get(f"{api}/events/{bundle_uuid}", params={"replica": "aws", "version": bundle_version})
    assert event.status_code == 200, event.text
    assert event.json()["event_type"] == "CREATE"
    assert event.json()["bundle_info"] == {"uuid": bundle_uuid, "version": bundle_version}
    assert event.json()["files"]["specimen_json"] == [{"organ": "liver"}]
    journal = http.get(f"{api}/events", params={"replica": "aws", "from_date": bundle_version})
    assert journal.status_code == 200, journal.text
    assert fqid in [e["bundle_fqid"] for e in journal.json()["event_streams"]]

    # Deleting the bundle: searches stop returning it; the journal records the tombstone.
    deleted = http.delete(f"{api}/bundles/{bundle_uuid}", params={"replica": "aws", "version": bundle_version},
                          headers=admin, json={"reason": "withdrawn"})
    assert deleted.status_code == 200, deleted.text
    wait_until(lambda: search(api, title_query).json()["total_hits"] == 0, 30, "the bundle to leave the index")

    def journaled_types():
        streams = http.get(f"{api}/events", params={"replica": "aws", "from_date": bundle_version}).json()
        return [e["event_type"] for e in streams["event_streams"] if e["bundle_fqid"] == fqid]
    wait_until(lambda: journaled_types() == ["CREATE", "TOMBSTONE"], 30, "the tombstone in the journal")
    assert http.get(f"{api}/events/{bundle_uuid}", params={"replica": "aws", "version": bundle_version}
                    ).json()["event_type"] == "TOMBSTONE"

    # Deleting a subscription: gone, and its deletion is owner-only.
    assert_problem(http.delete(f"{api}/subscriptions/{es_id}", params={"replica": "aws"}, headers=admin), 403)
    gone = http.delete(f"{api}/subscriptions/{es_id}", params={"replica": "aws"}, headers=auth)
    assert gone.status_code == 200 and gone.json()["timeDeleted"]
    assert_problem(http.get(f"{api}/subscriptions/{es_id}", params={"replica": "aws"}, headers=auth), 404)


def test_search_pages_with_a_cursor(search_api, auth, stage):
    api, tag = search_api, uuid.uuid4().hex
    expected = sorted((f"{u}.{v}" for u, v in (put_bundle(api, auth, stage, {"sample_0.json": {"tag": tag, "n": i}})
                                              for i in range(12))), reverse=True)
    query = {"query": {"term": {"files.sample_json.tag": tag}}}
    wait_until(lambda: search(api, query).json().get("total_hits") == 12, 60, "twelve bundles indexed")
    first = search(api, query, per_page=10)
    assert first.status_code == 206 and first.json()["total_hits"] == 12
    second = http.post(first.links["next"]["url"], json={"es_query": query})
    assert second.status_code == 200 and "next" not in second.links
    assert [h["bundle_fqid"] for h in first.json()["results"] + second.json()["results"]] == expected


@pytest.mark.parametrize("body,code", [
    ({"es_query": {"query": {"fuzzy": {"files.project_json.title": "livr"}}}}, "elasticsearch_bad_request"),
    ({"es_query": {"query": {"range": {"files.a": {"gte": {"nested": 1}}}}}}, "elasticsearch_bad_request"),
    ({"es_query": "title:liver"}, "illegal_arguments"),
    ({}, "illegal_arguments"),
])
def test_bad_searches_are_400(search_api, body, code):
    response = http.post(f"{search_api}/search", params={"replica": "aws"}, json=body)
    assert_problem(response, 400, code)


@pytest.mark.parametrize("change,status", [
    ({"callback_url": "http://10.1.2.3/hook"}, 400),           # a private address, not allowed
    ({"callback_url": "ftp://127.0.0.1/hook"}, 400),
    ({"jmespath_query": "files.[["}, 400),
    ({"es_query": {"query": {"fuzzy": {"a": "b"}}}}, 400),
    ({"es_query": {"query": {"match_all": {}}}, "jmespath_query": "true"}, 400),
    ({"attachments": {"a": {"type": "jmespath", "expression": "[["}}}, 400),
    ({"method": "GET"}, 400),
])
def test_bad_subscriptions_are_4xx_and_store_nothing(search_api, auth, receiver, change, status):
    body = {"callback_url": receiver.url("/ok"), **change}
    response = http.put(f"{search_api}/subscriptions", params={"replica": "aws"}, headers=auth, json=body)
    assert_problem(response, status)
    for kind in ("jmespath", "elasticsearch"):
        listed = http.get(f"{search_api}/subscriptions", params={"replica": "aws", "subscription_type": kind},
                          headers=auth)
        assert listed.json() == {"subscriptions": []}


def test_a_jmespath_subscription_that_can_grow_values_exponentially_is_refused(search_api, auth, receiver):
    for body, what in (({"jmespath_query": DOUBLING}, "jmespath_query"),
                       ({"attachments": {"big": {"type": "jmespath", "expression": DOUBLING}}}, "attachment 'big'")):
        response = http.put(f"{search_api}/subscriptions", params={"replica": "aws"}, headers=auth, timeout=30,
                            json={"callback_url": receiver.url("/ok"), **body})
        assert_problem(response, 400, "jmespath_too_costly")
        assert what in response.json()["title"] and "times" in response.json()["title"]
    listed = http.get(f"{search_api}/subscriptions", params={"replica": "aws"}, headers=auth, timeout=30)
    assert listed.json() == {"subscriptions": []}


def test_subscriptions_stored_before_the_limits_are_disabled_while_the_others_are_notified(
        search_stack, auth, stage, blobstores, receiver):
    (api, bucket), tag = search_stack, uuid.uuid4().hex
    query = f"files.sample_json[0].tag=='{tag}'"
    good = http.put(f"{api}/subscriptions", params={"replica": "aws"}, headers=auth, timeout=30, json={
        "callback_url": receiver.url("/good"), "jmespath_query": query,
        "attachments": {"tag": {"type": "jmespath", "expression": "files.sample_json[0].tag"}}})
    assert good.status_code == 201, good.text

    def stored_directly(path, **fields):
        """A subscription written into the bucket as one made before today's rules is there."""
        sub_id = new_uuid()
        document = {"uuid": sub_id, "owner": "user@example.org", "replica": "aws",
                    "created": "2020-01-01T00:00:00.000000Z", "callback_url": receiver.url(path), "method": "POST",
                    "encoding": "application/json", "form_fields": None, "payload_form_field": None,
                    "hmac_key_id": None, "attachments": None, "jmespath_query": query, **fields}
        blobstores["aws"].put_bytes(bucket, f"subscriptions/{sub_id}", json.dumps(document).encode(),
                                    content_type="application/json")
        return sub_id

    doubling = stored_directly("/doubling", jmespath_query=STORED_DOUBLING)
    attachment = stored_directly("/attachment", attachments={"big": {"type": "jmespath",
                                                                     "expression": STORED_DOUBLING}})

    put_bundle(api, auth, stage, {"sample_0.json": {"tag": tag}})
    [delivered] = wait_until(lambda: receiver.accepted(), 60, "the notification of the good subscription")
    assert delivered.path == "/good" and delivered.payload()["attachments"] == {"tag": tag}

    # The owner reads why the others were disabled; nothing was sent for them.
    for sub_id, what in ((doubling, "jmespath_query"), (attachment, "attachment 'big'")):
        shown = http.get(f"{api}/subscriptions/{sub_id}", params={"replica": "aws"}, headers=auth, timeout=30)
        assert shown.status_code == 200, shown.text
        disabled = shown.json()["disabled"]
        assert disabled["code"] == "jmespath_too_costly" and f"{what} is too costly" in disabled["reason"]
        assert disabled["at"].endswith("Z")
    listed = http.get(f"{api}/subscriptions", params={"replica": "aws"}, headers=auth, timeout=30).json()
    assert {s["uuid"]: s.get("disabled", {}).get("code") for s in listed["subscriptions"]} == {
        good.json()["uuid"]: None, doubling: "jmespath_too_costly", attachment: "jmespath_too_costly"}
    assert [request.path for request in receiver.requests] == ["/good"]

    # The way back: delete it and make a new one, which today's rules judge.
    assert http.delete(f"{api}/subscriptions/{doubling}", params={"replica": "aws"}, headers=auth,
                       timeout=30).status_code == 200
    again = http.put(f"{api}/subscriptions", params={"replica": "aws"}, headers=auth, timeout=30,
                     json={"callback_url": receiver.url("/doubling"), "jmespath_query": STORED_DOUBLING})
    assert_problem(again, 400, "jmespath_too_costly")


def test_a_bundle_removed_from_the_bucket_outright_is_a_delete_event(purge_api, auth, stage, blobstores, receiver):
    """An operator's purge (the manifest deleted from the main bucket, not tombstoned through the
    API): S3 notification -> bridge -> indexer -> journal and a JMESPath DELETE webhook."""
    (api, bucket), tag = purge_api, uuid.uuid4().hex
    subscription = http.put(f"{api}/subscriptions", params={"replica": "aws"}, headers=auth, json={
        "callback_url": receiver.url("/ok"), "hmac_secret_key": SECRET, "hmac_key_id": KEY_ID,
        "jmespath_query": f"event_type=='DELETE' && files.sample_json[0].tag=='{tag}'"})
    assert subscription.status_code == 201, subscription.text
    bundle_uuid, bundle_version = put_bundle(api, auth, stage, {"sample_0.json": {"tag": tag}})
    query = {"query": {"term": {"files.sample_json.tag": tag}}}
    wait_until(lambda: search(api, query).json().get("total_hits") == 1, 30, "the bundle to be searchable")

    blobstores["aws"].delete(bucket, Keys.bundle(bundle_uuid, bundle_version))

    wait_until(lambda: receiver.accepted(), 60, "the DELETE notification")
    [delivery] = receiver.accepted()
    assert delivery.key_ids == (KEY_ID, KEY_ID)
    payload = delivery.payload()
    assert payload["event_type"] == "DELETE" and payload["subscription_id"] == subscription.json()["uuid"]
    assert payload["match"] == {"bundle_uuid": bundle_uuid, "bundle_version": bundle_version}
    assert search(api, query).json()["total_hits"] == 0
    streams = http.get(f"{api}/events", params={"replica": "aws", "from_date": bundle_version}).json()
    assert [e["event_type"] for e in streams["event_streams"]
            if e["bundle_fqid"] == f"{bundle_uuid}.{bundle_version}"] == ["CREATE", "DELETE"]
    assert_problem(http.get(f"{api}/events/{bundle_uuid}", params={"replica": "aws", "version": bundle_version}),
                   404)


# --- bounded work -------------------------------------------------------------------------------

def nested_bools(depth: int) -> str:
    """A query of ``depth`` clauses, each the one `must` of the one before, as JSON text (deeper
    than Python's json module can encode)."""
    return '{"bool":{"must":[' * (depth - 1) + '{"match_all":{}}' + "]}}" * (depth - 1)


@pytest.mark.parametrize("depth,code", [
    (33, "query_too_complex"),    # one beyond DSS_SEARCH_MAX_DEPTH: answered before, now refused
    (210, "query_too_complex"),   # deeper than the old parser's stack: a RecursionError and a 500
    (315, "invalid_json"),        # decoded, but too deep to encode for an RPC: a 503 `broker_unavailable`
    (2000, "invalid_json"),       # deeper than the JSON decoder's stack: a RecursionError in the gateway
])
def test_queries_nested_too_deep_are_400s_never_500s(search_api, auth, receiver, depth, code):
    api, json_type = search_api, {"Content-Type": "application/json"}
    body = '{"es_query":{"query":%s}}' % nested_bools(depth)
    response = http.post(f"{api}/search", params={"replica": "aws"}, data=body, headers=json_type, timeout=30)
    assert_problem(response, 400, code)
    subscription = '{"callback_url":%s,"es_query":{"query":%s}}' % (json.dumps(receiver.url("/deep")),
                                                                    nested_bools(depth))
    response = http.put(f"{api}/subscriptions", params={"replica": "aws"}, data=subscription,
                        headers={**auth, **json_type}, timeout=30)
    assert_problem(response, 400, code)
    # Within the limit, the same shape is searched.
    body = '{"es_query":{"query":%s}}' % nested_bools(32)
    response = http.post(f"{api}/search", params={"replica": "aws"}, data=body, headers=json_type, timeout=30)
    assert response.status_code == 200, response.text


def test_a_pathological_wildcard_neither_stalls_searches_nor_other_subscriptions(search_api, auth, stage,
                                                                                receiver):
    """`*?*?...*!` backtracks for hours in a regular expression engine on a 64-character value (the
    notifier percolated with Python's `re`): it is matched in linear time, and the plain
    subscription beside it is notified at once."""
    api, marker = search_api, f"m{uuid.uuid4().hex[:8]}"
    pathological = {"query": {"wildcard": {"files.sample_json.name": "*?*?*?*?*?*?*?*?*?*!"}}}
    plain = {"query": {"term": {"files.sample_json.marker": marker}}}
    for es_query in (pathological, plain):
        response = http.put(f"{api}/subscriptions", params={"replica": "aws"}, headers=auth, timeout=30,
                            json={"callback_url": receiver.url("/ok"), "es_query": es_query})
        assert response.status_code == 201, response.text
    put_bundle(api, auth, stage, {"sample_0.json": {"name": "a" * 64, "marker": marker}})
    wait_until(lambda: len(receiver.accepted()) >= 1, 30, "the plain subscription's notification")
    assert [r.payload()["es_query"] for r in receiver.accepted()] == [plain]
    started = time.monotonic()
    response = http.post(f"{api}/search", params={"replica": "aws"}, json={"es_query": pathological},
                         timeout=30)
    assert response.status_code == 200 and response.json()["total_hits"] == 0, response.text
    assert time.monotonic() - started < 5
