"""``gossiplearn launch``: N real peer processes on 127.0.0.1, wired by a topology.

Identities and ports are chosen before any process starts (for the joining peers too), so
every peer is started at once with the full multiaddrs of its topology neighbours to
bootstrap from. Each process plays its role of the scenario (``peer --scenario
OUT/scenario.json --index I``): its data shard, whether it attacks, and its own timeline
events (crash, leave, attack windows, partitions). The launcher does the events that are
process starts: ``join`` starts new peers and ``recover`` restarts crashed ones (same
identity and state dir: they resume from their checkpoint), when the network reaches the
event's round or time. Each process writes its own ``peer-i/`` folder (identity,
checkpoints, metrics, output); :meth:`Launcher.gather` merges them into the
``summary.json`` / ``metrics.jsonl`` / ``accuracy.png`` that ``simulate`` writes.

With ``--sybils K`` each attacker process holds K identities: the launcher makes the
keys and ports of its K−1 Sybil identities too (``peer-A/sybil-S.key``; S numbers them
on from the peers, as the simulator does, and the roster lists their peer ids), and the
honest peers each identity attaches to (as ``simulate`` plans it) bootstrap from its
address, so that they take it as a neighbour. Honest peers measure the attack
(``attack_success_rate``, ``attacker_weight``); the summary averages them over the
honest peers that finished, as ``simulate`` averages over its honest peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gossiplearn.config import RunConfig, topology_seed
from gossiplearn.errors import ConfigError, GossiplearnError
from gossiplearn.peer.bristle_setup import shared_extractor
from gossiplearn.peer.config import check_real_protocol
from gossiplearn.peer.scenario import attack_plan
from gossiplearn.peer.standalone import ATTACK_MEASURES
from gossiplearn.results import plot_accuracy, run_title, write_metrics, write_summary
from gossiplearn.topologies import build_topology

LISTENING = "listening on "
TIMELINE = "timeline: "


class LaunchError(GossiplearnError):
    """A peer process failed to start or to report its address."""


@dataclass
class PeerProcess:
    index: int
    process: asyncio.subprocess.Process
    folder: Path
    address: asyncio.Future[str]
    reader: asyncio.Task[None] | None = None
    killed: bool = False


class Launcher:
    """Starts, watches and stops the peer processes of one local network."""

    def __init__(
        self,
        config: RunConfig,
        out: Path,
        *,
        start_timeout: float = 180.0,
        open_timeout: float | None = None,
    ) -> None:
        check_real_protocol(config.protocol)
        if config.attack is not None and config.aggregator == "bristle":
            raise ConfigError("attack: bristle peers do not attack in launch (simulate)")
        if config.protocol == "modest" and config.joining_peers():
            raise ConfigError("timeline: peers join real runs with protocol gossip only")
        self.config = config
        self.out = out
        self.start_timeout = start_timeout
        #: Passed on to every peer (--open-timeout): a crowded machine needs more.
        self.open_timeout = open_timeout
        self.graph = build_topology(config.topology, config.peers, topology_seed(config.seed))
        self.total = config.peers + config.joining_peers()
        self.plan = attack_plan(config)
        self.steps = [s for s in config.resolved_timeline() if s.kind in ("join", "recover")]
        self.timeline_log: list[dict[str, Any]] = []
        self._rng = np.random.default_rng(config.seed)  # bootstrap peers of joiners
        self._joiner_bootstrap: dict[int, list[int]] = {}
        self.peers: list[PeerProcess] = []
        self.addresses: list[str] = []
        self.started = 0.0
        self.clock_origin = 0.0

    def peer_args(self, index: int, bootstrap: list[str]) -> list[str]:
        folder = self.out / f"peer-{index}"
        args = ["peer", "--scenario", str(self.out / "scenario.json"), "--index", str(index)]
        args += ["--roster", str(self.out / "roster.json")]
        args += ["--clock-origin", repr(self.clock_origin)]
        args += ["--out", str(folder), "--state-dir", str(folder / "state")]
        if self.open_timeout is not None:
            args += ["--open-timeout", repr(self.open_timeout)]
        if index < self.config.peers and index >= len(self.peers):  # a first start
            # The network starts together: on a crowded machine a process may need minutes
            # to start, and a peer that started round 1 alone would run its rounds alone.
            args += ["--min-neighbours", str(len(bootstrap))]
            args += ["--start-timeout", repr(self.start_timeout)]
        for address in bootstrap:
            args += ["--bootstrap", address]
        for sybil in self.plan.sybils_of(index):
            args += ["--sybil-identity", str(self._sybil_key(sybil))]
            args += ["--sybil-listen", self.addresses[sybil].split("/p2p/")[0]]
        return args

    def _sybil_key(self, sybil: int) -> Path:
        return self.out / f"peer-{self.plan.owner[sybil]}" / f"sybil-{sybil}.key"

    async def start(self) -> None:
        """Start every initial peer at once. Identities and ports are chosen up front, so
        each peer can be given all its topology neighbours' full multiaddrs."""
        from gossiplearn.transport.libp2p import generate_identity

        self.out.mkdir(parents=True, exist_ok=True)
        # bristle: one extractor file for every peer (pretrained here if none is given)
        self.config = await asyncio.to_thread(shared_extractor, self.config, self.out)
        self.started = time.monotonic()
        self.clock_origin = time.time()
        scenario = self.config.model_dump(mode="json")
        (self.out / "scenario.json").write_text(json.dumps(scenario, indent=2) + "\n")
        addresses, ids = [], []
        for index, port in enumerate(_free_ports(self.total + len(self.plan.owner))):
            folder = self.out / f"peer-{self.plan.owner.get(index, index)}"
            if index < self.total:
                _clear(folder)
            folder.mkdir(parents=True, exist_ok=True)
            key = folder / "identity.key" if index < self.total else self._sybil_key(index)
            key.unlink(missing_ok=True)
            ids.append(generate_identity(key))
            addresses.append(f"/ip4/127.0.0.1/tcp/{port}/p2p/{ids[-1]}")
        (self.out / "roster.json").write_text(json.dumps(ids) + "\n")
        self.addresses = addresses
        for index in range(self.config.peers):
            await self.spawn(index)
        for peer in self.peers:
            await self._address(peer.index)

    def _bootstrap(self, index: int) -> list[str]:
        if self.config.protocol == "modest":  # every peer needs the whole membership
            return [a for j, a in enumerate(self.addresses[: self.config.peers]) if j != index]
        if index < self.config.peers:  # its topology neighbours and Sybils attached to it
            peers = [*sorted(self.graph.neighbors(index)), *self.plan.sybils_at(index)]
            return [self.addresses[j] for j in peers]
        if index not in self._joiner_bootstrap:  # as many running peers as the mean degree
            degree = max(1, round(2 * self.graph.number_of_edges() / self.config.peers))
            running = [p.index for p in self.peers if p.process.returncode is None]
            picks = self._rng.choice(len(running), size=min(degree, len(running)), replace=False)
            self._joiner_bootstrap[index] = sorted(running[int(j)] for j in picks)
        return [self.addresses[j] for j in self._joiner_bootstrap[index]]

    async def spawn(self, index: int) -> None:
        """Start (or restart, with the same identity and state) the process of peer ``index``."""
        folder = self.out / f"peer-{index}"
        listen = self.addresses[index].split("/p2p/")[0]
        args = [*self.peer_args(index, self._bootstrap(index)), "--listen", listen]
        args += ["--identity", str(folder / "identity.key")]
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gossiplearn", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        )  # fmt: skip
        peer = PeerProcess(index, process, folder, asyncio.get_running_loop().create_future())
        peer.reader = asyncio.create_task(self._read_output(peer))
        if index < len(self.peers):
            self.peers[index] = peer
        elif index == len(self.peers):
            self.peers.append(peer)
        else:
            raise LaunchError(f"peer {index} started before peer {len(self.peers)}")

    async def _read_output(self, peer: PeerProcess) -> None:
        """Copy the peer's output to peer-i/output.log and pick out its address."""
        assert peer.process.stdout is not None
        with (peer.folder / "output.log").open("ab") as log:
            async for raw in peer.process.stdout:
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").strip()
                if line.startswith(LISTENING) and not peer.address.done():
                    peer.address.set_result(line.removeprefix(LISTENING))
        if not peer.address.done():
            code = await peer.process.wait()
            tail = (peer.folder / "output.log").read_text(errors="replace")[-2000:]
            peer.address.set_exception(
                LaunchError(f"peer {peer.index} exited ({code}) before listening:\n{tail}")
            )

    async def _address(self, index: int) -> str:
        try:
            async with asyncio.timeout(self.start_timeout):
                return await self.peers[index].address
        except TimeoutError:
            raise LaunchError(f"peer {index} did not report an address in time") from None

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to peer ``index`` (SIGKILL simulates a crash)."""
        peer = self.peers[index]
        peer.killed = sig == signal.SIGKILL
        with contextlib.suppress(ProcessLookupError):
            peer.process.send_signal(sig)

    async def wait(self, timeout: float) -> bool:
        """Wait for every peer to exit; False if some were still running at the timeout."""
        waits = [p.process.wait() for p in self.peers]
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*waits)
        except TimeoutError:
            return False
        return True

    async def wait_done(self, timeout: float) -> bool:
        """Play the timeline's joins and recoveries and wait until the run is over: every
        honest gossip peer has exited with no start left to do (attackers run until
        stopped); for MoDeST, where only the last
        round's aggregators finish, until some peer reported the last round."""
        try:
            async with asyncio.timeout(timeout):
                while not self._over():
                    await self._start_due()
                    await asyncio.sleep(0.2)
        except TimeoutError:
            return False
        return self.config.protocol != "modest" or self.last_round() >= self.config.rounds

    def _over(self) -> bool:
        if self.config.protocol == "modest" and self.last_round() >= self.config.rounds:
            return True
        honest = [p for p in self.peers if p.index not in self.plan.attackers]
        exited = all(p.process.returncode is not None for p in honest)  # attackers run on
        return exited and (not self.steps or self.steps[0].at_round is not None)

    async def _start_due(self) -> None:
        """Start the peers of every join/recover step that is due."""
        while self.steps:
            step = self.steps[0]
            if step.at_round is not None and step.at_round > self.last_round():
                return
            if step.at_time is not None and step.at_time > time.time() - self.clock_origin:
                return
            self.steps.pop(0)
            started = []
            for index in step.peers:
                alive = index < len(self.peers) and self.peers[index].process.returncode is None
                if not alive:
                    await self.spawn(index)
                    started.append(index)
            entry = step.log() | {"peers": started, "round": self.last_round()}
            self.timeline_log.append(entry | {"time": round(time.monotonic() - self.started, 3)})

    def _timeline(self) -> list[dict[str, Any]]:
        """What happened: the launcher's starts, and each event the peers carried out
        themselves (merged per event)."""
        done: dict[str, dict[str, Any]] = {}
        for peer in self.peers:
            for text in _timeline_lines(peer.folder):
                entry = done.setdefault(text, {"event": text, "peers": []})
                if peer.index not in entry["peers"]:
                    entry["peers"].append(peer.index)
        return [*self.timeline_log, *done.values()]

    def last_round(self) -> int:
        """The highest round any peer has reported so far."""
        return max((_last_round(p.folder) for p in self.peers), default=0)

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every running peer, SIGKILL those still running after ``grace``."""
        for peer in self.peers:
            if peer.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    peer.process.terminate()
        if not await self.wait(grace):
            for peer in self.peers:
                if peer.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        peer.process.kill()
            await self.wait(grace)
        await asyncio.gather(*(p.reader for p in self.peers if p.reader), return_exceptions=True)

    def gather(self) -> dict[str, Any]:
        """Merge the peers' results into one run folder; return the summary."""
        per_round: defaultdict[int, list[dict[str, Any]]] = defaultdict(list)
        finals: list[dict[str, Any]] = []  # every peer that finished (attackers too)
        honest: list[dict[str, Any]] = []  # what is measured, as in simulate
        for peer in self.peers:
            attacker = peer.index in self.plan.attackers
            lines = _read_jsonl(peer.folder / "metrics.jsonl")
            for line in lines:
                if "accuracy" in line and not attacker:
                    per_round[line["round"]].append(line)
            summary_path = peer.folder / "summary.json"
            if summary_path.is_file() and not peer.killed:
                finals.append(json.loads(summary_path.read_text()))
                if not attacker:
                    honest.append(finals[-1])
        metrics = [_round_line(r, lines) for r, lines in sorted(per_round.items())]
        write_metrics(self.out, metrics)
        accuracies = [f["accuracy"] for f in honest if f.get("accuracy") is not None]
        summary: dict[str, Any] = {
            "mean_accuracy": statistics.fmean(accuracies) if accuracies else None,
            "min_accuracy": min(accuracies, default=None),
            "max_accuracy": max(accuracies, default=None),
            "rounds": max((f["round"] for f in honest), default=0),
            "bytes_sent": sum(f["bytes_out"] for f in finals),
            "messages_sent": sum(f["messages_out"] for f in finals),
            "messages_rejected": _sum_counters(f.get("rejected", {}) for f in finals),
            "peers_finished": sum(1 for f in finals if f.get("finished")),
            "peers_killed": [p.index for p in self.peers if p.killed],
            **dict.fromkeys(ATTACK_MEASURES),
            **_mean_measures(honest),
            "attackers": self.plan.attackers,
            "sybils": sorted(self.plan.owner),
            "timeline": self._timeline(),
            "wall_seconds": round(time.monotonic() - self.started, 3),
            "seed": self.config.seed,
            "config": self.config.model_dump(mode="json") | {"driver": "launch"},
        }
        write_summary(self.out, summary)
        if metrics:
            plot_accuracy(self.out, [("", metrics)], run_title(summary["config"]) + " · launch")
        return summary


