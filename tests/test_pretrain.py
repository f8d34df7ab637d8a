"""`gossiplearn pretrain`: the extractor file, its safe loading, and the held-out rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gossiplearn.cli import main
from gossiplearn.config import make_config
from gossiplearn.errors import ConfigError
from gossiplearn.learning.datasets import load_dataset
from gossiplearn.learning.models import HEAD_BIAS, HEAD_WEIGHT
from gossiplearn.learning.pretrain import (
    check_fits,
    holdout_rows,
    load_extractor,
    transfer_setup,
)
from gossiplearn.scenarios.run import simulate


@pytest.fixture(scope="module")
def extractor_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("extractors") / "digits.pt"
    argv = ["pretrain", "--dataset", "digits", "--model", "mlp", "--seed", "4"]
    assert main([*argv, "--holdout", "0.2", "--epochs", "2", "--out", str(out)]) == 0
    return out


def test_pretrain_writes_a_file_that_loads_with_weights_only(extractor_file: Path) -> None:
    blob = torch.load(extractor_file, weights_only=True)
    assert blob["format"] == "gossiplearn-extractor"
    assert blob["dataset"] == "digits" and blob["model"] == "mlp"
    assert all(isinstance(t, torch.Tensor) for t in blob["state_dict"].values())
    extractor = load_extractor(extractor_file)
    assert 0.5 < extractor.test_accuracy <= 1.0  # it learnt something from its rows
    data = load_dataset("digits", seed=4)
    np.testing.assert_array_equal(extractor.holdout, holdout_rows(data.train_y, 0.2, 4))
    for c in range(10):  # 20% of every class
        held = np.sum(data.train_y[extractor.holdout] == c)
        assert held / np.sum(data.train_y == c) == pytest.approx(0.2, abs=0.02)


def test_held_out_rows_are_disjoint_from_the_peers_data(extractor_file: Path) -> None:
    extractor = load_extractor(extractor_file)
    data = load_dataset("digits", seed=4)
    peer_data = transfer_setup(extractor, data).peer_data
    assert len(peer_data.train_y) == len(data.train_y) - len(extractor.holdout)
    # Every training row is either held out or the peers', never both: match rows by content
    # and position (digits has duplicate images, so compare the kept positions).
    keep = np.setdiff1d(np.arange(len(data.train_y)), extractor.holdout)
    np.testing.assert_array_equal(peer_data.train_x, data.train_x[keep])
    np.testing.assert_array_equal(peer_data.test_x, data.test_x)

    config = make_config(
        aggregator="bristle",
        aggregator_params={"extractor": str(extractor_file)},
        dataset="digits",
        peers=6,
        rounds=2,
        seed=4,
    )
    summary = simulate(config).summary
    assert summary["train_samples"] == len(keep)


def test_the_model_exchanges_only_the_head(extractor_file: Path) -> None:
    transfer = transfer_setup(load_extractor(extractor_file), load_dataset("digits", seed=4))
    model = transfer.model()
    assert set(model.state_dict()) == {HEAD_WEIGHT, HEAD_BIAS}
    assert all(float(t.abs().sum()) == 0 for t in model.state_dict().values())  # starts at 0
    images = torch.from_numpy(transfer.peer_data.test_x[:5])
    torch.testing.assert_close(model(images), model(transfer.features(images)))


def test_an_extractor_for_another_split_is_refused(extractor_file: Path) -> None:
    other_split = load_dataset("digits", seed=5)  # digits' split depends on the seed
    with pytest.raises(ConfigError, match="another training split"):
        check_fits(load_extractor(extractor_file), other_split, "mlp", "test")
    with pytest.raises(ConfigError, match="model"):
        check_fits(load_extractor(extractor_file), load_dataset("digits", seed=4), "cnn", "t")


class NotATensor:
    def __init__(self) -> None:
        self.payload = "anything"


def test_files_that_are_not_plain_tensors_are_refused(tmp_path: Path) -> None:
    pickled = tmp_path / "object.pt"
    torch.save({"format": "gossiplearn-extractor", "state_dict": NotATensor()}, pickled)
    with pytest.raises(ConfigError, match="cannot be read safely"):
        load_extractor(pickled)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ConfigError, match="not a gossiplearn extractor"):
        load_extractor(other)


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.pt"
    assert main(["pretrain", "--model", "resnet", "--out", str(out)]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["pretrain", "--holdout", "1.5", "--out", str(out)]) == 2
    assert "--holdout" in capsys.readouterr().err
    missing = ["simulate", "--aggregator", "bristle", "--rounds", "1", "--quiet"]
    code = main([*missing, "--aggregator-param", f"extractor={tmp_path}/none.pt"])
    assert code == 2
    assert "not found" in capsys.readouterr().err
    assert not out.exists()
