"""Helpers for the project's tests (the one place they live), in the spirit of nameko.testing."""
from __future__ import annotations

import base64
import collections
import datetime
import email
import email.policy
import email.utils
import hashlib
import hmac
import http.server
import json
import os
import re
import ssl
import threading
import time
import uuid as uuid_module

from shared.blobstore import BlobAlreadyExists, BlobInfo, BlobNotFound, BlobStore, BlobStoreUnavailable
from shared.checksums import Checksums, checksum_bytes


def stage_object(store, bucket: str, data: bytes, *, key: str | None = None, prefix: str = "dss-",
                 as_tags: bool = False, content_type: str = "application/octet-stream",
                 declared: dict | None = None, metadata: dict | None = None) -> tuple[str, Checksums]:
    """Upload ``data`` to a staging bucket the way the DSS clients do, with its four checksums
    as metadata (or S3 tags) named ``{prefix}{name}``. ``declared`` overrides what is declared;
    ``metadata`` is more user metadata for the object. Returns (source_url, true checksums)."""
    key = key or f"staging/{uuid_module.uuid4()}/{os.urandom(3).hex()}.bin"
    checksums = checksum_bytes(data)
    labels = {f"{prefix}{name}": value for name, value in (declared or checksums.as_api()).items()}
    store.put_bytes(bucket, key, data, content_type=content_type,
                    metadata={**(metadata or {}), **({} if as_tags else labels)})
    if as_tags:
        client = store.client
        client.put_object_tagging(Bucket=bucket, Key=key,
                                  Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in labels.items()]})
    return f"{store.scheme}://{bucket}/{key}", checksums


