"""``gossiplearn peer``: one real peer on any machine, with its slice of a dataset.

Prints its full multiaddr first (others bootstrap from it), then one line per round. Writes
``metrics.jsonl`` (a line per round) and ``summary.json`` into ``--out`` so that
``gossiplearn launch`` can gather a whole network's results. SIGINT/SIGTERM stop it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gossiplearn.config import RunConfig
from gossiplearn.errors import ConfigError
from gossiplearn.learning.datasets import Dataset, load_dataset
from gossiplearn.learning.models import build_model, check_model_fits
from gossiplearn.learning.partition import partition
from gossiplearn.peer.bristle_setup import peer_transfer
from gossiplearn.peer.config import PeerConfig
from gossiplearn.peer.metrics import PeerMetrics
from gossiplearn.peer.peer import Peer
from gossiplearn.peer.scenario import AttackPlan, TimelineFollower, measure_attack
from gossiplearn.peer.sybils import SybilIdentities, any_port, libp2p_identities
from gossiplearn.timeline import Step
from gossiplearn.transport.base import Transport
from gossiplearn.transport.discovery import NetworkServices

#: What an honest peer of an attacked scenario measures (see measure_attack).
ATTACK_MEASURES = ("attack_success_rate", "attacker_weight")


@dataclass
class PeerOptions:
    """What the command line gives a standalone peer besides its PeerConfig."""

    config: PeerConfig
    listen: str = "/ip4/127.0.0.1/tcp/0"
    bootstrap: list[str] = field(default_factory=list)
    identity: Path | None = None
    state_dir: Path | None = None
    out: Path | None = None
    dataset: str = "digits"
    data_dir: str | None = None
    partition: str = "iid"
    index: int = 0
    of: int = 1
    model: str = "mlp"
    shared_init: bool = False
    threads: int = 1
    #: Evaluate on this many test samples (the seeded subset the simulator takes); None: all.
    eval_samples: int | None = None
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"
    #: Playing role ``index`` of a scenario: its data shard and initial model come from
    #: it, and it follows its own timeline events (see gossiplearn.peer.scenario).
    scenario: RunConfig | None = None
    timeline: list[Step] = field(default_factory=list)
    roster: list[str] = field(default_factory=list)
    clock_origin: float = field(default_factory=time.time)
    #: Addresses others should dial (printed, and passed on in peer exchange).
    announce: list[str] = field(default_factory=list)
    #: After the last round, stay online this many seconds at most, answering neighbours'
    #: models with the final one (ends early once no neighbour is left).
    linger: float = 0.0
    #: Discovery and NAT traversal (--network, --mdns, --relay, --relay-service).
    services: NetworkServices | None = None
    #: An attacker's Sybil identities: key files and listening addresses, one each
    #: (--sybil-identity, --sybil-listen); none given: fresh keys on any port.
    sybil_identities: list[Path] = field(default_factory=list)
    sybil_listen: list[str] = field(default_factory=list)
    #: A scenario's attack plan: an attacker's identities attach to the honest peers it
    #: names (those bootstrap from them), and honest peers measure the attack.
    attack_plan: AttackPlan | None = None


def parse_partition_index(text: str) -> tuple[int, int]:
    """``"i/N"`` -> (i, N) with 0 <= i < N."""
    try:
        index, total = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--partition-index {text!r} must look like i/N, e.g. 3/10") from None
    if not 0 <= index < total:
        raise ConfigError(f"--partition-index {text!r}: need 0 <= i < N")
    return index, total


def _test_subset(
    data: Dataset, samples: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The test set, or the seeded subset of ``samples`` of it that ``simulate`` takes."""
    x, y = data.test_x, data.test_y
    if samples is not None and samples < len(y):
        from gossiplearn.plan import Streams

        stream = Streams.from_seed(seed, 1).eval_subset
        keep = np.sort(stream.choice(len(y), samples, replace=False))
        x, y = x[keep], y[keep]
    return torch.from_numpy(x), torch.from_numpy(y)


