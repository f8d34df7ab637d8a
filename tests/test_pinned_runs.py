"""Pinned runs: small seeded simulations of every protocol whose results must not move.

A regression net for refactors of the protocol cores: each case runs ``simulate`` for a
fixed seed and compares its summary and metrics lines with a JSON fixture in
``tests/pinned/``. Integer fields must match exactly; floats within ``TOLERANCE``.

The models are ``logreg`` (bristle: its head, on a logreg pretrained as extractor): one linear
layer trained by SGD, whose float sums barely depend on the order a CPU's vector
instructions add them in, and accuracies are counts of test samples, which round-off of
that size does not flip. A deep model's weights drift apart with the instruction set
(AVX2 vs AVX-512 reduction orders) and would make the pins flaky across machines.

When a change of behaviour is intended, rewrite the fixtures and say why in the commit:
``GOSSIPLEARN_REGENERATE_PINS=1 pytest tests/test_pinned_runs.py``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from gossiplearn.config import make_config
from gossiplearn.scenarios.run import simulate

PINNED = Path(__file__).parent / "pinned"
REGENERATE = os.environ.get("GOSSIPLEARN_REGENERATE_PINS") == "1"
TOLERANCE = 1e-6

BASE: dict[str, Any] = dict(
    dataset="digits", model="logreg", peers=10, rounds=6, topology="regular:4", seed=11
)
CASES: dict[str, dict[str, Any]] = {
    "gossip-mean": dict(aggregator="mean"),
    "gossip-vc": dict(aggregator="vc"),
    "gossip-median": dict(aggregator="median"),
    "gossip-push-one": dict(aggregator="mean", push="one", wait_for_buffer=False),
    "dpsgd": dict(protocol="dpsgd", aggregator="mean"),
    "sybilwall": dict(aggregator="sybilwall"),
    "sybilwall-sybils": dict(
        aggregator="sybilwall", attack="label-flip:0:1", attackers=1, sybils=3
    ),
    "bristle": dict(aggregator="bristle", peers=8),
    "fedavg": dict(protocol="fedavg", aggregator="mean", peers=8),
}
#: Summary fields that vary from run to run or only echo the input.
SKIPPED = {"wall_seconds", "config"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bristle's pretrained extractor, cached once for the module."""
    return tmp_path_factory.mktemp("cache")


def pinned_result(case: str, cache: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    result = simulate(make_config(**(BASE | CASES[case])))
    summary = {k: v for k, v in result.summary.items() if k not in SKIPPED}
    # Through JSON, so that tuples, int keys and the like compare as the fixture holds them.
    loaded: dict[str, Any] = json.loads(
        json.dumps({"summary": summary, "metrics": result.metrics}, sort_keys=True)
    )
    return loaded


def assert_close(got: Any, want: Any, where: str) -> None:
    """Equal, except that floats may differ by ``TOLERANCE``; ints and strings exactly."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), where
        for key in want:
            assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool):
        assert isinstance(got, int | float) and math.isclose(got, want, abs_tol=TOLERANCE), (
            f"{where}: {got} != {want}"
        )
    else:
        assert type(got) is type(want) and got == want, f"{where}: {got!r} != {want!r}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_pinned_run(case: str, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = pinned_result(case, cache, monkeypatch)
    path = PINNED / f"{case}.json"
    if REGENERATE:
        PINNED.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert path.exists(), f"no fixture {path}: run with GOSSIPLEARN_REGENERATE_PINS=1"
    assert_close(got, json.loads(path.read_text()), case)
