"""A TCP proxy in front of a real redis-server that loses the reply of one chosen command.

Armed with a byte pattern, it forwards the next request containing it, waits for Redis's answer (so the
command did run), then closes both sides instead of passing the answer on. The client saw its connection
drop with no reply, exactly as when a Redis restart or a network cut falls between execution and answer;
a retrying client (`connect_redis_patient`) reconnects through the proxy and sends the command again.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

from devstack.processes import free_port


@dataclass
class LostReplyProxy:
    upstream_port: int
    port: int = field(default_factory=free_port)
    dropped: list[bytes] = field(default_factory=list)  # requests whose reply was lost
    seen: dict[bytes, int] = field(default_factory=dict)  # armed pattern -> requests carrying it

    def __post_init__(self) -> None:
        self._armed: bytes | None = None
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def arm(self, pattern: bytes) -> None:
        """Lose the reply to the next request that contains `pattern` (once)."""
        with self._lock:
            self._armed = pattern
            self.seen[pattern] = 0

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            drop = threading.Event()
            threading.Thread(target=self._requests, args=(client, upstream, drop), daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, client, drop), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, drop: threading.Event) -> None:
        while data := _recv(client):
            with self._lock:
                for pattern in self.seen:
                    if pattern in data:
                        self.seen[pattern] += 1
                if self._armed is not None and self._armed in data:
                    self._armed = None
                    self.dropped.append(data)
                    drop.set()  # set before forwarding: the reply must never reach the client
            try:
                upstream.sendall(data)
            except OSError:
                break
        _close(client, upstream)

    @staticmethod
    def _replies(upstream: socket.socket, client: socket.socket, drop: threading.Event) -> None:
        while data := _recv(upstream):
            if drop.is_set():  # Redis ran the command and answered: lose the answer, cut the connection
                break
            try:
                client.sendall(data)
            except OSError:
                break
        _close(client, upstream)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
