"""A multi-host test lab on one machine: N "machines" in network namespaces, one switch.

Design (the simplest that really forwards traffic at layer 2): each host is a network
namespace holding one tap device (``eth0``-like, address 10.77.0.<i+1>/24). The taps are
created by a relay process in the root namespace (``python lab_net.py relay``), which
keeps their file descriptors open and then has them moved into the namespaces. The relay
is the switch: it reads Ethernet frames from every tap, learns MAC addresses, and writes
each frame to the destination's tap (broadcasts to all) after

- a rate limit per host uplink (``rate_mbit``; a tail drop beyond one second of queue),
- a delay of ``delay`` ± ``jitter`` seconds (FIFO per link: no reordering),
- a random loss of ``loss`` per frame,
- dropping every frame between hosts of different groups while a partition holds,
- and, for hosts behind NAT (``Lab(3, nat=[0, 1])``), dropping inbound frames that belong
  to no flow the host opened (stateful connection tracking: see lab_nat.py).

A tap without IFF_VNET_HDR gets fully checksummed, segmented frames, so no offload
settings are needed. The relay is controlled through its stdin (``partition 0,1 2,3,4``,
``heal``, ``nat 0 1`` (hosts 0 and 1 each behind a NAT of its own; ``nat 0,1`` both behind
one; ``nat`` alone: none), ``stats`` (frames the NAT rule dropped), ``quit``), one ``ok``
line per command. No address outside the namespaces is
used and nothing is routed out of them: the taps are the namespaces' only interfaces.

:class:`Lab` creates and removes everything (namespaces, relay, processes started with
:meth:`Lab.spawn`), also when a test fails. :func:`lab_unavailable` says why a machine
cannot run the lab (not root, no /dev/net/tun, ``ip netns add`` fails).
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import json
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from lab_nat import NatTable

SUBNET = "10.77.0"
_TUNSETIFF = 0x400454CA
_IFF_TAP, _IFF_NO_PI = 0x0002, 0x1000


def lab_unavailable() -> str | None:
    """Why this machine cannot run the lab, or None if it can."""
    if not sys.platform.startswith("linux"):
        return "the lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the lab needs root (it creates network namespaces and tap devices)"
    if shutil.which("ip") is None:
        return "the lab needs iproute2's `ip`"
    if not os.path.exists("/dev/net/tun"):
        return "the lab needs /dev/net/tun for its tap devices"
    name = f"glprobe{os.getpid()}"
    made = _run(["ip", "netns", "add", name])
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    _run(["ip", "netns", "del", name])
    return None


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)


def _must(command: list[str]) -> None:
    done = _run(command)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")


class Lab:
    """``hosts`` namespaces joined by the relay switch; a context manager. ``nat``: hosts
    behind NAT from the start (as :meth:`nat` takes them)."""

    def __init__(
        self,
        hosts: int,
        *,
        delay: float = 0.05,
        jitter: float = 0.015,
        loss: float = 0.01,
        rate_mbit: float = 8.0,
        seed: int = 0,
        nat: Sequence[int | list[int]] = (),
    ) -> None:
        self.hosts = hosts
        tag = os.getpid() % 100000
        self.namespaces = [f"gl{tag}h{i}" for i in range(hosts)]
        self.taps = [f"gl{tag}t{i}" for i in range(hosts)]
        self.settings = [str(delay), str(jitter), str(loss), str(rate_mbit), str(seed)]
        self.relay: subprocess.Popen[str] | None = None
        self.processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self._nat = nat

    def address(self, host: int) -> str:
        return f"{SUBNET}.{host + 1}"

    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _build(self) -> None:
        for namespace in self.namespaces:
            _must(["ip", "netns", "add", namespace])
        self.relay = subprocess.Popen(
            [sys.executable, __file__, "relay", *self.settings, *self.taps],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.relay.stdout is not None
        if self.relay.stdout.readline().strip() != "ready":
            raise RuntimeError("the lab relay did not start")
        for i, (namespace, tap) in enumerate(zip(self.namespaces, self.taps, strict=True)):
            _must(["ip", "link", "set", tap, "netns", namespace])
            _must(["ip", "-n", namespace, "link", "set", "lo", "up"])
            _must(["ip", "-n", namespace, "addr", "add", f"{self.address(i)}/24", "dev", tap])
            _must(["ip", "-n", namespace, "link", "set", tap, "up"])
            _run(["ip", "netns", "exec", namespace, "sysctl", "-qw",
                  "net.ipv6.conf.all.disable_ipv6=1"])  # fmt: skip
            # multicast (mDNS) needs a route; a real machine has it through its default route
            _must(["ip", "-n", namespace, "route", "add", "224.0.0.0/4", "dev", tap])
        if self._nat:
            self.nat(*self._nat)

    def spawn(self, host: int, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Run ``python -m gossiplearn ARGS`` on ``host``; its output goes to ``log``."""
        out = log.open("wb")
        self._logs.append(out)
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.namespaces[host], sys.executable, "-m", "gossiplearn",
             *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.processes.append(process)
        return process

    def python(self, host: int, code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``python -c CODE`` on ``host`` and wait for it."""
        return subprocess.run(
            ["ip", "netns", "exec", self.namespaces[host], sys.executable, "-c", code],
            capture_output=True, text=True, check=False, timeout=timeout,
        )  # fmt: skip

    def _control(self, line: str) -> str:
        relay = self.relay
        assert relay is not None and relay.stdin is not None and relay.stdout is not None
        relay.stdin.write(line + "\n")
        relay.stdin.flush()
        reply = relay.stdout.readline().strip()
        if reply.split(" ", 1)[0] != "ok":
            raise RuntimeError(f"the lab relay refused {line!r}: {reply}")
        return reply[2:].strip()

    def nat(self, *hosts: int | list[int]) -> None:
        """Put hosts behind NAT: each int its own NAT, each list a LAN behind one NAT;
        no argument: every host public again."""
        words = [str(h) if isinstance(h, int) else ",".join(map(str, h)) for h in hosts]
        self._control(" ".join(["nat", *words]))

    def nat_dropped(self) -> dict[str, int]:
        """Inbound frames the NAT rule dropped so far: per target host ("1"), and new
        TCP connections among them ("syn 1")."""
        return dict(json.loads(self._control("stats")))

    def partition(self, *groups: list[int]) -> None:
        """Drop all traffic between hosts of different groups (until :meth:`heal`)."""
        self._control("partition " + " ".join(",".join(map(str, g)) for g in groups))

    def heal(self) -> None:
        self._control("heal")

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        for out in self._logs:
            out.close()
        if self.relay is not None and self.relay.poll() is None:
            self.relay.kill()
            self.relay.wait(timeout=5)
        for namespace in self.namespaces:
            _run(["ip", "netns", "del", namespace])


# ---- the relay (a process of its own) ----------------------------------------------------------


def _open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI))
    return fd


def relay(delay: float, jitter: float, loss: float, rate_mbit: float, seed: int,
          taps: list[str]) -> None:  # fmt: skip
    rng = random.Random(seed)
    fds = [_open_tap(name) for name in taps]
    port_of = {fd: i for i, fd in enumerate(fds)}
    macs: dict[bytes, int] = {}
    group = [0] * len(fds)
    busy = [0.0] * len(fds)  # when each host's uplink is free again
    last: dict[tuple[int, int], float] = {}  # FIFO per link
    queue: list[tuple[float, int, int, int, bytes]] = []
    nat = NatTable([None] * len(fds))
    seq = 0
    byte_time = 8 / (rate_mbit * 1e6)
    print("ready", flush=True)
    stdin = sys.stdin.fileno()
    while True:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, source, port, frame = heapq.heappop(queue)
            if not nat.admits(source, port, frame, now):  # judged where it arrives
                continue
            with contextlib.suppress(OSError):  # the namespace is going away: lost
                os.write(fds[port], frame)
        wait = max(0.0, queue[0][0] - now) if queue else 0.5
        readable, _, _ = select.select([stdin, *fds], [], [], wait)
        now = time.monotonic()
        for fd in readable:
            if fd == stdin:
                words = sys.stdin.readline().split()
                if not words or words[0] == "quit":
                    return
                if words[0] == "heal":
                    group = [0] * len(fds)
                elif words[0] == "partition":
                    for number, members in enumerate(words[1:]):
                        for member in members.split(","):
                            group[int(member)] = number
                elif words[0] == "nat":
                    nat.set_groups(_nat_groups(words[1:], len(fds)))
                elif words[0] == "stats":
                    print("ok", json.dumps(nat.dropped), flush=True)
                    continue
                print("ok", flush=True)
                continue
            source = port_of[fd]
            for _ in range(64):  # drain what is there, fairly between ports
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    break
                macs[frame[6:12]] = source
                nat.leaving(source, frame, now)  # a NAT'd host's flow opens as it leaves
                destination = frame[0:6]
                if destination[0] & 1 or destination not in macs:
                    targets = [p for p in range(len(fds)) if p != source]
                else:
                    targets = [macs[destination]]
                start = max(now, busy[source])
                if start - now > 1.0:
                    continue  # more than a second queued on this uplink: tail drop
                busy[source] = start + len(frame) * byte_time
                for target in targets:
                    if group[target] != group[source] or rng.random() < loss:
                        continue
                    arrive = busy[source] + max(0.0, rng.gauss(delay, jitter / 2))
                    arrive = max(arrive, last.get((source, target), 0.0))
                    last[(source, target)] = arrive
                    seq += 1
                    heapq.heappush(queue, (arrive, seq, source, target, frame))


def _nat_groups(words: list[str], hosts: int) -> list[int | None]:
    """``["0", "1,2"]`` -> host 0 behind one NAT, hosts 1 and 2 behind another."""
    group: list[int | None] = [None] * hosts
    for number, members in enumerate(words):
        for member in members.split(","):
            group[int(member)] = number
    return group


def main(argv: list[str]) -> Any:
    if argv[:1] == ["relay"]:
        delay, jitter, loss, rate = (float(v) for v in argv[1:5])
        return relay(delay, jitter, loss, rate, int(argv[5]), argv[6:])
    raise SystemExit("usage: lab_net.py relay DELAY JITTER LOSS RATE_MBIT SEED TAP...")


if __name__ == "__main__":
    main(sys.argv[1:])