def build_peer(options: PeerOptions, transport: Transport | None = None) -> Peer:
    """The peer's model and data slice. Every peer of a network computes the same partition
    from the shared seed and keeps slice ``index``."""
    seed = options.config.seed
    data = load_dataset(options.dataset, options.data_dir, seed=seed)
    transfer = None
    if options.config.aggregator == "bristle":  # peers never get the extractor's rows
        transfer = peer_transfer(options.config, options.model, data)
        data = transfer.peer_data
    if options.scenario is not None:
        from gossiplearn.plan import planned_shard

        rows, init_seed = planned_shard(options.scenario, data, options.index)
    else:
        rng = np.random.default_rng(seed)
        shards = partition(data.train_y, options.partition, options.of, rng, data.train_groups)
        rows = shards[options.index]
        init_seed = seed if options.shared_init else seed * 1_000_003 + options.index + 1
    shard = torch.from_numpy(rows)
    if transfer is not None:  # a frozen extractor under a zero head: no init to seed
        model: torch.nn.Module = transfer.model()
    else:
        model = build_model(options.model, data.input_shape, data.num_classes, seed=init_seed)
    x, y = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    if transfer is None:
        check_model_fits(model, options.model, x[:1], data.num_classes)
    test = _test_subset(data, options.eval_samples, seed)
    sybils = _sybil_transports(options) if transport is None else None
    peer = Peer(
        model,
        (x[shard], y[shard]),
        test,
        options.config,
        transport=transport,
        listen=options.listen,
        bootstrap=options.bootstrap,
        identity=options.identity,
        state_dir=options.state_dir,
        announce=options.announce,
        services=options.services,
        sybil_transports=sybils,
        attack_pool=(x, y) if options.config.attack else None,  # as simulate's attackers
    )
    plan = options.attack_plan
    if options.scenario is not None and plan is not None:
        if options.index in plan.attackers:  # its identities have neighbours of their own
            peer.sybils = SybilIdentities(
                peer.sybils.transports, options.config.send_timeout, attached=True
            )
        else:
            measure_attack(peer, options.scenario, plan, options.roster, data)
    return peer


def _sybil_transports(options: PeerOptions) -> list[Transport] | None:
    """The attacker's Sybil identities from --sybil-identity/--sybil-listen (None: the
    peer makes fresh ones); ConfigError naming the flags if they do not fit --sybils."""
    keys, listen = options.sybil_identities, options.sybil_listen
    if not keys and not listen:
        return None
    wanted = options.config.sybils - 1
    if len(keys) != wanted:
        raise ConfigError(
            f"--sybil-identity given {len(keys)} times: an attacker with --sybils "
            f"{options.config.sybils} holds {wanted} identities besides its own; give one "
            "key file (gossiplearn keygen) for each"
        )
    if listen and len(listen) != len(keys):
        raise ConfigError(
            f"--sybil-listen given {len(listen)} times for {len(keys)} --sybil-identity "
            "files: give one address per identity, or none (any port of --listen's host)"
        )
    return libp2p_identities(options.config, keys, listen or [any_port(options.listen)] * wanted)


