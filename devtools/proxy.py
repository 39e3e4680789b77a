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
