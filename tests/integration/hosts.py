"""Hosts of a test's own: Linux network namespaces on one bridge, each with a name and an address.

Each host is a network namespace (`ip netns`) joined by a veth pair to a bridge that lives in a namespace
of its own. Its processes also get a UTS namespace with the host's name (`unshare --uts`), so `%h` in
Celery node names and the `host` in heartbeats tell hosts apart, and a mount namespace in which the other
hosts' directories are covered by empty ones, so no host reads another's files. Every address is inside
these namespaces: the machine's own network is never touched, and a process on one host reaches another
only over the bridge (127.0.0.1 is each host's own loopback). The test process itself stays outside; it
talks to the hosts from threads that joined a host's namespace (`Hosts.thread_in`), since a network
namespace belongs to a thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

SUBNET = "10.77.0"  # only ever inside the test's namespaces
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def unavailable() -> str | None:
    """Why hosts cannot be made here (not root, no iproute2 or util-linux, namespaces refused), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root; run `make test` as root to include this)"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (iproute2 / util-linux)"
    probe = f"quarry-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass(frozen=True)
class Host:
    name: str
    netns: str
    ip: str


@dataclass
class Hosts:
    """The hosts of one test module; `close` kills whatever still runs on them and removes them."""

    tag: str = field(default_factory=lambda: f"quarry-{os.getpid()}")
    hosts: dict[str, Host] = field(default_factory=dict)
    _threads: list[ThreadPoolExecutor] = field(default_factory=list)

    @property
    def bridge_ns(self) -> str:
        return f"{self.tag}-lan"

    def __post_init__(self) -> None:
        _ip("netns", "add", self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")

    def add(self, name: str) -> Host:
        index = len(self.hosts) + 2
        host = Host(name, f"{self.tag}-{name}", f"{SUBNET}.{index}")
        _ip("netns", "add", host.netns)
        port = f"p{index}"
        _ip(
            "link",
            "add",
            "eth0",
            "netns",
            host.netns,
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            self.bridge_ns,
        )
        _ip("-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
        _ip("-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        self.hosts[name] = host
        return host

    def argv(self, host: Host, argv: list[str], hide: Sequence[Path] = ()) -> list[str]:
        """`argv` run on `host`: in its network namespace, under its host name, and with each directory of
        `hide` covered by an empty one (in a mount namespace of its own), so that it cannot read what the
        other hosts keep on their disks."""
        covers = "".join(f"mount -t tmpfs tmpfs {shlex.quote(str(path))} && " for path in hide)
        script = f'hostname "$0" && {covers}exec "$@"'
        unshare = ["unshare", "--uts", "--mount", "--propagation", "private"]
        return ["ip", "netns", "exec", host.netns, *unshare, "sh", "-c", script, host.name, *argv]

    def pids(self, host: Host) -> list[int]:
        listed = subprocess.run(
            ["ip", "netns", "pids", host.netns], capture_output=True, text=True, check=False
        )
        return [int(pid) for pid in listed.stdout.split()]

    def kill(self, host: Host) -> list[int]:
        """SIGKILL every process on `host`, as a host lost at once would leave them; their pids."""
        pids = self.pids(host)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(pid, signal.SIGKILL)
        return pids

    def thread_in(self, host: Host) -> Callable[..., Any]:
        """A caller that runs functions on one thread inside `host`'s network: sockets it opens are
        `host`'s (they stay so when used from other threads later)."""
        pool = ThreadPoolExecutor(1, thread_name_prefix=host.name, initializer=_enter, initargs=(host.netns,))
        self._threads.append(pool)

        def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
            return pool.submit(fn, *args, **kwargs).result()

        return call

    def close(self) -> None:
        for pool in self._threads:
            pool.shutdown(wait=False, cancel_futures=True)
        for host in self.hosts.values():
            self.kill(host)
        for name in [*(host.netns for host in self.hosts.values()), self.bridge_ns]:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _enter(netns: str) -> None:
    """Move the calling thread into `netns` (setns(2) acts on one thread: Python 3.11 has no os.setns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns} failed")
    finally:
        os.close(fd)
