"""Webhook payloads and delivery (``notifications``, ``delivery``) against a real local receiver.

The receiver (``devtools.receivers.Receiver``) is a threaded http.server on 127.0.0.1 that verifies
what it gets the way a subscriber would, independently of the code under test (both signatures
recomputed, digests checked); a request whose signatures do not verify gets a 401, so a delivery
only succeeds when they do. The only stand-ins are DNS answers (to give a name a chosen address).
"""
import datetime
import email.utils
import json
import logging
import select
import socket
import ssl
import time
import uuid

import pytest

from shared.config import Settings
from shared.exceptions import InvalidParameter, Unavailable
from devtools.certificates import issue_server_certificate
from devtools.receivers import Receiver
from devtools.waiting import wait_until

from services.notifier.bounded_jmespath import JMESPathLimits
from services.notifier.delivery import (ATTEMPT_HEADER, PermanentDeliveryError, RetryableDeliveryError, deliver,
                                        validate_callback_url, validate_subscription)
from services.notifier.notifications import (ATTACHMENT_MAX_BYTES, build_payload, evaluate_attachments,
                                             jmespath_matches, validate_attachments, validate_jmespath_query)

SECRET = "s3cr3t-hmac-key-for-tests"
KEY_ID = "subscriber-key-1"


@pytest.fixture
def receiver():
    server = Receiver({KEY_ID: SECRET.encode()})
    yield server
    server.stop()


def settings(**overrides):
    config = {"DSS_NOTIFY_ALLOWED_HOSTS": "127.0.0.1/32", "DSS_NOTIFY_CONNECT_TIMEOUT": 2,
              "DSS_NOTIFY_READ_TIMEOUT": 2}
    config.update(overrides)
    return Settings.from_config(config, environ={})


def subscription(url, **fields):
    return {"uuid": str(uuid.uuid4()), "callback_url": url, "jmespath_query": "event_type=='CREATE'", **fields}


# A string twice as long at each of 40 steps (2**40 times 'ab'), in 760 characters.
DOUBLING = "'ab'" + " | join('', [@,@])" * 40
# Stored before the cost model: 20 steps make 2 MiB, which the old code built on every event.
STORED_DOUBLING = "'ab'" + " | join('', [@,@])" * 20

BUNDLE_UUID = "11111111-2222-4333-8444-555555555555"
BUNDLE_VERSION = "2024-01-02T030405.000000Z"


def event_document(**extra):
    return {
        "event_type": "CREATE",
        "bundle_info": {"uuid": BUNDLE_UUID, "version": BUNDLE_VERSION},
        "manifest": {"version": BUNDLE_VERSION, "files": [{"name": "cell_suspension_0.json", "size": 12}]},
        "files": {"cell_suspension_json": [{"organ": "heart", "count": 0, "donors": ["d1", "d2"]}]},
        **extra,
    }


def payload_for(sub):
    return build_payload(sub, event_document(), "tx-1", "2024-01-02T03:04:05.000000Z",
                         f"https://dss.example/v1/bundles/{BUNDLE_UUID}?version={BUNDLE_VERSION}&replica=aws")


# --- delivery: encodings, methods, headers, signatures -----------------------------------------------

def test_signed_json_post_verifies_in_both_forms(receiver):
    sub = subscription(receiver.url("/hook?channel=a%20b"), hmac_secret_key=SECRET, hmac_key_id=KEY_ID)
    payload = payload_for(sub)
    result = deliver(sub, payload, 1, settings())
    assert (result.status, result.attempt, result.address, result.signed) == (200, 1, "127.0.0.1", True)
    [got] = receiver.requests
    assert got.key_ids == (KEY_ID, KEY_ID)
    assert got.method == "POST" and got.path == "/hook?channel=a%20b"
    assert got.headers["content-type"] == "application/json"
    assert got.headers[ATTEMPT_HEADER.lower()] == "1"
    assert got.headers["user-agent"].startswith("dss-notifier/")
    assert got.payload() == payload


def test_key_id_defaults_to_the_subscription_uuid(receiver):
    sub = subscription(receiver.url(), hmac_secret_key=SECRET)
    receiver.keys[sub["uuid"]] = SECRET.encode()
    deliver(sub, payload_for(sub), 1, settings())
    assert receiver.requests[0].key_ids == (sub["uuid"], sub["uuid"])


