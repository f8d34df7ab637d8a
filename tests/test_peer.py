"""The asyncio Peer on the in-memory transport: learning, discovery, bad input, churn,
checkpoints and the embedding API. Bounded in time; tests that wait use a virtual clock."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gossiplearn.learning.datasets import load_dataset
from gossiplearn.learning.models import build_model
from gossiplearn.learning.partition import partition
from gossiplearn.peer import Peer, PeerConfig
from gossiplearn.peer.checkpoint import CHECKPOINT
from gossiplearn.peer.clock import Clock, VirtualClock
from gossiplearn.peer.sybils import SybilIdentities
from gossiplearn.protocols.codec import encode
from gossiplearn.protocols.dpsgd import DPSGDCore
from gossiplearn.protocols.messages import ModelMessage
from gossiplearn.protocols.sybilwall import SybilWallCore
from gossiplearn.transport import MODEL_PROTOCOL
from gossiplearn.transport.memory import InMemoryNetwork, memory_address

DATA = load_dataset("digits")
TEST = (torch.from_numpy(DATA.test_x), torch.from_numpy(DATA.test_y))


def make_peer(
    network: InMemoryNetwork,
    name: str,
    index: int,
    of: int,
    *,
    bootstrap: tuple[str, ...] = (),
    state_dir: Path | None = None,
    clock: Clock | None = None,
    **config: Any,
) -> Peer:
    shards = partition(DATA.train_y, "iid", of, np.random.default_rng(0))
    shard = torch.from_numpy(shards[index])
    model = build_model("logreg", DATA.input_shape, DATA.num_classes, seed=index + 1)
    train = (torch.from_numpy(DATA.train_x)[shard], torch.from_numpy(DATA.train_y)[shard])
    settings = dict(merge_timeout=1.0, exchange_interval=0.2, neighbours=4) | config
    if of == 1:
        settings.setdefault("min_neighbours", 0)  # alone by design
    return Peer(
        model,
        train,
        TEST,
        PeerConfig(**settings),
        transport=network.transport(name),
        bootstrap=[memory_address(b) for b in bootstrap],
        state_dir=state_dir,
        clock=clock,
    )


async def test_peers_learn_together_and_find_each_other() -> None:
    network = InMemoryNetwork()
    # b and c are told only about a: they must find each other through peer exchange.
    a = make_peer(network, "a", 0, 3)
    b = make_peer(network, "b", 1, 3, bootstrap=("a",))
    c = make_peer(network, "c", 2, 3, bootstrap=("a",))
    joined: list[str] = []
    merges: list[int] = []
    b.on("peer_joined", lambda info: joined.append(info["peer"]))
    b.on("merged", lambda info: merges.append(info["models"]))
    async with asyncio.timeout(60), a, b, c:
        while "c" not in joined or min(p.status().round for p in (a, b, c)) < 12:
            await asyncio.sleep(0.05)
        status = b.status()
    assert sorted(status.neighbours) == ["a", "c"]  # c learned through exchange, never told
    assert merges and max(merges) >= 1
    assert status.accuracy is not None and status.accuracy > 0.8
    assert status.bytes_out > 0 and status.bytes_in > 0


async def test_bad_models_are_rejected_and_the_peer_keeps_going() -> None:
    network = InMemoryNetwork()
    victim = make_peer(network, "victim", 0, 2, rounds=4, min_neighbours=0)
    attacker = network.transport("attacker")
    rejected: list[str] = []
    victim.on("rejected", lambda info: rejected.append(info["reason"]))
    params = victim.learner.params()
    nan = {k: np.full_like(v, np.nan) for k, v in params.items()}
    wrong_shape = {k: np.zeros((3, 3), np.float32) for k in params}
    async with asyncio.timeout(60), victim:
        await attacker.start()
        await attacker.connect(memory_address("victim"))
        for payload in (
            b"\x00garbage",
            encode(ModelMessage(1, nan)),
            b"\x00" * (65 * 2**20),  # over the 64 MiB default limit
            encode(ModelMessage(1, wrong_shape)),  # another architecture: ignored from now on
        ):
            await attacker.send("victim", MODEL_PROTOCOL, payload)
        while len(rejected) < 4:
            await asyncio.sleep(0.01)
        await attacker.send("victim", MODEL_PROTOCOL, encode(ModelMessage(2, params)))
        await victim.finished()
        await attacker.stop()
    assert sorted(rejected) == sorted(
        ["MalformedMessage", "NonFiniteModel", "ModelMismatch", "MessageTooLarge"]
    )
    assert victim.status().round == 4
    assert victim.status().rejected["ModelMismatch"] == 2  # the misfit, then the one after
    assert "attacker" in victim.architecture.incompatible


async def test_a_crashed_neighbour_does_not_stop_the_others() -> None:
    network = InMemoryNetwork()
    peers = [make_peer(network, "p0", 0, 3, rounds=10)]
    peers += [make_peer(network, f"p{i}", i, 3, bootstrap=("p0",), rounds=10) for i in (1, 2)]
    left: list[str] = []
    peers[0].on("peer_left", lambda info: left.append(info["peer"]))
    async with asyncio.timeout(90), peers[0], peers[1], peers[2]:
        while peers[0].status().round < 3:
            await asyncio.sleep(0.05)
        network.disconnect("p2")  # a crash: no goodbye
        await asyncio.gather(peers[0].finished(), peers[1].finished())
    assert "p2" in left  # p2 bootstrapped from p0, so p0 had it as a neighbour
    assert [p.status().round for p in peers[:2]] == [10, 10]
    assert "p2" not in peers[0].status().neighbours


async def test_restart_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    network = InMemoryNetwork()
    first = make_peer(network, "solo", 0, 1, state_dir=tmp_path, rounds=3, merge_timeout=0.05)
    async with asyncio.timeout(60), first:
        await first.finished()
    assert (tmp_path / CHECKPOINT).is_file()
    saved = first.core.params if first.core else {}

    again = make_peer(
        InMemoryNetwork(), "solo", 0, 1, state_dir=tmp_path, rounds=5, merge_timeout=0.05
    )
    rounds: list[int] = []
    again.on("round", lambda info: rounds.append(info["round"]))
    async with asyncio.timeout(60), again:
        assert again.core is not None and again.core.round == 3
        for name, value in saved.items():
            np.testing.assert_array_equal(again.core.params[name], value)
        await again.finished()
    assert rounds == [4, 5]


async def test_a_corrupt_checkpoint_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    peer = make_peer(InMemoryNetwork(), "solo", 0, 1, state_dir=tmp_path, rounds=1)
    async with asyncio.timeout(30), peer:
        assert peer.core is not None and peer.core.round == 0
        await peer.finished()
    assert "ignoring checkpoint" in caplog.text


async def test_unreachable_bootstrap_is_retried_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = VirtualClock()
    async with asyncio.timeout(30), clock:
        peer = make_peer(
            InMemoryNetwork(), "lonely", 0, 1, bootstrap=("nobody",), rounds=1, clock=clock
        )
        async with peer:
            await clock.sleep(2.0)
    attempts = [r.message for r in caplog.records if "unreachable" in r.message]
    assert len(attempts) >= 2
    assert "attempt 1" in attempts[0] and "retrying in 0.5 s" in attempts[0]
    assert "retrying in 1.0 s" in attempts[1]


async def test_a_bootstrap_node_that_takes_no_models_is_no_neighbour_and_not_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bootstrap that does not speak the model protocol (a ``gossiplearn relay``) serves
    discovery only: it is not waited for, not called unreachable, not probed."""
    network = InMemoryNetwork()
    relay = network.transport("relay")  # no handlers: it speaks no gossiplearn protocol
    await relay.start()
    b = make_peer(network, "b", 1, 2)
    a = make_peer(network, "a", 0, 2, bootstrap=("relay", "b"))
    async with asyncio.timeout(60), b, a:
        while min(p.status().round for p in (a, b)) < 6:
            await asyncio.sleep(0.05)
        assert a.neighbours == ["b"] and a.not_speaking == {"relay"}
        assert not a.reach.unreachable("relay")
    await relay.stop()
    assert not [r for r in caplog.records if "unreachable" in r.message], caplog.text


