"""Peers with different model architectures find out when they connect: one log line naming
the first differing tensor, and no merge. The spec's decoder treats its input as hostile."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import msgpack
import pytest
import torch

from gossiplearn.errors import MalformedMessage
from gossiplearn.learning.datasets import load_dataset
from gossiplearn.learning.models import build_model
from gossiplearn.learning.trainer import params_of
from gossiplearn.peer import Peer, PeerConfig
from gossiplearn.protocols.messages import spec_of
from gossiplearn.protocols.model_spec import decode_spec, encode_spec, first_difference
from gossiplearn.transport.memory import InMemoryNetwork, memory_address

DATA = load_dataset("digits")


def _spec(model: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    return spec_of(params_of(build_model(model, DATA.input_shape, DATA.num_classes, seed=0)))


def test_a_spec_round_trips_and_differences_name_the_first_tensor() -> None:
    mlp, logreg = _spec("mlp"), _spec("logreg")
    assert decode_spec(encode_spec(mlp)) == mlp
    assert first_difference(mlp, decode_spec(encode_spec(mlp))) is None
    assert first_difference(mlp, logreg) == "tensor '1.weight' is [10, 64] there, [128, 64] here"
    narrower = dict(mlp) | {"5.weight": ("<f4", (10, 32))}
    assert first_difference(mlp, narrower) == "tensor '5.weight' is [10, 32] there, [10, 64] here"
    half = dict(mlp) | {"1.bias": ("<f2", (128,))}
    assert first_difference(mlp, half) == "tensor '1.bias' is <f2 there, <f4 here"
    assert first_difference(mlp, {**mlp, "extra": ("<f4", (1,))}) == (
        "it has a tensor 'extra' this model lacks"
    )
    assert first_difference(mlp, dict(reversed(list(mlp.items())))) == (
        "its tensors come in another order"
    )


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        msgpack.packb({"a": 1}),
        msgpack.packb([["w", "<f4"]]),
        msgpack.packb([["w", "|O", [1]]]),
        msgpack.packb([["w", "<f4", [-1]]]),
        msgpack.packb([["w", "<f4", [True]]]),
        msgpack.packb([["w", "<f4", [1]], ["w", "<f4", [1]]]),
        msgpack.packb([["w", "<f4", [1] * 65]]),
        msgpack.packb([[1, "<f4", [1]]]),
        b"\xdd\xff\xff\xff\xff",  # an array header claiming 4 billion entries
        b"\x91" * 100_000,  # deep nesting
        bytes(2 << 20),  # over the size limit
    ],
)
def test_hostile_specs_raise_malformed_message_only(payload: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_spec(payload)


def test_random_bytes_never_escape_as_another_error() -> None:
    rng = random.Random(0)
    good = encode_spec(_spec("mlp"))
    for _ in range(2000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(MalformedMessage):  # anything else fails the test
            decode_spec(bytes(data[: rng.randint(0, len(data))]))


def _peer(network: InMemoryNetwork, name: str, model: str, bootstrap: tuple[str, ...]) -> Peer:
    rows = torch.arange(0, 200)
    return Peer(
        build_model(model, DATA.input_shape, DATA.num_classes, seed=1),
        (torch.from_numpy(DATA.train_x)[rows], torch.from_numpy(DATA.train_y)[rows]),
        None,
        PeerConfig(rounds=6, merge_timeout=0.3, exchange_interval=0.2, min_neighbours=0),
        transport=network.transport(name),
        bootstrap=[memory_address(b) for b in bootstrap],
    )


async def test_peers_with_other_models_say_so_once_and_never_merge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    network = InMemoryNetwork()
    a = _peer(network, "a", "mlp", ())
    b = _peer(network, "b", "logreg", ("a",))
    c = _peer(network, "c", "mlp", ("a",))
    merged: dict[str, list[int]] = {"a": [], "b": []}
    a.on("merged", lambda info: merged["a"].append(info["models"]))
    b.on("merged", lambda info: merged["b"].append(info["models"]))
    joined_a: list[str] = []
    a.on("peer_joined", lambda info: joined_a.append(info["peer"]))
    with caplog.at_level(logging.WARNING, logger="gossiplearn"):
        async with asyncio.timeout(60), a, b, c:
            await asyncio.gather(a.finished(), b.finished(), c.finished())
    lines = [r.getMessage() for r in caplog.records if "runs another model" in r.getMessage()]
    print("\n".join(lines))
    # a and c each say it of b once, b of each of them once: one line per pair and side
    about = sorted(line.split()[0] for line in lines)
    assert about in (["a", "b", "b"], ["a", "b", "b", "c"], ["a", "b"]), lines
    assert len(lines) == len(set(lines)), lines
    assert all("tensor '1.weight' is [" in line for line in lines), lines
    assert "b" in a.architecture.incompatible and "a" in b.architecture.incompatible
    assert "b" not in joined_a and "c" in joined_a
    assert not any(merged["b"]), merged  # b never merged anyone's model
    assert max(merged["a"]) >= 1  # a merged c's


def test_a_flood_of_fresh_keys_cannot_grow_what_a_peer_remembers() -> None:
    from gossiplearn.peer.architecture import MAX_REMEMBERED, ArchitectureCheck

    check = ArchitectureCheck(_spec("mlp"))
    for i in range(MAX_REMEMBERED + 50):
        assert check.to_tell(f"k{i}")
        check.heard(f"k{i}", _spec("logreg"))
    assert len(check.incompatible) == MAX_REMEMBERED
    assert "k0" not in check.incompatible and check.refuses(f"k{MAX_REMEMBERED + 49}")


def test_a_peer_flipping_its_spec_back_and_forth_cannot_flood_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from gossiplearn.peer.architecture import ArchitectureCheck

    check = ArchitectureCheck(_spec("mlp"))
    with caplog.at_level(logging.DEBUG, logger="gossiplearn"):
        for _ in range(50):
            check.heard("flipper", _spec("logreg"))
            check.heard("flipper", _spec("mlp"))
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2  # one of each kind
    assert not check.refuses("flipper")  # it told a matching spec last
