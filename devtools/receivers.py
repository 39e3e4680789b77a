"""Webhook receivers for tests: a real HTTP server that checks both signatures of every delivery
the way a subscriber would."""
from __future__ import annotations

import base64
import datetime
import email
import email.policy
import email.utils
import hashlib
import hmac
import http.server
import json
import re
import ssl
import threading
import time


# --- webhook receivers ------------------------------------------------------------------------------
# A threaded http.server on 127.0.0.1 that verifies what it gets the way a subscriber would,
# independently of services.notifier.delivery: the draft-cavage Authorization signature and the Digest header
# are recomputed with hmac/hashlib; the RFC 9421 signature is checked with the library's verifier
# and recomputed by hand from the RFC's signature-base rules; the Content-Digest is recomputed. A
# request whose signatures do not verify gets a 401, so a delivery only succeeds when they do.
# Paths choose the answer: /redirect (302), /status/N (N), /slow (1.5 s), /flaky (503 twice, then
# 200), /flaky/TIMES/STATUS (STATUS the first TIMES times), anything else 200.

def verify_cavage(method, path, headers, body, keys):
    """Check ``Authorization: Signature ...`` (draft-cavage-http-signatures-10, hmac-sha256) and the
    Digest it covers; return the key id."""
    authorization = headers["authorization"]
    assert authorization.startswith("Signature ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', authorization[len("Signature "):]))
    assert params["algorithm"] == "hmac-sha256"
    assert params["headers"] == "(request-target) host date digest"
    assert headers["digest"] == "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()
    date = email.utils.parsedate_to_datetime(headers["date"])
    assert abs((datetime.datetime.now(datetime.timezone.utc) - date).total_seconds()) < 300
    signing_string = "\n".join([f"(request-target): {method.lower()} {path}", f"host: {headers['host']}",
                                f"date: {headers['date']}", f"digest: {headers['digest']}"])
    expected = hmac.new(keys[params["keyId"]], signing_string.encode(), hashlib.sha256).digest()
    assert hmac.compare_digest(base64.b64decode(params["signature"]), expected), "draft-cavage signature mismatch"
    return params["keyId"]


class _Message:
    """What http_message_signatures reads from a request: method, absolute URL, headers."""

    def __init__(self, method, url, headers):
        self.method, self.url, self.headers = method, url, headers


def verify_rfc9421(method, url, headers, body, keys):
    """Check Signature-Input / Signature with the library's verifier, and again by hand (RFC 9421
    section 2.5 signature base, HMAC-SHA256), plus Content-Digest (RFC 9530); return the key id."""
    assert headers["content-digest"] == "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    from http_message_signatures import HTTPMessageVerifier, MappingKeyResolver, algorithms
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.HMAC_SHA256,
                                   key_resolver=MappingKeyResolver(public_keys=keys, private_keys={}))
    [result] = verifier.verify(_Message(method, url, headers), expect_tag="dss-webhook", body=body,
                               require_components=("@method", "@target-uri", "content-type", "content-digest"))
    assert result.label == "dss" and result.parameters["alg"] == "hmac-sha256"

    label, params = headers["signature-input"].split("=", 1)
    assert label == "dss"
    components = re.match(r'\(([^)]*)\)', params).group(1).split()
    values = {'"@method"': method, '"@target-uri"': url, '"content-type"': headers["content-type"],
              '"content-digest"': headers["content-digest"]}
    base = "\n".join(f"{c}: {values[c]}" for c in components) + f'\n"@signature-params": {params}'
    key_id = re.search(r';keyid="([^"]*)"', params).group(1)
    signature = re.fullmatch(r"dss=:([A-Za-z0-9+/=]+):", headers["signature"]).group(1)
    expected = hmac.new(keys[key_id], base.encode(), hashlib.sha256).digest()
    assert hmac.compare_digest(base64.b64decode(signature), expected), "RFC 9421 signature mismatch"
    return key_id


class Received:
    def __init__(self, method, path, headers, body):
        self.method, self.path, self.headers, self.body = method, path, headers, body
        self.key_ids = None  # (cavage, rfc9421) when both signatures verified
        self.status = None  # what the receiver answered

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def form(self):
        """The parts of a multipart/form-data body, parsed with the e-mail package."""
        raw = f"Content-Type: {self.headers['content-type']}\r\nMIME-Version: 1.0\r\n\r\n".encode() + self.body
        message = email.message_from_bytes(raw, policy=email.policy.HTTP)
        assert message.is_multipart()
        return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True).decode()
                for part in message.iter_parts()}

    def payload(self):
        if self.headers["content-type"] == "application/json":
            return json.loads(self.body)
        return json.loads(self.form()["payload"])


class _ReceiverHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # the test output is not the place for an access log
        pass

    def do_POST(self):
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = {name.lower(): value for name, value in self.headers.items()}
        record = self._record = Received(self.command, self.path, headers, body)
        receiver.requests.append(record)
        if "signature" in headers or "authorization" in headers:
            url = f"{receiver.scheme}://{headers['host']}{self.path}"
            try:
                record.key_ids = (verify_cavage(self.command, self.path, headers, body, receiver.keys),
                                  verify_rfc9421(self.command, url, headers, body, receiver.keys))
            except Exception as error:  # a subscriber refuses what does not verify
                record.error = repr(error)
                return self._answer(401, b"bad signature")
        path = self.path.split("?", 1)[0]
        if path == "/redirect":
            return self._answer(302, b"", {"Location": f"http://{headers['host']}/ok?token=do-not-log"})
        if path.startswith("/status/"):
            return self._answer(int(path.rsplit("/", 1)[1]), b"nope")
        if path == "/slow":
            time.sleep(1.5)
        if path.startswith("/trickle/"):  # /trickle/{seconds}: a 200 a byte at a time, over that many seconds
            return self._trickle(float(path.rsplit("/", 1)[1]))
        if path == "/flaky" or path.startswith("/flaky/"):
            times, status = (int(part) for part in path.split("/")[2:4]) if path != "/flaky" else (2, 503)
            if sum(r.path.split("?", 1)[0] == path for r in receiver.requests) <= times:
                return self._answer(status, b"busy")
        self._answer(200, b"ok")

    do_PUT = do_POST

    def _trickle(self, seconds):
        answer = b"HTTP/1.1 200 OK\r\nX-Trickle: " + b"." * 40 + b"\r\nContent-Length: 2\r\n\r\nok"
        pause = seconds / len(answer)
        try:
            for index in range(len(answer)):
                self.wfile.write(answer[index:index + 1])
                time.sleep(pause)
        except OSError:  # the sender gave up waiting: that is what a deadline does
            self.close_connection = True
            return
        self._record.status = 200

    def _answer(self, status, body, headers=()):
        self._record.status = status
        self.send_response(status)
        for name, value in dict(headers).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Receiver:
    """A webhook receiver (see above) trusting ``keys`` ({key id: secret bytes}); ``requests`` are
    the ``Received`` in arrival order. ``tls``: serve https with that server context."""

    def __init__(self, keys, tls: ssl.SSLContext | None = None):
        self.keys = keys
        self.requests: list[Received] = []
        self.server_names: list[str | None] = []  # TLS SNI of each handshake
        self.scheme = "https" if tls else "http"
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ReceiverHandler)
        if tls:
            tls.sni_callback = lambda sock, name, context: self.server_names.append(name)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.server.daemon_threads = True
        self.server.receiver = self
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path="/ok", host="127.0.0.1"):
        return f"{self.scheme}://{host}:{self.port}{path}"

    def accepted(self) -> list[Received]:
        return [request for request in self.requests if request.accepted]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