def test_unknown_event_name_is_refused() -> None:
    peer = make_peer(InMemoryNetwork(), "x", 0, 1)
    with pytest.raises(ValueError, match="round"):
        peer.on("rounds", print)


async def test_prometheus_metrics_are_served() -> None:
    import socket
    import urllib.request

    from gossiplearn.peer.metrics import PeerMetrics

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    peer = make_peer(InMemoryNetwork(), "solo", 0, 1, rounds=2, merge_timeout=0.05)
    PeerMetrics(peer).serve(port)
    async with asyncio.timeout(30), peer:
        await peer.finished()
        url = f"http://127.0.0.1:{port}/metrics"
        text = (await asyncio.to_thread(urllib.request.urlopen, url, None, 5)).read().decode()
    assert "gossiplearn_round 2.0" in text
    assert "gossiplearn_accuracy" in text and "gossiplearn_bytes_out_total" in text
    assert "gossiplearn_transfer_seconds_bucket" in text


def test_json_logs_are_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import logging

    from gossiplearn.logs import setup_logging

    setup_logging("info", "json")
    try:
        logging.getLogger("gossiplearn.peer").warning("hello %s", "world")
    finally:
        setup_logging("warning", "text")
    entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert entry["message"] == "hello world" and entry["level"] == "warning"