def test_a_wrong_key_is_refused_by_the_receiver(receiver):
    """The receiver's checks are not vacuous: signed with another key, the delivery is a 401."""
    sub = subscription(receiver.url(), hmac_secret_key="another key", hmac_key_id=KEY_ID)
    with pytest.raises(RetryableDeliveryError) as failure:
        deliver(sub, payload_for(sub), 1, settings())
    assert (failure.value.code, failure.value.status) == ("http_status", 401)
    assert "signature mismatch" in receiver.requests[0].error


def test_signed_multipart_put_with_form_fields(receiver):
    sub = subscription(receiver.url("/upload"), method="PUT", encoding="multipart/form-data",
                       form_fields={"token": "abc", "note": "grüße"}, payload_form_field="data",
                       hmac_secret_key=SECRET, hmac_key_id=KEY_ID)
    payload = payload_for(sub)
    deliver(sub, payload, 2, settings())
    [got] = receiver.requests
    assert got.method == "PUT" and got.key_ids == (KEY_ID, KEY_ID)
    assert got.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert got.headers[ATTEMPT_HEADER.lower()] == "2"
    form = got.form()
    assert list(form) == ["token", "note", "data"]
    assert form["token"] == "abc" and form["note"] == "grüße"
    assert json.loads(form["data"]) == payload


def test_unsigned_multipart_post_uses_the_default_payload_field(receiver):
    sub = subscription(receiver.url(), encoding="multipart/form-data", form_fields={"a": "1"})
    result = deliver(sub, payload_for(sub), 1, settings())
    assert result.signed is False
    [got] = receiver.requests
    assert "authorization" not in got.headers and "signature" not in got.headers
    assert got.key_ids is None
    assert got.method == "POST" and set(got.form()) == {"a", "payload"}
    assert got.payload()["subscription_id"] == sub["uuid"]


def test_null_options_mean_their_defaults(receiver):
    sub = subscription(receiver.url(), method=None, encoding=None, payload_form_field=None, form_fields=None,
                       hmac_key_id=None, attachments=None)
    validate_subscription(sub, settings())
    deliver(sub, payload_for(sub), 1, settings())
    [got] = receiver.requests
    assert got.method == "POST" and got.headers["content-type"] == "application/json"


def test_the_signing_clock(receiver):
    """Date and the RFC 9421 ``created`` come from the clock given (here two minutes ago, which both
    verifications still accept)."""
    now = int(time.time()) - 120
    sub = subscription(receiver.url(), hmac_secret_key=SECRET, hmac_key_id=KEY_ID)
    deliver(sub, payload_for(sub), 1, settings(), now=now)
    [got] = receiver.requests
    assert got.key_ids == (KEY_ID, KEY_ID)
    assert got.headers["date"] == email.utils.formatdate(now, usegmt=True)
    assert f";created={now};" in got.headers["signature-input"]


def test_the_attempt_number_is_sent(receiver):
    sub = subscription(receiver.url())
    for attempt in (1, 5, 12):
        deliver(sub, payload_for(sub), attempt, settings())
    assert [r.headers[ATTEMPT_HEADER.lower()] for r in receiver.requests] == ["1", "5", "12"]


def test_a_receiver_failing_twice_gets_one_accepted_delivery(receiver):
    sub = subscription(receiver.url("/flaky"), hmac_secret_key=SECRET, hmac_key_id=KEY_ID)
    payload = payload_for(sub)
    outcomes = []
    for attempt in (1, 2, 3):
        try:
            outcomes.append(deliver(sub, payload, attempt, settings()).status)
        except RetryableDeliveryError as error:
            outcomes.append(error.status)
    assert outcomes == [503, 503, 200]
    assert [r.headers[ATTEMPT_HEADER.lower()] for r in receiver.requests] == ["1", "2", "3"]


# --- what does not count -------------------------------------------------------------------------

def test_redirects_are_not_followed(receiver, caplog):
    sub = subscription(receiver.url("/redirect"))
    with caplog.at_level(logging.DEBUG), pytest.raises(RetryableDeliveryError) as failure:
        deliver(sub, payload_for(sub), 1, settings())
    assert (failure.value.code, failure.value.status, failure.value.retryable) == ("redirected", 302, True)
    assert [r.path for r in receiver.requests] == ["/redirect"]  # the Location was never requested
    assert "do-not-log" not in str(failure.value) and "do-not-log" not in caplog.text


