"""One hostile peer, a fresh libp2p identity with no special access, against a MoDeST network.

Four honest MoDeST peers on 127.0.0.1 run a few rounds undisturbed; then attackers (a
fresh identity per attack) connect and send, to every peer, well-formed messages that used
to wreck the network: (a) a trained model of round 2^62 (honest values), (b) an
aggregated model of round 2^62 full of 1e30,
(c) an aggregated model of the next round full of 1e30 (a round the peers would take),
(d) a model whose view lists 200 fresh peer ids (unsigned, last_active 10^6) and
non-peer-id strings, and (e) an unsigned JOIN advert. The peers must keep their round,
their accuracy and their pace, and all finish at ``ROUNDS``.

The scenario runs in a fresh process (``python tests/adversarial/test_modest_attacks.py
[far-trained,fake-members,...]`` prints its numbers as JSON, for all or some attacks), so
it can also be pointed at another checkout (PYTHONPATH) to compare.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.network, pytest.mark.slow]

PEERS = 4
ROUNDS = 30
#: The attack starts once the network reached this round.
ATTACK_AT = 10
FAKES = 200


def test_a_hostile_newcomer_cannot_hijack_stall_or_poison_modest() -> None:
    run = subprocess.run(
        [sys.executable, __file__], capture_output=True, text=True, timeout=150, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["finished"] == [True] * PEERS, result
    assert all(r == ROUNDS + 1 or r == ROUNDS for r in result["final_rounds"]), result
    # the pace holds: at least half the rounds per minute of the undisturbed phase
    assert result["rate_after"] >= result["rate_before"] / 2, result
    # and so does the accuracy (it only grows on digits; allow 3 points of noise)
    assert result["accuracy_after"] >= result["accuracy_before"] - 0.03, result
    assert result["max_round_seen"] <= ROUNDS + 1, result
    rejected = result["rejected"]
    assert rejected.get("RoundTooFar", 0) >= PEERS, rejected  # the far trained model
    assert rejected.get("ModelOutOfRange", 0) >= 2 * PEERS, rejected  # both 1e30 models
    assert rejected.get("NotMember", 0) >= PEERS, rejected  # the fake members' model
    assert rejected.get("BadSignature", 0) >= PEERS, rejected  # the unsigned JOIN advert
    assert result["view_sizes"] == [PEERS] * PEERS, result  # no fake got in


def free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def make_peers() -> list[Any]:
    from gossiplearn.learning.datasets import load_dataset
    from gossiplearn.learning.models import build_model
    from gossiplearn.learning.partition import partition
    from gossiplearn.peer import Peer, PeerConfig
    from gossiplearn.transport.libp2p import Libp2pTransport

    data = load_dataset("digits")
    shards = partition(data.train_y, "iid", PEERS, np.random.default_rng(0))
    x, y = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    test = (torch.from_numpy(data.test_x), torch.from_numpy(data.test_y))
    ports = free_ports(PEERS)
    transports = [Libp2pTransport(listen=f"/ip4/127.0.0.1/tcp/{port}") for port in ports]
    addresses = [
        f"/ip4/127.0.0.1/tcp/{p}/p2p/{t.peer_id}" for p, t in zip(ports, transports, strict=True)
    ]
    config = PeerConfig(
        protocol="modest",
        rounds=ROUNDS,
        sample_size=PEERS,
        ping_timeout=1.0,
        aggregation_timeout=3.0,
        local_steps=4,
        min_neighbours=PEERS - 1,
        exchange_interval=0.5,
    )
    peers = []
    for i, transport in enumerate(transports):
        shard = torch.from_numpy(shards[i])
        model = build_model("logreg", data.input_shape, data.num_classes, seed=0)
        bootstrap = [a for j, a in enumerate(addresses) if j != i]
        peers.append(
            Peer(model, (x[shard], y[shard]), test, config, transport=transport,
                 bootstrap=bootstrap)
        )  # fmt: skip
    return peers


ATTACKS = ("far-trained", "far-aggregated", "next-aggregated", "fake-members", "join")


def attack_messages(peers: list[Any], next_round: int, chosen: tuple[str, ...]) -> list[bytes]:
    """The hostile payloads in ``chosen`` (of ATTACKS), each well-formed."""
    from libp2p.crypto.ed25519 import create_new_key_pair

    from gossiplearn.protocols.codec import encode
    from gossiplearn.protocols.modest_messages import (
        Activity,
        Membership,
        MembershipAdvert,
        ModelKind,
        ModestModel,
    )
    from gossiplearn.transport.libp2p import peer_id_of

    params = peers[0].learner.params()  # an honest-looking model: only the view is hostile
    huge = {name: np.full_like(value, 1e30) for name, value in params.items()}
    far = 2**62
    fakes: dict[Any, Activity] = {
        peer_id_of(create_new_key_pair()): Activity(10**6) for _ in range(FAKES)
    }
    fakes |= {f"fake-1-{i:07d}": Activity(10**6) for i in range(100)}
    messages: dict[str, ModestModel | MembershipAdvert] = {
        "far-trained": ModestModel(ModelKind.TRAINED, far, params, 1, {}),
        "far-aggregated": ModestModel(ModelKind.AGGREGATED, far, huge, 0, {}),
        "next-aggregated": ModestModel(ModelKind.AGGREGATED, next_round, huge, 0, {}),
        "fake-members": ModestModel(ModelKind.TRAINED, next_round, params, 1, fakes),
        "join": MembershipAdvert(next_round, 1, Membership.JOIN),
    }
    return [encode(messages[name]) for name in chosen]


def network_round(peers: list[Any]) -> int:
    return max(peer.status().round for peer in peers)


def rounds_per_minute(reported: dict[int, float], first: int, last: int, since: float) -> float:
    """Rounds first..last reported (by their aggregators) per minute of wall time after
    ``since``; rounds never reported count for nothing."""
    times = [t for r, t in reported.items() if first <= r <= last and t >= since]
    return len(times) / (max(times) - since) * 60 if times else 0.0


async def scenario(chosen: tuple[str, ...] = ATTACKS) -> dict[str, Any]:
    from gossiplearn.transport.base import MODEL_PROTOCOL
    from gossiplearn.transport.libp2p import Libp2pTransport

    peers = make_peers()
    accuracy: dict[int, list[float]] = {}  # round -> accuracies reported
    reported: dict[int, float] = {}  # round -> when first reported

    def on_round(info: dict[str, Any]) -> None:
        reported.setdefault(info["round"], time.monotonic())
        accuracy.setdefault(info["round"], []).append(info.get("accuracy", 0.0))

    for peer in peers:
        peer.on("round", on_round)
    highest = 0
    async with contextlib.AsyncExitStack() as stack:
        for peer in peers:
            await stack.enter_async_context(peer)
        started = time.monotonic()
        while ATTACK_AT not in reported:
            await asyncio.sleep(0.05)
        attack_started = time.monotonic()
        rate_before = rounds_per_minute(reported, 2, ATTACK_AT, reported.get(1, started))
        accuracy_before = max(accuracy[ATTACK_AT - 1] + accuracy[ATTACK_AT])
        at = network_round(peers)
        for payload in attack_messages(peers, at + 1, chosen):
            # Each attack from a fresh identity, known to nobody: what one identity sends
            # again and again after rejections is quarantined before MoDeST sees it.
            attacker = Libp2pTransport()
            await attacker.start()
            stack.push_async_callback(attacker.stop)
            for peer in peers:
                with contextlib.suppress(Exception):
                    await attacker.connect(peer.transport.addresses[0])
                    await attacker.send(peer.peer_id, MODEL_PROTOCOL, payload)
        finished = asyncio.gather(*(peer.finished() for peer in peers))
        deadline = time.monotonic() + 90
        while not finished.done() and time.monotonic() < deadline:
            highest = max(highest, network_round(peers))
            await asyncio.sleep(0.05)
        ended = time.monotonic()
        finished.cancel()
        statuses = [peer.status() for peer in peers]
        after = [a for r in range(ROUNDS - 2, ROUNDS + 1) for a in accuracy.get(r, [])]
        rejected: dict[str, int] = {}
        for status in statuses:
            for reason, count in status.rejected.items():
                rejected[reason] = rejected.get(reason, 0) + count
        core_views = [len(getattr(peer.core, "view", {})) for peer in peers]
    return {
        "finished": [s.finished for s in statuses],
        "final_rounds": [s.round for s in statuses],
        "max_round_seen": highest,
        "rate_before": rate_before,
        "rate_after": rounds_per_minute(reported, at + 1, ROUNDS, attack_started),
        "accuracy_before": accuracy_before,
        "accuracy_after": max(after) if after else 0.0,
        "accuracies": {r: accuracy[r] for r in sorted(accuracy)},
        "rejected": rejected,
        "view_sizes": core_views,
        "seconds": ended - started,
    }


if __name__ == "__main__":  # the scenario, run in a fresh process by the test above
    torch.set_num_threads(1)
    chosen = tuple(sys.argv[1].split(",")) if len(sys.argv) > 1 else ATTACKS  # to measure one
    print(json.dumps(asyncio.run(scenario(chosen))))