async def test_a_peer_can_attack_its_neighbours() -> None:
    from gossiplearn.protocols.codec import decode

    network = InMemoryNetwork()
    received: list[bytes] = []
    victim = network.transport("victim")

    async def keep(sender: str, payload: bytes) -> None:
        received.append(payload)

    victim.set_handler(MODEL_PROTOCOL, keep)
    await victim.start()
    attacker = make_peer(
        network, "attacker", 0, 2, bootstrap=("victim",), rounds=2, attack="noise:uniform:10:11"
    )
    rounds: list[int] = []
    attacker.on("round", lambda info: rounds.append(info["round"]))
    async with asyncio.timeout(30), attacker:
        await attacker.finished()
    await victim.stop()
    assert rounds == [1, 2]  # a real attacker still shows its progress
    assert received
    for payload in received:
        params = decode(payload, attacker.spec).params
        assert all(v.min() >= 10 and v.max() <= 11 for v in params.values())


def test_attack_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown attack"):
        PeerConfig(attack="flip")
    with pytest.raises(ValueError, match="gossip only"):
        PeerConfig(attack="sign-flip", protocol="modest")


async def test_a_silent_neighbour_gives_way_to_a_useful_peer() -> None:
    from gossiplearn.peer.discovery import SOURCE_QUOTA, encode_exchange
    from gossiplearn.transport import PEER_EXCHANGE_PROTOCOL

    clock = VirtualClock()
    network = InMemoryNetwork(sleep=clock.sleep)
    silent = network.transport("silent")  # accepts everything, never sends a model

    async def swallow(sender: str, payload: bytes) -> None:
        return None

    silent.set_handler(MODEL_PROTOCOL, swallow)
    silent.set_handler(PEER_EXCHANGE_PROTOCOL, swallow)
    await silent.start()
    # h keeps one neighbour and bootstraps from the silent peer; friend comes later.
    h = make_peer(
        network, "h", 0, 2, bootstrap=("silent",), neighbours=1, merge_timeout=0.3, clock=clock
    )
    friend = make_peer(network, "friend", 1, 2, bootstrap=("h",), clock=clock)
    seen: list[list[str]] = []
    async with asyncio.timeout(60), clock, h, friend:
        await clock.sleep(0.5)  # a round, waiting for silent's model
        assert h.neighbours == ["silent"]
        lies = [("silent", [memory_address("silent")])]
        lies += [(f"fake{i}", [memory_address(f"fake{i}")]) for i in range(300)]
        while h.neighbours != ["friend"]:
            for start in range(0, len(lies), 64):  # peer exchange does not make a neighbour
                await silent.send("h", PEER_EXCHANGE_PROTOCOL, encode_exchange(lies[start:]))
            seen.append(list(h.neighbours))
            await clock.sleep(0.2)
        for _ in range(10):
            await silent.send("h", PEER_EXCHANGE_PROTOCOL, encode_exchange(lies[:64]))
            await clock.sleep(0.1)
        assert h.neighbours == ["friend"]  # silent never gets back in
        assert h.book is not None and h.book.count_from("silent") <= SOURCE_QUOTA
        rounds = h.status().round
        await clock.sleep(2.0)
        assert h.status().round - rounds >= 4  # no longer waiting out merge timeouts
    await silent.stop()
    assert all(set(n) <= {"silent", "friend"} for n in seen)  # never a fake id