def stage_large_object(store, bucket: str, size: int, *, chunk: int = 8 * 1024 * 1024, seed: bytes = b"",
                       key: str | None = None, metadata: dict | None = None) -> tuple[str, Checksums]:
    """Stream ``size`` pseudo-random bytes to a staging object without holding them in memory
    (``metadata``: more user metadata beside the checksums)."""
    from shared.checksums import ChecksumPass
    key = key or f"staging/{uuid_module.uuid4()}/large.bin"
    block = (seed or os.urandom(16)) * (chunk // 16)

    def chunks():
        remaining = size
        while remaining:
            piece = block[: min(chunk, remaining)]
            remaining -= len(piece)
            yield piece

    checksum_pass = ChecksumPass(size)
    for piece in chunks():
        checksum_pass.update(piece)
    checksums = checksum_pass.result()
    labels = {f"dss-{name}": value for name, value in checksums.as_api().items()}
    store.put_stream(bucket, key, chunks(), size, metadata={**(metadata or {}), **labels})
    return f"{store.scheme}://{bucket}/{key}", checksums


def store_bundle(store, bucket: str, contents: dict[str, bytes], content_type: str = "application/octet-stream",
                 concurrency: int = 16) -> tuple[str, str, dict]:
    """A bundle of files named and filled as ``contents``, written straight to a main bucket as the
    files and bundles services lay it out (blobs, ``files/``, then the manifest; no events), the
    writes ``concurrency`` at a time on green threads. Returns (uuid, version, manifest)."""
    import eventlet

    from shared.identifiers import Keys, new_uuid, new_version
    from shared.schemas import BUNDLE_FORMAT, FileMetadata

    uuid, version = new_uuid(), new_version()

    def store_file(item):
        name, data = item
        sums, file_uuid = checksum_bytes(data), new_uuid()
        store.put_bytes(bucket, sums.blob_key(), data, content_type=content_type)
        metadata = FileMetadata().dump({"creator_uid": 1, "version": version, "content_type": content_type,
                                        "size": len(data), **sums.as_api()})
        store.put_bytes(bucket, Keys.file(file_uuid, version), json.dumps(metadata).encode(),
                        content_type="application/json")
        return {"name": name, "uuid": file_uuid, "version": version, "indexed": False, "content-type": content_type,
                "size": len(data), **sums.as_stored()}

    entries = list(eventlet.GreenPool(concurrency).imap(store_file, contents.items()))
    manifest = {"format": BUNDLE_FORMAT, "version": version, "creator_uid": 1, "files": entries}
    store.put_bytes(bucket, Keys.bundle(uuid, version), json.dumps(manifest).encode(), content_type="application/json")
    return uuid, version, manifest


# --- an in-memory blob store, for unit tests -----------------------------------------------------

class MemoryBlobStore(BlobStore):
    """A replica's buckets in a dict, counting calls; ``unavailable`` makes every call fail as an
    unreachable endpoint would."""

    def __init__(self, replica: str, clock=None):
        self.replica = replica
        self.scheme = {"aws": "s3", "gcp": "gs"}[replica]
        self.buckets: dict[str, dict[str, tuple[bytes, str, dict]]] = {}
        # With a clock (epoch seconds), writes through the API are stamped and `stat` reports it.
        self.clock = clock
        self.modified: dict[tuple[str, str], float] = {}
        self.calls = collections.Counter()
        self.unavailable = False

    def _objects(self, bucket: str, call: str) -> dict:
        self.calls[call] += 1
        if self.unavailable:
            raise BlobStoreUnavailable(f"{self.replica} is unreachable")
        try:
            return self.buckets[bucket]
        except KeyError:
            raise BlobNotFound(bucket) from None

    def _object(self, bucket: str, key: str, call: str) -> tuple[bytes, str, dict]:
        try:
            return self._objects(bucket, call)[key]
        except KeyError:
            raise BlobNotFound(f"{bucket}/{key}") from None

    def stat(self, bucket, key):
        data, content_type, metadata = self._object(bucket, key, "stat")
        stamp = self.modified.get((bucket, key))
        last_modified = None if stamp is None else datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc)
        return BlobInfo(key, len(data), content_type, dict(metadata), hashlib.md5(data).hexdigest(), None,
                        last_modified)

    def get_tags(self, bucket, key):
        self._object(bucket, key, "get_tags")
        return {}

    def get_bytes(self, bucket, key):
        return self._object(bucket, key, "get_bytes")[0]

    def iter_chunks(self, bucket, key, chunk_size, revision=None):
        data = self._object(bucket, key, "iter_chunks")[0]
        return iter([data[start:start + chunk_size] for start in range(0, len(data), chunk_size)])

    def list_keys(self, bucket, prefix="", start_after=None):
        objects = self._objects(bucket, "list_keys")
        return iter(sorted(key for key in objects
                           if key.startswith(prefix) and (start_after is None or key > start_after)))

    def put_bytes(self, bucket, key, data, content_type="application/octet-stream", metadata=None, if_absent=False):
        objects = self._objects(bucket, "put_bytes")
        if if_absent and key in objects:
            raise BlobAlreadyExists(f"{bucket}/{key}")
        objects[key] = (bytes(data), content_type, dict(metadata or {}))
        if self.clock is not None:
            self.modified[(bucket, key)] = self.clock()

    def put_stream(self, bucket, key, chunks, size, content_type="application/octet-stream", metadata=None,
                   part_size=64 * 1024 * 1024):
        self.put_bytes(bucket, key, b"".join(chunks), content_type, metadata)

    def copy(self, src_bucket, src_key, dst_bucket, dst_key, *, if_source_revision=None, content_type=None,
             metadata=None, part_size=64 * 1024 * 1024, source_size=None):
        data, source_type, source_metadata = self._object(src_bucket, src_key, "copy")
        new_type, new_metadata = content_type or source_type, source_metadata if metadata is None else metadata
        if dst_bucket not in self.buckets:
            raise BlobNotFound(dst_bucket)
        self.buckets[dst_bucket][dst_key] = (data, new_type, dict(new_metadata))
        if self.clock is not None:
            self.modified[(dst_bucket, dst_key)] = self.clock()
        return BlobInfo(dst_key, len(data), new_type, dict(new_metadata), hashlib.md5(data).hexdigest(), None, None)

    def delete(self, bucket, key):
        self._objects(bucket, "delete").pop(key, None)

    def presigned_url(self, bucket, key, expires_in, content_disposition=None):
        return f"memory://{bucket}/{key}?expires_in={expires_in}"

    def bucket_exists(self, bucket):
        try:
            self._objects(bucket, "bucket_exists")
        except BlobNotFound:
            return False
        return True

    def create_bucket(self, bucket):
        self.buckets.setdefault(bucket, {})


