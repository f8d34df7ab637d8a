"""Slow-loris from fresh identities cannot exhaust a victim's memory nor stop its learning.

The attack (found against the transport that reserved a frame's whole payload from its
header, and timed out only a single idle read): many fresh libp2p identities each open a
model stream, write a valid header announcing a 64 MiB frame, then trickle one byte a
second. Per-peer limits see one stream per peer and pass them all; before the fix each
header reserved 64 MiB and each stream held a reading slot for as long as it trickled.

Real libp2p peers on 127.0.0.1: a victim gossip Peer with two honest neighbours (in this
test's fresh subprocess, so RSS is meaningful) and an attacker process holding
``ATTACKERS`` fresh identities that re-open a stream whenever one is cut. The victim's
buffers grow only as bytes arrive, slow frames lose their reading slot to newcomers and
every frame has a deadline, so its RSS stays flat, it keeps merging honest models at
no less than half its rate before the attack, its accuracy keeps improving, and the
refusals are counted by reason.

Rerun the scenario alone (prints its measurements as JSON)::

    python tests/adversarial/test_slowloris.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gossiplearn.transport.base import MODEL_PROTOCOL
from gossiplearn.transport.framing import pack_header
from gossiplearn.transport.libp2p import Libp2pTransport

if TYPE_CHECKING:
    from gossiplearn.learning.datasets import Dataset
    from gossiplearn.peer import Peer

pytestmark = [pytest.mark.network, pytest.mark.slow]

MB = 2**20
ATTACKERS = 36
ANNOUNCED_BYTES = 64 * MB
#: Identities that trickle even their header (the classic slow-loris) instead of a payload.
HEADER_TRICKLERS = 6
BASELINE_SECONDS = 12.0
ATTACK_SECONDS = 30.0
RSS_GROWTH_LIMIT_MB = 300
#: What the Peer itself gives its transport (max_message_mb=64, inbound_mb_per_second=32).
PEER_MAX_FRAME = 64 * MB + 4096
PEER_RATE = 32 * MB


@cache
def digits() -> Dataset:
    # imported here: the attacker process runs this file too and needs no torch
    from gossiplearn.learning.datasets import load_dataset

    return load_dataset("digits")


def rss_mb() -> float:
    """Resident set size of this process, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def test_slowloris_from_fresh_identities_is_contained() -> None:
    run = subprocess.run(
        [sys.executable, __file__], capture_output=True, text=True, timeout=170, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["attack"]["streams_opened"] >= ATTACKERS, result["attack"]
    assert result["peak_mb"] - result["baseline_mb"] < RSS_GROWTH_LIMIT_MB, result
    assert result["merges_per_min_attack"] >= 0.5 * result["merges_per_min_baseline"], result
    assert result["merges_attack"] >= 5, result
    assert result["accuracy_end"] > result["accuracy_first"], result
    assert result["accuracy_end"] >= result["accuracy_attack_start"] - 0.02, result
    rejected = result["rejected"]
    slow = sum(rejected.get(r, 0) for r in ("SlowFrameEvicted", "FrameDeadline", "ReadersBusy"))
    assert slow >= ATTACKERS, rejected  # every trickle was cut, not waited for
    assert result["neighbours_are_the_honest_peers"], result


def make_peer(index: int, transport: Libp2pTransport, bootstrap: list[str]) -> Peer:
    import numpy as np
    import torch

    from gossiplearn.learning.models import build_model
    from gossiplearn.learning.partition import partition
    from gossiplearn.peer import Peer, PeerConfig

    data = digits()
    shards = partition(data.train_y, "iid", 3, np.random.default_rng(0))
    shard = torch.from_numpy(shards[index])
    model = build_model("logreg", data.input_shape, data.num_classes, seed=index + 1)
    train = (torch.from_numpy(data.train_x)[shard], torch.from_numpy(data.train_y)[shard])
    test = (torch.from_numpy(data.test_x), torch.from_numpy(data.test_y))
    config = PeerConfig(
        merge_timeout=10.0,
        exchange_interval=0.5,
        neighbours=4,
        min_neighbours=1,
        seed=index,
        lr=0.01,
        momentum=0.0,
        local_steps=1,
        batch_size=16,
        min_round_seconds=0.5,
    )
    return Peer(model, train, test, config, transport=transport, bootstrap=bootstrap)


async def victim_scenario() -> dict[str, Any]:
    """The victim and two honest neighbours here; the attacker in a process of its own."""
    victim = make_peer(
        0,
        Libp2pTransport(max_frame_bytes=PEER_MAX_FRAME, max_bytes_per_peer_per_second=PEER_RATE),
        [],
    )
    loop = asyncio.get_running_loop()
    began = loop.time()
    merges: list[float] = []
    accuracy: list[tuple[float, float]] = []
    dropped: list[float] = []

    def on_round(info: dict[str, Any]) -> None:
        if "accuracy" in info:
            accuracy.append((loop.time(), info["accuracy"]))

    def on_left(info: dict[str, Any]) -> None:
        if info["peer"] == victim.peer_id:
            dropped.append(loop.time())

    victim.on("merged", lambda info: merges.append(loop.time()))
    victim.on("round", on_round)
    async with asyncio.timeout(150), victim:
        address = victim.transport.addresses[0]
        honest = [make_peer(i, Libp2pTransport(), [address]) for i in (1, 2)]
        for peer in honest:
            peer.on("peer_left", on_left)
        async with contextlib.AsyncExitStack() as stack:
            for peer in honest:
                await stack.enter_async_context(peer)
            while victim.status().round < 3 or len(victim.neighbours) < 2:
                await asyncio.sleep(0.1)
            attacker = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "attack", victim.peer_id, address,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert attacker.stdin is not None and attacker.stdout is not None
            assert (await attacker.stdout.readline()).strip() == b"ready"
            _progress(f"attacker ready after {loop.time() - began:.1f} s")
            baseline_start = loop.time()
            await asyncio.sleep(BASELINE_SECONDS)
            baseline_mb, peak = rss_mb(), 0.0
            attack_start = loop.time()
            accuracy_attack_start = accuracy[-1][1]
            attacker.stdin.write(b"go\n")
            await attacker.stdin.drain()
            while loop.time() < attack_start + ATTACK_SECONDS:
                peak = max(peak, rss_mb())
                await asyncio.sleep(0.1)
            attack_end = loop.time()
            _progress(f"attack over after {loop.time() - began:.1f} s")
            attack = json.loads(await attacker.stdout.readline())
            status = victim.status()
    await attacker.wait()

    def count(start: float, end: float) -> int:
        return len([t for t in merges if start <= t < end])

    return {
        "attack": attack,
        "baseline_mb": baseline_mb,
        "peak_mb": peak,
        "merges_baseline": count(baseline_start, attack_start),
        "merges_attack": count(attack_start, attack_end),
        "merges_per_min_baseline": 60 * count(baseline_start, attack_start) / BASELINE_SECONDS,
        "merges_per_min_attack": 60 * count(attack_start, attack_end) / (attack_end - attack_start),
        "accuracy_first": accuracy[0][1],
        "accuracy_attack_start": accuracy_attack_start,
        "accuracy_end": accuracy[-1][1],
        "victim_dropped_by_neighbours": len([t for t in dropped if t >= attack_start]),
        "rejected": status.rejected,
        "seconds": loop.time() - began,
        "neighbours_are_the_honest_peers": sorted(status.neighbours)
        == sorted(p.peer_id for p in honest),
    }


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---- the attacker process --------------------------------------------------------------------


async def attack(victim: str, address: str) -> None:
    """``ATTACKERS`` fresh identities, each keeping one trickling stream open at the victim."""
    identities = [Libp2pTransport(connect_timeout=20.0) for _ in range(ATTACKERS)]
    stats = {"streams_opened": 0, "bytes_sent": 0, "streams_cut": 0}
    try:
        await asyncio.gather(*(identity.start() for identity in identities))
        await asyncio.gather(*(identity.connect(address) for identity in identities))
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        stop_at = time.monotonic() + ATTACK_SECONDS
        await asyncio.gather(
            *(
                _in_trio(identity, _trickle, victim, i < HEADER_TRICKLERS, stop_at, stats)
                for i, identity in enumerate(identities)
            ),
            return_exceptions=True,
        )
        print(json.dumps(stats), flush=True)
    finally:
        await asyncio.gather(*(identity.stop() for identity in identities))


async def _in_trio(transport: Libp2pTransport, function: Any, *args: Any) -> None:
    """Run ``function(host, *args)`` in the transport's trio thread (white-box)."""

    async def call() -> None:
        await function(transport._host, *args)

    await transport._call(call, timeout=ATTACK_SECONDS + 10)


async def _trickle(
    host: Any, victim: str, header_too: bool, stop_at: float, stats: dict[str, int]
) -> None:
    import trio
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    header = pack_header(ANNOUNCED_BYTES, bytes(32))
    while time.monotonic() < stop_at:
        try:
            stream = await host.new_stream(ID.from_base58(victim), [TProtocol(MODEL_PROTOCOL)])
            stats["streams_opened"] += 1
            if not header_too:
                await stream.write(header)
                stats["bytes_sent"] += len(header)
            for byte in range(ANNOUNCED_BYTES):
                if time.monotonic() >= stop_at:
                    return
                data = header[byte : byte + 1] if header_too and byte < len(header) else b"\0"
                await stream.write(data)
                stats["bytes_sent"] += 1
                await trio.sleep(1.0)
        except Exception:  # cut by the victim: come back with a new stream
            stats["streams_cut"] += 1
            await trio.sleep(0.2)


if __name__ == "__main__":
    if sys.argv[1:2] == ["attack"]:
        asyncio.run(attack(sys.argv[2], sys.argv[3]))
    else:  # the scenario, run in a fresh process by the test above
        print(json.dumps(asyncio.run(victim_scenario())))