def _clear(folder: Path) -> None:
    """Forget what an earlier run left in a peer's folder: a fresh network must not resume
    its checkpoints nor add to its metrics."""
    if folder.is_dir():
        shutil.rmtree(folder)


def _timeline_lines(folder: Path) -> list[str]:
    """The timeline events a peer process carried out itself (from its output)."""
    path = folder / "output.log"
    if not path.is_file():
        return []
    return [
        line.removeprefix(TIMELINE).strip()
        for line in path.read_text(errors="replace").splitlines()
        if line.startswith(TIMELINE)
    ]


def _last_round(folder: Path) -> int:
    return max((line["round"] for line in _read_jsonl(folder / "metrics.jsonl")), default=0)


def _free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (held open together so they are distinct)."""
    with contextlib.ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    lines = []
    for text in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut short by SIGKILL
            lines.append(json.loads(text))
    return lines


def _mean_measures(lines: list[dict[str, Any]]) -> dict[str, float]:
    """Each attack measure averaged over the lines that have it (as simulate does)."""
    means = {}
    for key in ATTACK_MEASURES:
        values = [line[key] for line in lines if line.get(key) is not None]
        if values:
            means[key] = statistics.fmean(values)
    return means


def _round_line(round_: int, lines: list[dict[str, Any]]) -> dict[str, Any]:
    accuracies = [line["accuracy"] for line in lines]
    return {
        "round": round_,
        "time": max(line["time"] for line in lines),
        "mean_accuracy": statistics.fmean(accuracies),
        "min_accuracy": min(accuracies),
        "max_accuracy": max(accuracies),
        "peers_reporting": len(lines),
        "bytes_sent": sum(line["bytes_out"] for line in lines),
        **_mean_measures(lines),
    }


def _sum_counters(counters: Any) -> dict[str, int]:
    total: defaultdict[str, int] = defaultdict(int)
    for counter in counters:
        for key, value in counter.items():
            total[key] += value
    return dict(total)