async def run_peer(options: PeerOptions, transport: Transport | None = None) -> int:
    torch.set_num_threads(options.threads)
    peer = build_peer(options, transport)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    if options.metrics_port is not None:
        _serve_metrics(peer, options.metrics_port, options.metrics_address)
    metrics = None
    last: dict[str, Any] = {}  # the last round's line
    if options.out is not None:
        options.out.mkdir(parents=True, exist_ok=True)
        metrics = (options.out / "metrics.jsonl").open("a")

    def on_round(info: dict[str, Any]) -> None:
        line = {"time": round(time.monotonic() - started, 3), **info}
        last.clear()
        last.update(line)
        accuracy = f"{info['accuracy']:.4f}" if "accuracy" in info else "   -  "
        print(
            f"round {info['round']:>4}  acc {accuracy}  neighbours {info['neighbours']}  "
            f"in {info['bytes_in'] / 1e6:.1f} MB  out {info['bytes_out'] / 1e6:.1f} MB",
            flush=True,
        )
        if metrics is not None:
            metrics.write(json.dumps(line) + "\n")
            metrics.flush()

    peer.on("round", on_round)
    peer.on("peer_joined", lambda info: print(f"neighbour joined: {info['peer']}", flush=True))
    peer.on("peer_left", lambda info: print(f"neighbour left: {info['peer']}", flush=True))
    follower = None
    if options.timeline:
        follower = TimelineFollower(
            peer,
            options.index,
            options.timeline,
            roster=options.roster,
            clock_origin=options.clock_origin,
            leave=stop.set,
        )
    try:
        async with peer:
            print(f"peer id {peer.peer_id}", flush=True)
            for address in peer.transport.addresses:
                print(f"listening on {address}", flush=True)
            for sybil in peer.sybils.transports:  # an attacker's other identities
                for address in sybil.addresses:
                    print(f"sybil identity listening on {address}", flush=True)
            if follower is not None:
                clock = follower.attach()
            finished = asyncio.create_task(peer.finished())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({finished, stopped}, return_when=asyncio.FIRST_COMPLETED)
            for task in (finished, stopped):
                task.cancel()
            if finished.done() and not finished.cancelled():
                finished.exception()  # a failure is raised below, after the summary
                if peer.failure is None and not stop.is_set():
                    await _linger(peer, options.linger, stop)
            if follower is not None:
                clock.cancel()
            status = peer.status()
    finally:
        if metrics is not None:
            metrics.close()
    print(f"stopped at round {status.round}; accuracy {status.accuracy}", flush=True)
    if options.out is not None:
        summary = {
            "peer_id": status.peer_id,
            "index": options.index,
            "round": status.round,
            "accuracy": status.accuracy,
            "finished": status.finished,
            "bytes_in": status.bytes_in,
            "bytes_out": status.bytes_out,
            "messages_out": status.messages_out,
            "rejected": status.rejected,
            "network": status.network,
            "discovered": status.discovered,
            "wall_seconds": round(time.monotonic() - started, 3),
        }
        summary |= {k: last[k] for k in ATTACK_MEASURES if k in last}
        if options.attack_plan is not None:
            summary["attacker"] = options.index in options.attack_plan.attackers
        (options.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if peer.failure is not None:
        raise peer.failure  # after the summary: the CLI exits 1 with its message
    return 0


async def _linger(peer: Peer, seconds: float, stop: asyncio.Event) -> None:
    """Stay online after the last round, serving the final model to neighbours still
    training, for ``seconds`` at most; leave early once no neighbour is left or on a signal."""
    if seconds <= 0 or not peer.neighbours:
        return
    status = peer.status()
    print(
        f"finished round {status.round}; still serving the final model to "
        f"{len(peer.neighbours)} neighbours for up to {seconds:.0f} s (--linger; Ctrl-C "
        "to leave now)",
        flush=True,
    )
    peer.serve_when_finished = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    # neighbours that stopped sending models for a few gossip periods are finished too
    quiet = 3 * (peer.config.min_round_seconds or 1.0) + peer.config.merge_timeout
    since = loop.time()
    left = "linger time over"
    while loop.time() < deadline and not stop.is_set():
        if not peer.neighbours:
            left = "no neighbour left"
            break
        if loop.time() - max(since, peer.last_request_at or since) > quiet:
            left = f"no neighbour sent a model for {quiet:.0f} s (they are finished too)"
            break
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(0.5, max(0.0, deadline - loop.time()))):
                await stop.wait()
    print(f"leaving: {left}", flush=True)


def _serve_metrics(peer: Peer, port: int, address: str) -> None:
    """Serve /metrics; ConfigError naming the flags if the port cannot be had."""
    try:
        PeerMetrics(peer).serve(port, address)
    except OSError as error:
        raise ConfigError(
            f"--metrics-port {port}: cannot serve metrics on {address}:{port} "
            f"({error.strerror or error}); choose a free port (or another --metrics-address)"
        ) from None