async def test_a_checkpoint_that_cannot_be_written_fails_the_peer(tmp_path: Path) -> None:
    import shutil

    from gossiplearn.errors import CheckpointError

    state = tmp_path / "state"
    peer = make_peer(InMemoryNetwork(), "solo", 0, 1, state_dir=state, merge_timeout=0.05)
    async with asyncio.timeout(30), peer:
        while peer.status().round < 2:
            await asyncio.sleep(0.02)
        # moved away in one step: a checkpoint being written meanwhile cannot refill it
        state.rename(tmp_path / "moved")
        shutil.rmtree(tmp_path / "moved")
        state.write_text("")  # a file where the directory was
        with pytest.raises(CheckpointError, match="choose another state dir"):
            await peer.finished()
    assert not peer.status().finished


async def test_an_out_of_range_checkpoint_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    peer = make_peer(InMemoryNetwork(), "solo", 0, 1, state_dir=tmp_path, rounds=1)
    (tmp_path / CHECKPOINT).write_bytes(encode(ModelMessage(2**64 - 1, peer.learner.params())))
    async with asyncio.timeout(30), peer:
        assert peer.core is not None and peer.core.round == 0
        await peer.finished()
    assert "ignoring checkpoint" in caplog.text and "out of range" in caplog.text


async def test_sybil_identities_send_the_attackers_model_and_sybilwall_mutes_them() -> None:
    network = InMemoryNetwork()
    honest = [make_peer(network, "h0", 0, 4, aggregator="sybilwall", rounds=8, neighbours=8)]
    honest += [
        make_peer(network, f"h{i}", i, 4, bootstrap=("h0",), aggregator="sybilwall", rounds=8)
        for i in (1, 2)
    ]
    sybils = [network.transport(f"s{i}") for i in range(3)]
    attacker = make_peer(
        network, "a", 3, 4, bootstrap=("h0",), attack="sign-flip", sybils=4, rounds=8
    )
    attacker.sybils = SybilIdentities(sybils)  # its other identities, on the same network
    identities = {"a", "s0", "s1", "s2"}
    merges: list[dict[str, float]] = []  # h0's weights in each merge with an identity in it

    def record(info: object) -> None:
        core = honest[0].core
        if isinstance(core, SybilWallCore) and identities & set(core.last_weights):
            merges.append(dict(core.last_weights))

    honest[0].on("merged", record)
    async with asyncio.timeout(90), honest[0], honest[1], honest[2], attacker:
        await asyncio.gather(*(peer.finished() for peer in honest))
        sent = attacker.sybils.delivered
    assert sent >= 3 * 5  # every identity sent to h0 (its bootstrap) in most rounds
    assert len(merges) >= 3, merges  # h0 merged the attacker's identities' models
    weights = merges[-1]  # once their histories are known, SybilWall mutes them
    assert max(weights[p] for p in identities & set(weights)) < 0.05, weights
    assert min(p.status().accuracy or 0.0 for p in honest) > 0.8


def test_sybils_need_an_attack() -> None:
    with pytest.raises(ValueError, match="sybils: only an attacker"):
        PeerConfig(sybils=3)


