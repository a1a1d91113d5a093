"""What the tests that start their own servers (Ray nodes, Slurm) share: free ports on 127.0.0.1
and a process's descendants, to stop everything a server started."""

from __future__ import annotations

import socket

from pusa_batch.cli.processes import descendants  # noqa: F401 - the tests' import


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 right now (all bound at once, then released)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class TcpProxy:
    """A loopback TCP proxy to 127.0.0.1:`upstream_port` that can be cut, as an outage looks to
    a client. `cut(mode)`:
    - "refuse": the port stops listening (connection refused) and open connections are dropped,
      as when the server is down;
    - "reset": connections are accepted and closed at once, as a balancer without backends does;
    - "blackhole": open connections, and any opened during the cut, swallow every byte and never
      answer, as in a network partition (they stay dead after `restore()`; new ones work).
    The fault tests put it in front of the moto S3 server.

        with TcpProxy(port) as proxy:  # proxy.endpoint: http://127.0.0.1:PORT
            proxy.cut("refuse"); ...; proxy.restore()
    """

    def __init__(self, upstream_port: int):
        import threading

        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._cut = threading.Event()
        self._mode = "refuse"
        self._closed = threading.Event()
        self._open: dict[socket.socket, _Link] = {}
        self._lock = threading.Lock()
        self.refused = 0  # connections accepted during "reset" and "blackhole" cuts
        self._listen()

    def _listen(self) -> None:
        import threading

        threading.Thread(
            target=self._accept, args=(self._listener,), name="tcp-proxy", daemon=True
        ).start()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def is_cut(self) -> bool:
        return self._cut.is_set()

    def cut(self, mode: str = "refuse") -> None:
        if mode not in ("refuse", "reset", "blackhole"):
            raise ValueError(f"mode must be refuse, reset or blackhole, not {mode!r}")
        self._mode = mode
        self._cut.set()
        if mode == "refuse":
            _close(self._listener)
        with self._lock:
            links = set(self._open.values())
        for link in links:
            link.dead = True
            if mode != "blackhole":
                link.close()

    def restore(self) -> None:
        if self._cut.is_set() and self._mode == "refuse":
            self._listener = socket.create_server(("127.0.0.1", self.port))
            self._listen()
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        self.cut("reset")
        _close(self._listener)

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while not self._closed.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                self.refused += 1
                if self._mode != "blackhole":
                    _close(client)
                    continue
                link = _Link(client, None, dead=True)
            else:
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.upstream_port), 5)
                    upstream.settimeout(None)
                except OSError:
                    _close(client)
                    continue
                link = _Link(client, upstream)
            with self._lock:
                self._open.update({s: link for s in link.sockets})
            for source in link.sockets:
                threading.Thread(target=self._pump, args=(link, source), daemon=True).start()

    def _pump(self, link: _Link, source: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if self._cut.is_set():
                    link.dead = True
                if not link.dead:
                    link.peer(source).sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                for s in link.sockets:
                    self._open.pop(s, None)
            link.close()


class _Link:
    """One proxied connection: the client's socket and the upstream one (None: never opened)."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None, dead: bool = False):
        self.client, self.upstream, self.dead = client, upstream, dead
        self.sockets = [s for s in (client, upstream) if s is not None]

    def peer(self, source: socket.socket) -> socket.socket:
        return self.upstream if source is self.client else self.client

    def close(self) -> None:
        for s in self.sockets:
            _close(s)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