class StorageSpy:
    """Records the keys a blob store (any, real or in memory) reads and the prefixes it lists, and
    lets each call through; ``monkeypatch`` (pytest's) puts the store back after the test."""

    def __init__(self, monkeypatch, store: BlobStore):
        self.read: list[str] = []
        self.listed: list[str] = []
        get_bytes, list_keys = store.get_bytes, store.list_keys

        def spy_get_bytes(bucket, key, *args, **kwargs):
            self.read.append(key)
            return get_bytes(bucket, key, *args, **kwargs)

        def spy_list_keys(bucket, prefix="", *args, **kwargs):
            self.listed.append(prefix)
            return list_keys(bucket, prefix, *args, **kwargs)

        monkeypatch.setattr(store, "get_bytes", spy_get_bytes)
        monkeypatch.setattr(store, "list_keys", spy_list_keys)

    def clear(self) -> None:
        self.read.clear()
        self.listed.clear()


# --- waiting, and the broker as a test's vhost sees it ---------------------------------------------

def wait_until(predicate, timeout: float, what: str, interval: float = 0.2, on_timeout=lambda: ""):
    """Poll ``predicate`` until it returns something true (returned), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s\n{on_timeout()}")
        time.sleep(interval)


def queue_state(amqp_uri: str, name: str) -> tuple[int, int] | None:
    """(messages ready, consumers) of queue ``name``, or None if it does not exist (a passive
    declare, which creates nothing). Raises if the broker cannot be reached."""
    from amqp.exceptions import NotFound as QueueNotFound
    from kombu import Connection

    with Connection(amqp_uri, connect_timeout=5) as connection:
        channel = connection.channel()
        try:
            _, messages, consumers = channel.queue_declare(queue=name, passive=True)
        except QueueNotFound:
            return None
        channel.close()
        return messages, consumers


# --- real processes, for fault tests ------------------------------------------------------------

class ServiceProcess:
    """One service run by ``nameko run`` as a real separate process, as `make up` runs it, for tests
    that kill, stop or restart it (an in-process container cannot be killed like a crashed node).

    The process gets a session of its own (a Ctrl-C at the terminal does not reach it) and writes
    its output to ``log_path``, which ``tail()`` shows when a test fails. ``kill()`` is SIGKILL: no
    shutdown code runs, unacknowledged work stays with the broker and the queues, as after a crash.
    """

    def __init__(self, service: str, env: dict, log_path, cwd: str | None = None):
        import pathlib
        self.service = service
        self.env = env
        self.log_path = pathlib.Path(log_path)
        self.cwd = cwd or str(pathlib.Path(__file__).resolve().parent.parent)  # the repository root
        self.process = None
        self.starts = 0

    def command(self) -> list[str]:
        import shutil
        import sys
        nameko = shutil.which("nameko", path=os.path.dirname(sys.executable)) or shutil.which("nameko")
        runner = [nameko] if nameko else [sys.executable, "-m", "nameko"]
        return [*runner, "run", "--config", f"services/{self.service}/config.yml", f"services.{self.service}.service"]

    def start(self) -> "ServiceProcess":
        import subprocess
        if self.alive:
            raise RuntimeError(f"{self.service} is already running (pid {self.pid})")
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {self.service} start #{self.starts} ===\n".encode())
            log.flush()
            self.process = subprocess.Popen(self.command(), cwd=self.cwd, env={**self.env, "PYTHONUNBUFFERED": "1"},
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process else None

    def kill(self) -> None:
        """SIGKILL, and reap it (so that ``alive`` is False at once)."""
        import signal
        if self.alive:
            os.kill(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (nameko stops gracefully: in-flight workers finish and ack), SIGKILL after ``timeout``."""
        import subprocess
        if self.process is None:
            return None
        if self.alive:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


def child_listening_on(port: int):
    """The process, among this process's own descendants, listening on 127.0.0.1:``port`` (a
    ``psutil.Process``). Only descendants are searched, so a test can never signal an emulator it
    did not start (such as a `make up` stack's). Raises LookupError when there is none."""
    import psutil
    for child in psutil.Process().children(recursive=True):
        try:
            connections = child.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in connections):
            return child
    raise LookupError(f"no process started by this one listens on port {port}")


