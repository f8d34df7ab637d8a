"""benchmarks/claims.py: its bookkeeping (targets, resume, section names), without runs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "claims.py"


@pytest.fixture(scope="module")
def claims() -> ModuleType:
    spec = importlib.util.spec_from_file_location("claims_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_with(accuracies: list[float]) -> dict[str, Any]:
    metrics = [
        {"round": i + 1, "mean_accuracy": a, "bytes_sent": 100 * (i + 1), "time": float(i)}
        for i, a in enumerate(accuracies)
    ]
    return {"name": "x", "metrics": metrics}


def test_rounds_to_target_and_best(claims: ModuleType) -> None:
    run = run_with([0.1, 0.5, 0.7, 0.65])
    assert claims.rounds_to(run, 0.6) == 3
    assert claims.rounds_to(run, 0.8) is None
    assert claims.best(run) == 0.7


def test_resume_reuses_a_run_with_the_same_name_and_settings(
    claims: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []

    def fake_simulate(config: Any) -> SimpleNamespace:
        calls.append(config)
        summary = {"mean_accuracy": 0.5, "bytes_sent": 10, "messages_sent": 1}
        metrics = [{"round": 1, "mean_accuracy": 0.5, "bytes_sent": 10, "time": 1.0}]
        return SimpleNamespace(summary=summary, metrics=metrics)

    monkeypatch.setattr(claims, "simulate", fake_simulate)
    monkeypatch.setattr(claims, "make_config", lambda **values: values)
    path = tmp_path / "claims.json"
    console = Console(quiet=True)
    settings = {"peers": 4, "rounds": 1}
    claims.Runner(path, False, console)("a", settings)
    claims.Runner(path, False, console)("b", settings)  # kept beside "a" in the file
    assert {r["name"] for r in json.loads(path.read_text())["runs"]} == {"a", "b"}
    runner = claims.Runner(path, True, console)
    runner("a", settings)
    assert len(calls) == 2  # "a" came from the file
    runner("a", settings | {"rounds": 2})  # other settings: run again
    assert len(calls) == 3


def test_unknown_section_is_a_usage_error(
    claims: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["claims.py", "--only", "vc,nope"])
    with pytest.raises(SystemExit) as info:
        claims.main()
    assert info.value.code == 2
    assert "nope" in capsys.readouterr().err


def test_sybilwall_verdicts_from_the_grid(claims: ModuleType, tmp_path: Path) -> None:
    """The SybilWall rows: a rule keeps an attack down when its success stays under the bar
    and does not grow with the Sybils; missing runs are "not run" cells."""
    runner = claims.Runner(tmp_path / "claims.json", False, Console(quiet=True), table_only=True)
    base, honest = claims.sybilwall_base(True)
    success = {"sybilwall": (0.08, 0.05), "mean": (0.04, 0.30)}
    for (rule, rates), label in [(r, a) for r in success.items() for a in claims.SYBIL_ATTACKS]:
        for sybils, rate in zip((1, 10), rates, strict=True):
            settings = claims.sybil_settings(
                base, honest, claims.SYBIL_ATTACKS[label], sybils, rule
            )
            runner.earlier.append(
                {
                    "name": f"sybilwall/{label}/x{sybils}/{rule}",
                    "settings": settings,
                    "final_accuracy": 0.5,
                    "attack_success_rate": rate,
                    "metrics": [],
                }
            )
    rows = claims.sybilwall_section(runner, True)
    assert [row["verdict"] for row in rows[:2]] == [
        "holds; the attack grows with the Sybils for mean"
    ] * 2
    assert rows[2]["verdict"] == "holds"
    assert "| sybilwall | 0.500 / 8.0% | 0.500 / 5.0% |" in claims.sybil_markdown()

    runner.earlier.clear()  # nothing on file: every cell is "not run"
    rows = claims.sybilwall_section(runner, True)
    assert {row["verdict"] for row in rows} == {"not run"}
    assert "| mean | not run | not run | not run | not run |" in claims.sybil_markdown()


# --------------------------------------------------------------------------- Bristle


def final(value: float, name: str = "x") -> dict[str, Any]:
    return {"name": name, "final_accuracy": value, "metrics": []}


def test_bristle_byzantine_verdict(claims: ModuleType) -> None:
    verdict = claims.byzantine_verdict
    assert verdict(0.97, {"flip x4": 0.96, "noise x4": 0.951}, None).startswith("holds")
    text = verdict(0.76, {"flip x4": 0.75, "noise x4": 0.70}, 0.83)
    assert text.startswith("does not hold as stated: worst 0.700 (noise x4), 0.060 below")
    assert "84% of the ceiling 0.830" in text
    assert verdict(0.76, {"flip x4": None}, 0.83) == "not run"
    assert verdict(None, {"flip x4": 0.7}, 0.83) == "not run"
    assert verdict(0.76, {}, 0.83) == "not run"


def test_bristle_ratio_verdict(claims: ModuleType) -> None:
    verdict = claims.ratio_verdict
    assert verdict({"a": 2.5, "b": 2.3}) == "holds (2.30x-2.50x)"
    assert verdict({"a": 1.2, "b": 1.5}).startswith("does not hold: Bristle is ahead in every")
    assert verdict({"a": 0.9, "b": 1.5}) == "does not hold: 0.90x-1.50x; ahead only in b"
    assert verdict({"a": 0.9}) == "does not hold: 0.90x, never ahead"
    assert verdict({"a": 2.5, "b": None}) == "not run"


def test_bristle_ratio_is_over_the_best_robust_baseline(claims: ModuleType) -> None:
    grid = {
        ("bristle", "noise", 4): final(0.8),
        ("median", "noise", 4): final(0.4),
        ("krum", "noise", 4): final(0.2),
        ("mean", "noise", 4): final(0.7),  # not a robust baseline: left out
    }
    assert claims.bristle_ratio(grid, "noise", 4) == pytest.approx(2.0)
    grid["krum", "noise", 4] = None
    assert claims.bristle_ratio(grid, "noise", 4) is None


def test_bristle_settings_give_the_baselines_the_same_head_and_features(
    claims: ModuleType,
) -> None:
    base, counts = claims.bristle_base(quick=False)
    assert base["partition"] == "window:4" and base["peers"] == 20
    assert all(n < base["peers"] / 2 + 1 for n in counts)
    own = claims.bristle_settings(base, "bristle", "label-flip-all", 4)
    assert (own["dataset"], own["model"], own["aggregator"]) == ("fashion-mnist", "mlp", "bristle")
    assert (own["attack"], own["attackers"]) == ("label-flip-all", 4)
    assert own["peers"] == 24 and own["attacker_ids"] == [20, 21, 22, 23]  # they join
    placed = claims.bristle_settings(base, "bristle", "label-flip-all", 4, added=False)
    assert placed["peers"] == 20 and "attacker_ids" not in placed  # 4 of the 20, at random
    krum = claims.bristle_settings(base, "krum", None, 0)
    assert krum["dataset"] == claims.FEATURES and krum["model"] == "logreg"
    assert krum["shared_init"] and krum["aggregator_params"] == {"byzantine": 1}
    assert "attack" not in krum
    assert claims.bristle_cells((4, 6))[0] == ("none", 0)
    assert len(claims.bristle_cells((4, 6))) == 1 + 2 * len(claims.BRISTLE_ATTACKS)


def test_vc_every_step_row_compares_each_variant_with_fedavg(claims: ModuleType) -> None:
    curves = {
        "fedavg": [0.1, 0.5, 0.9, 1.0],  # target 0.9 x 1.0: round 3
        "vc": [0.1, 0.1, 0.2, 0.5, 0.8, 0.95],  # round 6: 2x
        "vc, β = 0": [0.1, 0.2, 0.5, 0.8, 0.95],  # round 5
        "vc, one shared initial model": [0.1, 0.5, 0.95],  # round 3: 1x
    }
    asked: dict[str, dict[str, Any]] = {}

    def runner(name: str, settings: dict[str, Any]) -> dict[str, Any]:
        method = name.rsplit("/", 1)[1]
        asked[method] = settings
        return run_with(curves[method]) | {"name": name, "final_accuracy": curves[method][-1]}

    base = {"peers": 50, "dataset": "mnist-5k", "partition": "iid", "beta": 0.5}
    row = claims._vc_every_step_row(runner, False, base)
    assert row["verdict"] == "does not hold: 2.00x FedAvg's rounds"
    assert "β = 0: 5 rounds (1.67x)" in row["ours"]
    assert "one shared initial model: 3 rounds (1.00x)" in row["ours"]
    assert all(s["local_steps"] == 1 and s["rounds"] == 300 for s in asked.values())
    assert asked["vc, β = 0"]["beta"] == 0.0 and asked["vc"]["beta"] == 0.5
    assert asked["vc, one shared initial model"]["shared_init"] is True
