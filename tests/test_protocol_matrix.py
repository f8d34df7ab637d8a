"""Every protocol a real peer runs, played from a scenario file.

For each protocol of the registry, three peers take roles 0..2 of one scenario file
exactly as ``gossiplearn peer --scenario FILE --index I`` does (the path ``launch`` uses
for every process) and learn together over the in-memory transport. ``launch`` with real
processes is tested per protocol in tests/test_launch.py; the simulator in
tests/test_pinned_runs.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gossiplearn.cli import _scenario_role, build_parser, main
from gossiplearn.peer import Peer
from gossiplearn.peer.standalone import build_peer
from gossiplearn.protocols.registry import BUILDERS
from gossiplearn.transport.memory import InMemoryNetwork, memory_address

SCENARIO = dict(
    peers=3, rounds=4, topology="complete", model="logreg", dataset="digits", seed=5,
    merge_timeout=2.0, local_steps=5, sample_size=2,
)  # fmt: skip


def roles(path: Path, network: InMemoryNetwork) -> list[Peer]:
    parser = build_parser()
    peers = []
    for index in range(3):
        args = parser.parse_args(["peer", "--scenario", str(path), "--index", str(index)])
        options = _scenario_role(args)
        options.bootstrap = [memory_address(f"p{j}") for j in range(3) if j != index]
        peers.append(build_peer(options, transport=network.transport(f"p{index}")))
    return peers


@pytest.mark.parametrize("protocol", sorted(BUILDERS))
async def test_each_protocol_learns_from_a_scenario_file(protocol: str, tmp_path: Path) -> None:
    path = tmp_path / "scenario.json"
    model = "mlp" if protocol == "bristle" else "logreg"  # bristle: an extractor to pretrain
    path.write_text(json.dumps(SCENARIO | {"protocol": protocol, "model": model}))
    peers = roles(path, InMemoryNetwork())
    async with asyncio.timeout(120), peers[0], peers[1], peers[2]:
        if protocol == "modest":  # a peer not sampled last learns of no end: as in launch,
            finished = [asyncio.ensure_future(peer.finished()) for peer in peers]
            await asyncio.wait(finished, return_when=asyncio.FIRST_COMPLETED)
            for waiting in finished:
                waiting.cancel()
        else:
            await asyncio.gather(*(peer.finished() for peer in peers))
    statuses = [peer.status() for peer in peers]
    done = SCENARIO["rounds"] - (1 if protocol == "modest" else 0)  # the run ends when one has
    assert all(s.round >= done for s in statuses), [s.round for s in statuses]
    assert all(s.messages_in > 0 for s in statuses)  # they gossiped
    # 10 classes: chance is 0.1. A MoDeST peer reports the accuracy of the last model it
    # aggregated, which may be an early round's (or none): judge the network's newest.
    accuracies = [s.accuracy or 0.0 for s in statuses]
    judged = max(accuracies) if protocol == "modest" else min(accuracies)
    assert judged > 0.5, accuracies


def test_fedavg_is_refused_on_real_peers(tmp_path: Path) -> None:
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(SCENARIO | {"protocol": "fedavg"}))
    assert main(["peer", "--scenario", str(path), "--index", "0"]) == 2


@pytest.mark.parametrize("protocol", sorted(set(BUILDERS) - {"sybilwall"}))
async def test_each_protocol_learns_with_compressed_models(protocol: str, tmp_path: Path) -> None:
    """The scenario's compression reaches every role; what each peer rebuilds it learns from."""
    path = tmp_path / "scenario.json"
    model = "mlp" if protocol == "bristle" else "logreg"
    settings = {"protocol": protocol, "model": model, "compression": "topk:0.3+int8"}
    path.write_text(json.dumps(SCENARIO | settings))
    peers = roles(path, InMemoryNetwork())
    async with asyncio.timeout(120), peers[0], peers[1], peers[2]:
        finished = [asyncio.ensure_future(peer.finished()) for peer in peers]
        await asyncio.wait(finished, return_when=asyncio.FIRST_COMPLETED)
        if protocol != "modest":
            await asyncio.gather(*finished)
        for waiting in finished:
            waiting.cancel()
    assert all(peer.config.compression == "topk:0.3+int8" for peer in peers)
    assert any(peer.link.held for peer in peers)  # compressed models arrived and were rebuilt
    accuracies = [peer.status().accuracy or 0.0 for peer in peers]
    judged = max(accuracies) if protocol == "modest" else min(accuracies)
    assert judged > 0.5, accuracies


def test_compression_is_refused_with_sybilwall(tmp_path: Path) -> None:
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(SCENARIO | {"protocol": "sybilwall", "compression": "int8"}))
    assert main(["peer", "--scenario", str(path), "--index", "0"]) == 2