@pytest.mark.parametrize("status", [500, 503, 408, 429, 404])
def test_non_2xx_answers_are_retryable(receiver, status):
    sub = subscription(receiver.url(f"/status/{status}"))
    with pytest.raises(RetryableDeliveryError) as failure:
        deliver(sub, payload_for(sub), 1, settings())
    assert (failure.value.code, failure.value.status, failure.value.retryable) == ("http_status", status, True)
    assert "nope" in failure.value.title  # an excerpt of the answer, for whoever reads the dead letter


def test_a_slow_answer_times_out_and_is_retryable(receiver):
    sub = subscription(receiver.url("/slow"))  # answers 200 after 1.5 s
    with pytest.raises(RetryableDeliveryError) as failure:
        deliver(sub, payload_for(sub), 1, settings(DSS_NOTIFY_READ_TIMEOUT=0.3))
    assert failure.value.code == "read_timeout"  # not the 200 sent at 1.5 s: the read timeout ended the attempt


def test_an_answer_trickled_past_the_attempt_deadline_is_cut_off_and_retryable(receiver):
    # A byte every ~0.1 s passes a 2 s read timeout at every wait; only the deadline of the whole
    # attempt ends it (the receiver would need 6 s to answer 200).
    sub = subscription(receiver.url("/trickle/6"))
    started = time.monotonic()
    with pytest.raises(RetryableDeliveryError) as failure:
        deliver(sub, payload_for(sub), 1, settings(DSS_NOTIFY_READ_TIMEOUT=2, DSS_NOTIFY_ATTEMPT_TIMEOUT=1))
    assert failure.value.code == "attempt_timeout" and failure.value.retryable
    assert time.monotonic() - started < 5  # generous (a loaded machine), still well short of the 6 s answer
    # The same receiver within a deadline it can meet: delivered.
    result = deliver(subscription(receiver.url("/trickle/0.5")), payload_for(sub), 1,
                     settings(DSS_NOTIFY_ATTEMPT_TIMEOUT=5))
    assert result.status == 200


def test_a_connect_timeout_is_retryable():
    # A listener whose backlog is full: the kernel drops further SYNs, so connecting hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(filler)
        # With a backlog of 0 one connection fills the queue (Linux): from then on SYNs are dropped.
        wait_until(lambda: select.select([], fillers, [], 0)[1], timeout=5, interval=0.01,
                   what="a connection in the listener's backlog")
        sub = subscription(f"http://127.0.0.1:{port}/hook")
        started = time.monotonic()
        with pytest.raises(RetryableDeliveryError) as failure:
            deliver(sub, payload_for(sub), 1, settings(DSS_NOTIFY_CONNECT_TIMEOUT=0.3))
        assert failure.value.code == "connect_timeout"
        assert time.monotonic() - started < 5  # generous (a loaded machine): the 0.3 s given, not the default 10 s
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_a_refused_connection_is_retryable():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    sub = subscription(f"http://127.0.0.1:{port}/hook")
    with pytest.raises(RetryableDeliveryError) as failure:
        deliver(sub, payload_for(sub), 1, settings())
    assert failure.value.code == "connection_failed"


def test_secrets_are_not_logged(receiver, caplog):
    sub = subscription(receiver.url("/status/500?token=query-secret"), hmac_secret_key=SECRET, hmac_key_id=KEY_ID)
    with caplog.at_level(logging.DEBUG, logger="shared"), pytest.raises(RetryableDeliveryError):
        deliver(sub, payload_for(sub), 1, settings())
    deliver(subscription(receiver.url(), hmac_secret_key=SECRET, hmac_key_id=KEY_ID), {"x": 1}, 1, settings())
    sent = [r.headers for r in receiver.requests]
    signatures = [h["signature"] for h in sent] + [h["authorization"].rsplit("signature=", 1)[1] for h in sent]
    assert caplog.records  # the attempts were logged ...
    for secret in [SECRET, "query-secret", *signatures]:
        assert secret not in caplog.text  # ... without the key, the signatures or the URL's query


# --- SSRF: where deliveries may go -------------------------------------------------------------