class paused:
    """``with paused(process): ...``: the process is stopped (SIGSTOP) inside the block and resumed
    (SIGCONT) when it ends, however it ends. A stopped server still accepts TCP connections (the
    kernel does) but never answers them: a hung endpoint, not a refused one."""

    def __init__(self, process):
        import psutil
        self.process = process if isinstance(process, psutil.Process) else psutil.Process(process)

    def __enter__(self):
        self.process.suspend()
        return self.process

    def __exit__(self, *exc_info):
        self.process.resume()
        return False


class TcpProxy:
    """A TCP forwarder from a local port to ``target``, which a test can take down and bring back:
    ``down()`` resets every open connection and stops listening (clients get connection refused,
    as from a crashed or unreachable server, whose data survives), ``up()`` listens again on the
    same port. Point the code under test at ``url`` (or ``address``); the test itself can still
    reach the target directly meanwhile.

    Runs on threads (green ones under eventlet's monkey patching, as in the tests), one pair per
    connection: meant for emulator traffic, not for throughput."""

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1"):
        import threading
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.port: int | None = None
        self._listener = None
        self._connections: set = set()
        self._lock = threading.Lock()
        self.accepted = 0

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def up(self) -> "TcpProxy":
        import socket
        import threading
        if self._listener is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the same port again at once
        listener.bind((self.listen_host, self.port or 0))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name=f"proxy-{self.port}").start()
        return self

    start = up

    def down(self) -> None:
        """Refuse new connections and reset the open ones (their requests fail at once)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            self._close(listener, reset=False)
        with self._lock:
            connections, self._connections = self._connections, set()
        for sock in connections:
            self._close(sock, reset=True)

    close = down

    @staticmethod
    def _close(sock, reset: bool) -> None:
        import socket
        import struct
        try:
            if reset:  # linger 0: close sends RST, as a crashed peer's kernel does
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass

    def _accept(self, listener) -> None:
        import socket
        import threading
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by down()
                return
            if self._listener is not listener:
                self._close(client, reset=True)
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                self._close(client, reset=True)
                continue
            self.accepted += 1
            with self._lock:
                self._connections.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source, sink) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except (OSError, EOFError):  # reset, or closed by down() (eventlet then raises EOFError)
            pass
        finally:
            with self._lock:
                self._connections.discard(source)
                self._connections.discard(sink)
            # One side ended: end the other, so that neither end waits on a half-open pair.
            self._close(sink, reset=False)
            self._close(source, reset=False)


# --- webhook receivers ------------------------------------------------------------------------------
# A threaded http.server on 127.0.0.1 that verifies what it gets the way a subscriber would,
# independently of shared.webhooks: the draft-cavage Authorization signature and the Digest header
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


# --- TLS certificates from a CA of the test's own ---------------------------------------------------

def _certificate(subject, issuer, public_key, signing_key, *, ca, names=(), addresses=()):
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
                              critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                        critical=True)
    else:
        alternative_names = [x509.DNSName(name) for name in names]
        alternative_names += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
        builder = builder.add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def issue_server_certificate(directory, names=(), addresses=()) -> tuple[str, str]:
    """A CA of the test's own and a server certificate it signed for ``names`` (DNS) and
    ``addresses`` (IP), as PEM files in ``directory``: (the CA bundle, the certificate followed by
    its private key, as ``SSLContext.load_cert_chain`` takes it)."""
    import pathlib

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = pathlib.Path(directory)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test CA", "test CA", ca_key.public_key(), ca_key, ca=True)
    leaf = _certificate((list(names) + list(addresses))[0], "test CA", server_key.public_key(), ca_key, ca=False,
                        names=names, addresses=addresses)
    ca_path, server_path = directory / "ca.pem", directory / "server.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(ca_path), str(server_path)


# --- a real SMTP server -------------------------------------------------------------------------------

class SmtpServer:
    """A real SMTP server (aiosmtpd) on 127.0.0.1, in a process of its own (its asyncio loop has
    nothing to do with the tests' eventlet hub), keeping every message it accepts in a Maildir
    that ``messages()`` reads back, parsed.

    ``tls``: ``none``, ``starttls`` (required before MAIL) or ``ssl`` (implicit TLS), with the
    ``certificate`` file of ``issue_server_certificate``; ``login``: (user, password) the server
    requires (over TLS only, as relays do)."""

    def __init__(self, directory, tls: str = "none", certificate: str | None = None,
                 login: tuple[str, str] | None = None):
        import pathlib

        from shared.local_cloud import free_port
        self.directory = pathlib.Path(directory)
        self.maildir = self.directory / "maildir"
        self.log_path = self.directory / "smtp.log"
        self.tls, self.certificate, self.login = tls, certificate, login
        self.port = free_port()
        self.process = None

    @property
    def settings(self) -> dict:
        """The ``DSS_SMTP_*`` settings that send through this server (the CA bundle is the test's)."""
        return {"DSS_SMTP_HOST": "127.0.0.1", "DSS_SMTP_PORT": self.port, "DSS_SMTP_TLS": self.tls,
                "DSS_SMTP_USER": self.login[0] if self.login else "",
                "DSS_SMTP_PASSWORD": self.login[1] if self.login else "", "DSS_SMTP_TIMEOUT": 5}

    def start(self) -> "SmtpServer":
        import pathlib
        import subprocess
        import sys

        from shared.local_cloud import port_open
        arguments = ["--port", str(self.port), "--maildir", str(self.maildir), "--tls", self.tls]
        if self.certificate:
            arguments += ["--certificate", self.certificate]
        if self.login:
            arguments += ["--login", ":".join(self.login)]
        root = pathlib.Path(__file__).resolve().parent.parent
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "import sys; from shared.testing import serve_smtp; serve_smtp(sys.argv[1:])",
                 *arguments], cwd=str(root), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: port_open("127.0.0.1", self.port) or self.process.poll() is not None, 30,
                   "the SMTP server listening", interval=0.05)
        if self.process.poll() is not None:
            raise RuntimeError(f"the SMTP server exited:\n{self.log_path.read_text(errors='replace')}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def messages(self) -> list:
        """The messages received so far (``email.message.EmailMessage``), oldest first."""
        import email.policy
        import mailbox
        if not self.maildir.exists():
            return []
        box = mailbox.Maildir(str(self.maildir), factory=None, create=False)
        received = [(message.get_date(), email.message_from_bytes(bytes(message), policy=email.policy.default))
                    for message in box]
        return [message for _, message in sorted(received, key=lambda pair: pair[0])]


def serve_smtp(argv: list[str]) -> None:
    """The SMTP server process of ``SmtpServer`` (not for eventlet-patched processes)."""
    import argparse
    import signal
    import sys

    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Mailbox
    from aiosmtpd.smtp import AuthResult

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", required=True)
    parser.add_argument("--tls", choices=("none", "starttls", "ssl"), default="none")
    parser.add_argument("--certificate")
    parser.add_argument("--login")
    args = parser.parse_args(argv)
    options: dict = {}
    context = None
    if args.tls != "none":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.certificate)
    if args.tls == "starttls":
        options.update(tls_context=context, require_starttls=True)
    elif args.tls == "ssl":
        options.update(ssl_context=context)
    if args.login:
        user, password = args.login.split(":", 1)

        def authenticate(server, session, envelope, mechanism, credentials):
            accepted = (credentials.login.decode(), credentials.password.decode()) == (user, password)
            return AuthResult(success=accepted, handled=False)  # False: the server answers 535 itself
        # PLAIN only: smtplib falls back to LOGIN after a refused PLAIN, and aiosmtpd's LOGIN then
        # waits for a line smtplib never sends (a refused password would look like a timeout).
        options.update(authenticator=authenticate, auth_required=True, auth_exclude_mechanism=["LOGIN"])
    controller = Controller(Mailbox(args.maildir), hostname="127.0.0.1", port=args.port, **options)
    controller.start()
    signal.signal(signal.SIGTERM, lambda *_: (controller.stop(), sys.exit(0)))
    while True:
        signal.pause()
