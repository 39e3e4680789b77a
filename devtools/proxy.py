"""A TCP proxy that a test can take down and bring back, to cut the code under test off an endpoint."""
from __future__ import annotations


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


class CountingHttpProxy:
    """An HTTP/1.1 forwarder from a local port to ``target`` that counts the requests passing
    through it by ``classify(method, path)`` (a label; None is not counted): what a client asks of
    an emulator that keeps no request log of its own (fake-gcs-server, the Pub/Sub emulator).

    Requests are read one at a time per connection (keep-alive clients do not pipeline), their
    bodies (Content-Length or chunked) forwarded as they come; responses are pumped unparsed.
    Runs on plain threads: start it in a process of its own (``python -m devtools.proxy``) so that
    its work is neither charged to nor slowed by the process that measures."""

    def __init__(self, target_host: str, target_port: int, classify, listen_host: str = "127.0.0.1",
                 listen_port: int = 0):
        import collections
        import threading
        self.target = (target_host, target_port)
        self.listen = (listen_host, listen_port)
        self.classify = classify
        self.counts: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        self.port: int | None = None

    def start(self) -> "CountingHttpProxy":
        import socket
        import threading
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(self.listen)
        listener.listen(256)
        self.port = listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name=f"counting-{self.port}").start()
        return self

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def _accept(self, listener) -> None:
        import socket
        import threading
        while True:
            client, _ = listener.accept()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                TcpProxy._close(client, reset=True)
                continue
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client), daemon=True).start()

    def _responses(self, upstream, client) -> None:
        try:
            while data := upstream.recv(65536):
                client.sendall(data)
        except OSError:
            pass
        finally:
            TcpProxy._close(client, reset=False)
            TcpProxy._close(upstream, reset=False)

    def _requests(self, client, upstream) -> None:
        reader = client.makefile("rb")
        try:
            while True:
                head = self._read_head(reader)
                if head is None:
                    return
                upstream.sendall(head)
                method, path, headers = self._parse(head)
                label = self.classify(method, path)
                if label is not None:
                    with self._lock:
                        self.counts[label] += 1
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    self._forward_chunked(reader, upstream)
                else:
                    self._forward(reader, upstream, int(headers.get("content-length", "0") or 0))
        except (OSError, ValueError):
            pass
        finally:
            TcpProxy._close(upstream, reset=False)
            TcpProxy._close(client, reset=False)

    @staticmethod
    def _read_head(reader) -> bytes | None:
        lines = []
        while True:
            line = reader.readline(65537)
            if not line:
                return None
            lines.append(line)
            if line in (b"\r\n", b"\n") and len(lines) > 1:
                return b"".join(lines)

    @staticmethod
    def _parse(head: bytes) -> tuple[str, str, dict[str, str]]:
        text = head.decode("latin-1").split("\r\n")
        method, path, _ = text[0].split(" ", 2)
        headers = {}
        for line in text[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return method, path, headers

    @staticmethod
    def _forward(reader, upstream, length: int) -> None:
        while length > 0:
            data = reader.read(min(length, 65536))
            if not data:
                raise ValueError("the client closed mid-body")
            upstream.sendall(data)
            length -= len(data)

    def _forward_chunked(self, reader, upstream) -> None:
        while True:
            size_line = reader.readline(1024)
            upstream.sendall(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:  # the trailer section, up to its empty line
                while True:
                    line = reader.readline(65537)
                    upstream.sendall(line)
                    if line in (b"\r\n", b"\n", b""):
                        return
            self._forward(reader, upstream, size + 2)  # the chunk and its CRLF


def classify_cloud_request(method: str, path: str) -> str | None:
    """A label for a request to fake-gcs-server or the Pub/Sub emulator (JSON / REST APIs):
    ``gcs <what>`` or ``pubsub <verb>``."""
    bare, _, query = path.partition("?")
    if ":" in bare.rsplit("/", 1)[-1] and "/v1/projects/" in bare:  # .../subscriptions/S:pull
        return f"pubsub {bare.rsplit(':', 1)[-1]}"
    if bare.startswith("/v1/projects/"):
        return f"pubsub {method} {bare.split('/')[4] if len(bare.split('/')) > 4 else ''}".rstrip()
    if bare.startswith("/upload/"):
        return "gcs upload"
    if bare.startswith("/download/") or "alt=media" in query:
        return "gcs download"
    if bare.startswith("/storage/v1/b/"):
        parts = bare.split("/")
        if "/copyTo/" in bare or "/rewriteTo/" in bare:
            return "gcs copy"
        if bare.endswith("/compose"):
            return "gcs compose"
        if len(parts) == 6 and parts[5] == "o":
            return "gcs list"
        if len(parts) >= 7:
            return {"GET": "gcs stat", "DELETE": "gcs delete"}.get(method, f"gcs {method.lower()} object")
        return f"gcs {method.lower()} bucket"
    return f"other {method}"


def main(argv=None) -> None:
    """``python -m devtools.proxy COUNTS.json LISTEN_PORT:TARGET_PORT ...``: counting proxies on
    127.0.0.1, their counts (``{"LISTEN_PORT": {label: n}}``) written to COUNTS.json every 0.2 s
    until killed."""
    import json
    import os
    import sys
    import time
    argv = sys.argv[1:] if argv is None else argv
    out, pairs = argv[0], [tuple(int(p) for p in pair.split(":")) for pair in argv[1:]]
    proxies = {listen: CountingHttpProxy("127.0.0.1", target, classify_cloud_request, listen_port=listen).start()
               for listen, target in pairs}
    while True:
        text = json.dumps({str(port): proxy.snapshot() for port, proxy in proxies.items()})
        with open(out + ".tmp", "w") as handle:
            handle.write(text)
        os.replace(out + ".tmp", out)
        time.sleep(0.2)


if __name__ == "__main__":
    main()