def test_loopback_is_refused_unless_allowed(receiver):
    sub = subscription(receiver.url())
    with pytest.raises(PermanentDeliveryError) as failure:
        deliver(sub, payload_for(sub), 1, settings(DSS_NOTIFY_ALLOWED_HOSTS=""))
    assert failure.value.code == "callback_url_forbidden_address" and failure.value.retryable is False
    assert "loopback" in failure.value.title
    assert receiver.requests == []
    with pytest.raises(InvalidParameter) as invalid:
        validate_callback_url(sub["callback_url"], settings(DSS_NOTIFY_ALLOWED_HOSTS=""))
    assert invalid.value.error_code == "callback_url_forbidden_address"
    # A CIDR that covers it, or the host's name, permits it.
    assert deliver(sub, payload_for(sub), 1, settings(DSS_NOTIFY_ALLOWED_HOSTS="10.0.0.0/8, 127.0.0.0/8")).status == 200
    assert validate_callback_url(sub["callback_url"], settings()) == sub["callback_url"]


def test_localhost_allowed_by_name(receiver):
    # If localhost resolves to ::1 first, where nothing listens, the next permitted address is tried.
    sub = subscription(receiver.url(host="localhost"), hmac_secret_key=SECRET, hmac_key_id=KEY_ID)
    with pytest.raises(PermanentDeliveryError):
        deliver(sub, payload_for(sub), 1, settings(DSS_NOTIFY_ALLOWED_HOSTS="other.example,10.0.0.0/8"))
    result = deliver(sub, payload_for(sub), 1, settings(DSS_NOTIFY_ALLOWED_HOSTS="localhost"))
    assert result.status == 200 and result.address == "127.0.0.1"
    [got] = receiver.requests
    assert got.headers["host"] == f"localhost:{receiver.port}" and got.key_ids == (KEY_ID, KEY_ID)


