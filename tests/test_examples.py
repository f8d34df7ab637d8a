"""Every shipped example scenario validates, and a scaled-down version of it runs."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gossiplearn import make_config, simulate

SCENARIOS = sorted((Path(__file__).parents[1] / "examples" / "scenarios").glob("*.toml"))


def test_the_examples_are_there() -> None:
    names = {path.stem for path in SCENARIOS}
    assert {"quickstart", "vc-vs-mean", "modest-vs-dpsgd", "churn-80pct", "sybil-attack",
            "byzantine-noniid"} <= names  # fmt: skip


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda path: path.stem)
def test_example_validates_says_what_it_shows_and_runs_scaled_down(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("# "), "each example opens with a comment on what it shows"
    values = tomllib.loads(text)
    config = make_config(f"scenario {path}", **values)
    small = {"rounds": 2, "eval_samples": 300}
    if config.timeline:  # every round event at round 1
        small["timeline"] = [
            event.model_copy(update={"at_round": 1}) if event.at_round else event
            for event in config.timeline
        ]
    result = simulate(config.model_copy(update=small))
    assert result.summary["rounds"] == 2
    assert result.summary["mean_accuracy"] is not None