async def test_dpsgd_peers_find_each_other_and_learn() -> None:
    network = InMemoryNetwork()
    # Rounds of at least 0.2 s leave time for peer exchange: the three told only of d0
    # find each other.
    settings: dict[str, Any] = dict(
        protocol="dpsgd", rounds=12, neighbours=3, local_steps=2, min_round_seconds=0.2
    )
    peers = [make_peer(network, "d0", 0, 4, **settings)]
    peers += [make_peer(network, f"d{i}", i, 4, bootstrap=("d0",), **settings) for i in (1, 2, 3)]
    accuracies: dict[str, list[float]] = {p.peer_id: [] for p in peers}
    merged: list[int] = []
    for peer in peers:
        record = accuracies[peer.peer_id].append
        peer.on("round", lambda info, record=record: record(info["accuracy"]))
        peer.on("merged", lambda info: merged.append(info["models"]))
    async with asyncio.timeout(90), contextlib.AsyncExitStack() as stack:
        for peer in peers:
            await stack.enter_async_context(peer)
        await asyncio.gather(*(peer.finished() for peer in peers))
        for peer in peers:  # before they say goodbye
            assert isinstance(peer.core, DPSGDCore)
            # at most 3 neighbours, each weighted 1/(1 + 3), whoever they are
            assert set(peer.core.weights.values()) <= {0.25}
            assert sorted(peer.core.weights) == sorted(peer.status().neighbours)
        assert all(len(peer.status().neighbours) == 3 for peer in peers)
    assert merged.count(3) >= 4  # merges with all three neighbours
    for history in accuracies.values():
        assert len(history) == 12
        assert history[-1] > history[0] and history[-1] > 0.8, history


def test_dpsgd_peer_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="'fedavg' is simulated only"):
        PeerConfig(protocol="fedavg")
    with pytest.raises(ValueError, match="gossip only, not 'dpsgd'"):
        PeerConfig(protocol="dpsgd", attack="sign-flip")
    with pytest.raises(ValueError, match="sybilwall"):
        PeerConfig(protocol="dpsgd", aggregator="sybilwall")


def test_a_peer_we_cannot_send_to_does_not_flap_with_every_message_it_sends() -> None:
    from gossiplearn.peer.reachability import Reachability

    reach = Reachability(first=1.0)
    reach.failed("one-way", 10.0)
    assert reach.heard_from("one-way", 10.2) is None  # a send to it failed just now
    assert reach.unreachable("one-way")
    assert reach.heard_from("one-way", 11.1) == pytest.approx(1.1)  # later: it is back
    assert not reach.unreachable("one-way")


async def test_an_embedded_peer_trains_with_the_applications_own_loss() -> None:
    calls: list[int] = []

    def smoothed(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls.append(len(targets))
        return torch.nn.functional.cross_entropy(outputs, targets, label_smoothing=0.1)

    network = InMemoryNetwork()
    rows = torch.arange(0, 400)
    peer = Peer(
        build_model("logreg", DATA.input_shape, DATA.num_classes, seed=1),
        (torch.from_numpy(DATA.train_x)[rows], torch.from_numpy(DATA.train_y)[rows]),
        TEST,
        PeerConfig(rounds=5, min_neighbours=0),
        transport=network.transport("alone"),
        loss=smoothed,
    )
    async with asyncio.timeout(60), peer:
        await peer.finished()
    assert len(calls) == 5 * 13  # 13 batches of 32 per epoch, one epoch per round
    assert (peer.status().accuracy or 0) > 0.8


async def test_peers_learn_with_compressed_models() -> None:
    """topk:0.1+int8: each model after the first is a tenth of the entries, int8, relative
    to the reference both sides hold; the peers learn as uncompressed ones do."""
    network = InMemoryNetwork()
    settings: dict[str, Any] = dict(compression="topk:0.1+int8", rounds=20)
    a = make_peer(network, "a", 0, 3, **settings)
    b = make_peer(network, "b", 1, 3, bootstrap=("a",), **settings)
    c = make_peer(network, "c", 2, 3, bootstrap=("a",), **settings)
    plain = len(encode(ModelMessage(1, a.learner.params(), 100)))
    first: dict[str, float] = {}
    for peer in (a, b, c):
        peer.on("round", lambda info, me=peer.peer_id: first.setdefault(me, info["accuracy"]))
    async with asyncio.timeout(90), a, b, c:
        await asyncio.gather(*(peer.finished() for peer in (a, b, c)))
        statuses = [peer.status() for peer in (a, b, c)]
    for peer, status in zip((a, b, c), statuses, strict=True):
        assert status.accuracy is not None and status.accuracy > 0.8, status
        assert status.accuracy > first[peer.peer_id]
        assert len(peer.link.held) == 2  # it rebuilt models from both others
        assert peer.link.fulls <= 4  # one full model per receiver, a restart or two at most
        sent = peer.traffic["messages_out"]
        assert sent >= 20 and status.bytes_out / sent < plain / 3