@pytest.mark.parametrize("url, category", [
    ("http://10.1.2.3/hook", "private"),
    ("http://172.16.0.1/hook", "private"),
    ("http://192.168.1.1:8080/hook", "private"),
    ("http://[fd00::1]/hook", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[fe80::1]/hook", "link-local"),
    ("http://127.0.0.2/hook", "loopback"),
    ("http://[::1]/hook", "loopback"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ("http://[::ffff:169.254.169.254]/hook", "link-local"),
    ("http://[64:ff9b::a00:1]/hook", "private"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("http://224.0.0.1/hook", "multicast"),
    ("http://240.0.0.1/hook", "private"),
    ("http://100.64.0.1/hook", "non-public"),
])
def test_non_public_addresses_are_refused(url, category):
    sub = subscription(url)
    started = time.monotonic()
    with pytest.raises(PermanentDeliveryError) as failure:
        deliver(sub, payload_for(sub), 1, settings(DSS_NOTIFY_ALLOWED_HOSTS="localhost"))
    assert failure.value.code == "callback_url_forbidden_address"
    assert f"a {category} address" in failure.value.title
    # Refused before any connection attempt (the code says so; the bound, generous for a loaded
    # machine, is far below the 10 s default connect timeout an attempt could wait).
    assert time.monotonic() - started < 5
    with pytest.raises(InvalidParameter) as invalid:
        validate_callback_url(url, settings(DSS_NOTIFY_ALLOWED_HOSTS=""))
    assert invalid.value.error_code == "callback_url_forbidden_address"


class FakeDNS:
    """A stand-in for DNS: chosen answers per name, counting lookups."""

    def __init__(self, answers):
        self.answers, self.lookups = answers, []

    def __call__(self, host, port):
        self.lookups.append(host)
        answer = self.answers[host]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_names_resolving_to_private_addresses_are_refused():
    dns = FakeDNS({"metadata.internal": ["169.254.169.254"], "intranet.example": ["10.0.0.5", "fd00::5"],
                   "public.example": ["93.184.215.14"]})
    for name in ("metadata.internal", "intranet.example"):
        sub = subscription(f"https://{name}/hook")
        with pytest.raises(PermanentDeliveryError) as failure:
            deliver(sub, payload_for(sub), 1, settings(), resolve=dns)
        assert failure.value.code == "callback_url_forbidden_address"
        with pytest.raises(InvalidParameter):
            validate_callback_url(sub["callback_url"], settings(), resolve=dns)
    normalised = validate_callback_url("https://PUBLIC.example./hook", settings(), resolve=dns)
    assert normalised == "https://public.example/hook"


def test_the_checked_address_is_the_one_connected_to(receiver):
    """DNS is asked once; the connection goes to the address that was checked while Host (and so
    the signed target URI) keeps the name: a second, different DNS answer could not be used."""
    dns = FakeDNS({"hooks.example": ["10.9.9.9", "127.0.0.1"]})  # the first is refused, the second allowed
    sub = subscription(f"http://hooks.example:{receiver.port}/hook", hmac_secret_key=SECRET, hmac_key_id=KEY_ID)
    result = deliver(sub, payload_for(sub), 1, settings(), resolve=dns)
    assert result.address == "127.0.0.1" and dns.lookups == ["hooks.example"]
    [got] = receiver.requests
    assert got.headers["host"] == f"hooks.example:{receiver.port}"
    assert got.key_ids == (KEY_ID, KEY_ID)  # verified over http://hooks.example:PORT/hook


def test_the_next_permitted_address_is_tried_when_one_refuses_connections(receiver):
    dns = FakeDNS({"hooks.example": ["127.0.0.3", "127.0.0.1"]})  # nothing listens on 127.0.0.3
    sub = subscription(f"http://hooks.example:{receiver.port}/hook")
    result = deliver(sub, payload_for(sub), 1, settings(DSS_NOTIFY_ALLOWED_HOSTS="127.0.0.0/8"), resolve=dns)
    assert result.address == "127.0.0.1" and len(receiver.requests) == 1


def test_dns_failures():
    dns = FakeDNS({"gone.example": socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
                   "flaky.example": socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")})
    with pytest.raises(InvalidParameter) as invalid:
        validate_callback_url("https://gone.example/", settings(), resolve=dns)
    assert invalid.value.error_code == "callback_url_unresolvable"
    with pytest.raises(Unavailable):
        validate_callback_url("https://flaky.example/", settings(), resolve=dns)
    sub = subscription("https://gone.example/")
    with pytest.raises(RetryableDeliveryError) as failure:
        deliver(sub, payload_for(sub), 1, settings(), resolve=dns)
    assert failure.value.code == "dns_failed"


@pytest.mark.parametrize("url, code", [
    ("ftp://example.org/x", "callback_url_scheme"),
    ("file:///etc/passwd", "callback_url_scheme"),
    ("gopher://127.0.0.1:70/", "callback_url_scheme"),
    ("example.org/hook", "callback_url_scheme"),
    ("http:///nohost", "callback_url_invalid"),
    ("http://user:pw@example.org/", "callback_url_invalid"),
    ("http://example.org/a b", "callback_url_invalid"),
    ("http://example.org:99999/", "callback_url_invalid"),
    ("http://exa_mple.org/", "callback_url_invalid"),
    ("http://example.org/" + "a" * 2100, "callback_url_invalid"),
    (None, "callback_url_invalid"),
])
def test_malformed_callback_urls(url, code):
    dns = FakeDNS({"example.org": ["93.184.215.14"]})
    with pytest.raises(InvalidParameter) as invalid:
        validate_callback_url(url, settings(), resolve=dns)
    assert invalid.value.error_code == code
    with pytest.raises(PermanentDeliveryError) as failure:
        deliver(subscription(url), {"x": 1}, 1, settings(), resolve=dns)
    assert failure.value.code == code
    assert dns.lookups == []


# --- HTTPS ---------------------------------------------------------------------------------------------

@pytest.fixture
def tls_receiver(tmp_path):
    """A receiver on 127.0.0.1 with a certificate for hooks.example from a CA of the test's own."""
    ca_bundle, certificate = issue_server_certificate(tmp_path, names=["hooks.example"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate)
    server = Receiver({KEY_ID: SECRET.encode()}, tls=context)
    server.ca_bundle = ca_bundle
    yield server
    server.stop()


def test_https_keeps_the_name_for_sni_and_the_certificate_check(tls_receiver):
    dns = FakeDNS({"hooks.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})
    sub = subscription(tls_receiver.url("/tls", host="hooks.example"), hmac_secret_key=SECRET, hmac_key_id=KEY_ID)
    result = deliver(sub, payload_for(sub), 1, settings(DSS_NOTIFY_CA_BUNDLE=tls_receiver.ca_bundle), resolve=dns)
    assert (result.status, result.address) == (200, "127.0.0.1")
    assert tls_receiver.server_names == ["hooks.example"]
    [got] = tls_receiver.requests
    assert got.headers["host"] == f"hooks.example:{tls_receiver.port}"
    assert got.key_ids == (KEY_ID, KEY_ID)  # verified over https://hooks.example:PORT/tls
    # A certificate the public CAs did not issue, or one for another name, is a (retryable) TLS failure.
    for url, ca_bundle in [(sub["callback_url"], ""),
                           (tls_receiver.url("/tls", host="other.example"), tls_receiver.ca_bundle)]:
        with pytest.raises(RetryableDeliveryError) as failure:
            deliver(subscription(url), {"x": 1}, 1, settings(DSS_NOTIFY_CA_BUNDLE=ca_bundle), resolve=dns)
        assert failure.value.code == "tls_failed"
    assert len(tls_receiver.requests) == 1


# --- subscriptions: validation -------------------------------------------------------------------------

@pytest.mark.parametrize("fields, code", [
    ({"method": "GET"}, "invalid_method"),
    ({"encoding": "text/plain"}, "invalid_encoding"),
    ({"form_fields": ["a"]}, "invalid_form_fields"),
    ({"form_fields": {"a": 1}}, "invalid_form_fields"),
    ({"form_fields": {"payload": "x"}}, "invalid_payload_form_field"),
    ({"payload_form_field": ""}, "invalid_payload_form_field"),
    ({"hmac_secret_key": ""}, "invalid_hmac_secret_key"),
    ({"hmac_key_id": 'a"b'}, "invalid_hmac_key_id"),
    ({"jmespath_query": "files.["}, "invalid_jmespath_query"),
    ({"attachments": {"x": {"type": "jmespath", "expression": "nope("}}}, "invalid_attachment_expression"),
    ({"jmespath_query": DOUBLING}, "jmespath_too_costly"),
    ({"attachments": {"x": {"type": "jmespath", "expression": DOUBLING}}}, "jmespath_too_costly"),
])
def test_bad_subscriptions_are_400(fields, code):
    sub = {"callback_url": "https://hooks.example/x", **fields}
    with pytest.raises(InvalidParameter) as invalid:
        validate_subscription(sub, settings(), resolve=FakeDNS({"hooks.example": ["93.184.215.14"]}))
    assert invalid.value.error_code == code


def test_the_growth_allowed_to_expressions_is_a_setting():
    sub = {"callback_url": "https://8.8.8.8/", "jmespath_query": "'ab'" + " | join('', [@,@])" * 8}
    validate_subscription(sub, settings())
    with pytest.raises(InvalidParameter) as invalid:
        validate_subscription(sub, settings(DSS_NOTIFY_JMESPATH_MAX_GROWTH=16))
    assert invalid.value.error_code == "jmespath_too_costly"


def test_a_good_subscription_validates():
    sub = {"callback_url": "https://Hooks.Example/x?y=1", "method": "PUT", "encoding": "multipart/form-data",
           "form_fields": {"k": "v"}, "payload_form_field": "body", "hmac_secret_key": "k", "hmac_key_id": "id-1",
           "jmespath_query": "event_type=='CREATE' && files.cell_suspension_json[0].organ=='heart'",
           "attachments": {"organs": {"type": "jmespath", "expression": "files.*[].organ"}}}
    assert validate_subscription(sub, settings(), resolve=FakeDNS({"hooks.example": ["93.184.215.14"]})) == \
        "https://hooks.example/x?y=1"
    # An Elasticsearch subscription's jmespath_query is not judged here (the search backend judges es_query).
    validate_subscription({"callback_url": "https://8.8.8.8/", "es_query": {"match_all": {}}}, settings())


@pytest.mark.parametrize("expression", ["", "   ", "foo[", "foo ||", "unknown_fn(@)", "length(@, @)", "merge()",
                                        "a" * 5000, 42, None])
def test_bad_jmespath_queries(expression):
    with pytest.raises(InvalidParameter) as invalid:
        validate_jmespath_query(expression)
    assert invalid.value.error_code == "invalid_jmespath_query"


@pytest.mark.parametrize("attachments, code", [
    (["not", "an", "object"], "invalid_attachments"),
    ({f"a{i}": {"type": "jmespath", "expression": "a"} for i in range(65)}, "invalid_attachments"),
    ({"_errors": {"type": "jmespath", "expression": "a"}}, "invalid_attachment_name"),
    ({"": {"type": "jmespath", "expression": "a"}}, "invalid_attachment_name"),
    ({"has space": {"type": "jmespath", "expression": "a"}}, "invalid_attachment_name"),
    ({"x": "a"}, "invalid_attachment"),
    ({"x": {"type": "jmespath", "expression": "a", "extra": 1}}, "invalid_attachment"),
    ({"x": {"type": "es", "expression": "a"}}, "invalid_attachment_type"),
    ({"x": {"expression": "a"}}, "invalid_attachment_type"),
    ({"x": {"type": "jmespath"}}, "invalid_attachment_expression"),
    ({"x": {"type": "jmespath", "expression": "a[?"}}, "invalid_attachment_expression"),
    ({"x": {"type": "jmespath", "expression": "sort_by(a)"}}, "invalid_attachment_expression"),
])
def test_bad_attachments(attachments, code):
    with pytest.raises(InvalidParameter) as invalid:
        validate_attachments(attachments)
    assert invalid.value.error_code == code


def test_good_attachments_validate():
    good = {"organ": {"type": "jmespath", "expression": "files.cell_suspension_json[].organ"},
            "n-files.v2": {"type": "jmespath", "expression": "length(manifest.files)"},
            "merged": {"type": "jmespath", "expression": "merge(`{}`, bundle_info)"}}
    for attachments in (None, {}, good):
        assert validate_attachments(attachments) is None  # accepted: refusals raise InvalidParameter
    # ... and what was accepted evaluates, every attachment without an error.
    document = {"files": {"cell_suspension_json": [{"organ": "heart"}]}, "manifest": {"files": [{}, {}]},
                "bundle_info": {"uuid": "u"}}
    assert evaluate_attachments(good, document) == {"organ": ["heart"], "n-files.v2": 2, "merged": {"uuid": "u"}}


# --- payloads and attachments ---------------------------------------------------------------------------

def test_payload_of_a_jmespath_subscription():
    sub = subscription("https://hooks.example/", attachments={
        "organs": {"type": "jmespath", "expression": "files.cell_suspension_json[].organ"},
        "donor_count": {"type": "jmespath", "expression": "length(files.cell_suspension_json[0].donors)"},
        "missing": {"type": "jmespath", "expression": "files.nothing_here"},
        "broken": {"type": "jmespath", "expression": "abs(event_type)"},
    })
    timestamp = datetime.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=datetime.timezone.utc)
    payload = build_payload(sub, event_document(), "tx-42", timestamp, "https://dss.example/v1/bundles/x")
    assert payload == {
        "transaction_id": "tx-42",
        "subscription_id": sub["uuid"],
        "event_type": "CREATE",
        "event_timestamp": "2024-01-02T03:04:05.000006Z",
        "bundle_url": "https://dss.example/v1/bundles/x",
        "match": {"bundle_uuid": BUNDLE_UUID, "bundle_version": BUNDLE_VERSION},
        "jmespath_query": "event_type=='CREATE'",
        "attachments": {"organs": ["heart"], "donor_count": 2, "missing": None,
                        "_errors": {"broken": payload["attachments"]["_errors"]["broken"]}},
    }
    assert "abs()" in payload["attachments"]["_errors"]["broken"]
    json.dumps(payload)  # it must serialise as it is


def test_payload_of_an_elasticsearch_subscription():
    es_query = {"query": {"match": {"files.cell_suspension_json.organ": "heart"}}}
    sub = {"uuid": "sub-1", "callback_url": "https://hooks.example/", "es_query": es_query}
    index_document = {"uuid": BUNDLE_UUID, "manifest": {"version": BUNDLE_VERSION}, "files": {}}
    payload = build_payload(sub, index_document, "tx", "t", "u")
    assert payload["es_query"] == es_query and "jmespath_query" not in payload
    assert payload["match"] == {"bundle_uuid": BUNDLE_UUID, "bundle_version": BUNDLE_VERSION}
    assert payload["attachments"] == {}
    tombstone = event_document(event_type="TOMBSTONE")
    assert build_payload(sub, tombstone, "tx", "t", "u")["event_type"] == "TOMBSTONE"


def test_oversized_attachments_become_errors():
    document = {"big": "x" * (ATTACHMENT_MAX_BYTES + 1), "half": "y" * (ATTACHMENT_MAX_BYTES // 2 + 100),
                "small": "z"}
    definitions = {name: {"type": "jmespath", "expression": name} for name in ("big", "small")}
    attachments = evaluate_attachments(definitions, document)
    assert attachments["small"] == "z" and "big" not in attachments
    assert "too large" in attachments["_errors"]["big"] and str(ATTACHMENT_MAX_BYTES) in attachments["_errors"]["big"]
    # Each under the limit, together over it: the largest go until the rest fit.
    definitions = {"a": {"type": "jmespath", "expression": "half"},
                   "b": {"type": "jmespath", "expression": "[half, small]"},
                   "c": {"type": "jmespath", "expression": "small"}}
    attachments = evaluate_attachments(definitions, document)
    assert set(attachments) == {"a", "c", "_errors"} and list(attachments["_errors"]) == ["b"]
    assert len(json.dumps(attachments)) < ATTACHMENT_MAX_BYTES + 1024


@pytest.mark.parametrize("query, expected", [
    (None, True),
    ("event_type=='CREATE'", True),
    ("event_type=='DELETE'", False),
    ("files.cell_suspension_json[0].count", True),  # 0 is true in JMESPath
    ("files.cell_suspension_json[?organ=='liver']", False),  # []
    ("files.cell_suspension_json[?organ=='heart']", True),
    ("files.nothing", False),  # null
    ("`{}`", False),
    ("''", False),
    ("`false`", False),
    ("abs(event_type)", False),  # an error on this document: no match
])
def test_jmespath_matches_with_jmespath_truthiness(query, expected):
    assert jmespath_matches(query, event_document()) is expected


def test_the_retry_schedule_is_the_original_dss_one_unless_configured():
    assert tuple(settings().notify_retry_delays) == (60, 600, 3600, 21600, 61200) + (86400,) * 6
    assert tuple(settings(DSS_NOTIFY_RETRY_DELAYS="1,2,3").notify_retry_delays) == (1, 2, 3)


def test_a_query_failing_with_a_python_error_on_a_document_does_not_match():
    # jmespath lets these through as TypeError / OverflowError; they must not fail the event.
    document = event_document(mixed=[{"x": 1}, {"x": "s"}], huge=float("inf"))
    assert jmespath_matches("max_by(mixed, &x)", document) is False
    assert jmespath_matches("ceil(huge)", document) is False
    assert jmespath_matches("mixed[0].x < mixed[1].x", document) is False  # null, not a TypeError


def test_an_expression_stored_before_the_cost_model_is_refused_when_evaluated():
    with pytest.raises(InvalidParameter) as raised:
        jmespath_matches(STORED_DOUBLING, event_document())
    assert raised.value.error_code == "jmespath_too_costly" and "jmespath_query" in raised.value.title
    with pytest.raises(InvalidParameter) as raised:
        evaluate_attachments({"organ": {"type": "jmespath", "expression": "files.cell_suspension_json[0].organ"},
                              "big": {"type": "jmespath", "expression": STORED_DOUBLING}}, event_document())
    assert raised.value.error_code == "jmespath_too_costly" and "attachment 'big'" in raised.value.title


def test_evaluation_that_spends_its_budget_is_an_error_of_the_subscription():
    limits = JMESPathLimits(max_growth=256, max_steps=250, max_chars=500)
    document = event_document(items=list(range(200)))
    assert jmespath_matches("length(items) > `1`", document, limits.budget()) is True
    with pytest.raises(InvalidParameter) as raised:
        jmespath_matches("items[?@ > `1`]", document, limits.budget())
    assert raised.value.error_code == "jmespath_limit_exceeded" and "250 steps" in raised.value.title
    with pytest.raises(InvalidParameter) as raised:
        evaluate_attachments({"text": {"type": "jmespath", "expression": "to_string(@)"}}, document,
                             budget=limits.budget())
    assert raised.value.error_code == "jmespath_limit_exceeded" and "attachment 'text'" in raised.value.title
    with pytest.raises(InvalidParameter) as raised:  # measuring a result is a step per JSON value too
        evaluate_attachments({"all": {"type": "jmespath", "expression": "[items, items]"}}, document,
                             budget=limits.budget())
    assert raised.value.error_code == "jmespath_limit_exceeded" and "attachment 'all'" in raised.value.title
    # The query and the attachments of a notification share one budget.
    sub = subscription("https://hooks.example/", jmespath_query="items[0:20]",
                       attachments={"few": {"type": "jmespath", "expression": "items[0:20]"}})
    budget = limits.budget()
    assert jmespath_matches(sub["jmespath_query"], document, budget) is True
    with pytest.raises(InvalidParameter):
        build_payload(sub, document, "tx", "t", "u", budget)


def test_a_type_error_is_reported_without_the_value():
    document = event_document(blob={"key": "v" * 10_000})
    attachments = evaluate_attachments({"bad": {"type": "jmespath", "expression": "abs(blob)"}}, document)
    message = attachments["_errors"]["bad"]
    assert "abs()" in message and "vvvv" not in message and len(message) < 200
