"""The command line: outputs per CLI.md and clear errors with exit code 2 for bad input."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gossiplearn.cli import main

FAST = ["--peers", "6", "--rounds", "3", "--topology", "ring", "--model", "logreg", "--quiet"]


def test_simulate_writes_summary_metrics_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["simulate", *FAST, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "mean_accuracy",
        "rounds",
        "bytes_sent",
        "messages_sent",
        "wall_seconds",
        "seed",
        "config",
    ):
        assert key in summary
    assert summary["config"]["topology"] == "ring"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2, 3]
    assert {"time", "mean_accuracy", "min_accuracy", "max_accuracy", "bytes_sent"} <= lines[
        0
    ].keys()
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "final mean accuracy" in printed and str(out) in printed

    (out / "accuracy.png").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "accuracy.png").exists()
    assert "mean_accuracy" in capsys.readouterr().out
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "<h1>" in page


def test_report_marks_churn_events(tmp_path: Path) -> None:
    out = tmp_path / "churn"
    args = ["simulate", *FAST, "--rounds", "4", "--crash", "2@2", "--out", str(out)]
    assert main(args) == 0
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "Accuracy (timeline events marked)" in page


def test_progress_lines_show_mean_min_max(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a for a in FAST if a != "--quiet"]
    assert main(["simulate", *args, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("acc mean") == 3 and "min" in printed and "max" in printed


def test_scenario_file_is_read_and_flags_override_it(tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text('peers = 5\nrounds = 2\ntopology = "complete"\nmodel = "logreg"\n')
    out = tmp_path / "run"
    assert main(["simulate", str(scenario), "--rounds", "1", "--quiet", "--out", str(out)]) == 0
    config = json.loads((out / "summary.json").read_text())["config"]
    assert (config["peers"], config["rounds"], config["topology"]) == (5, 1, "complete")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--topology", "regullar:4"], "regular:K"),
        (["--topology", "regular:x"], "topology"),
        (["--topology", "erdos-renyi:0.01", "--peers", "40"], "disconnected"),
        (["--dataset", "cifar"], "digits"),
        (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent/dir"], "--data-dir"),
        (["--partition", "dirichlet:-1"], "dirichlet:ALPHA"),
        (["--model", "resnet"], "mlp"),
        (["--model", "lenet5"], "28x28"),
        (["--aggregator", "nope"], "vc"),
        (["--peers", "1"], "peers"),
        (["--aggregator", "median", "--aggregator-param", "trim=2"], "takes no parameters"),
        (["--aggregator", "krum", "--aggregator-param", "f=2"], "byzantine"),
    ],
)
def test_bad_input_exits_2_with_a_message_naming_the_fix(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    base = ["--peers", "6", "--rounds", "1", "--quiet", "--out", str(tmp_path)]
    assert main(["simulate", *base, *args]) == 2
    assert expected in capsys.readouterr().err


def test_scenario_typo_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "typo.toml"
    scenario.write_text("peerz = 5\n")
    assert main(["simulate", str(scenario)]) == 2
    err = capsys.readouterr().err
    assert "peerz" in err and "unknown setting" in err and str(scenario) in err


def test_missing_scenario_and_bad_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", str(tmp_path / "absent.toml")]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("peers = = 3\n")
    assert main(["simulate", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_report_on_a_folder_without_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "summary.json" in capsys.readouterr().err


def test_unknown_flag_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--peerz", "3"])
    assert exit_info.value.code == 2


# ---- local faults end cleanly, in real processes ----------------------------------------

PEER = [sys.executable, "-m", "gossiplearn", "peer", "--model", "logreg", "--min-neighbours",
        "0", "--merge-timeout", "0.1"]  # fmt: skip


def run_cli(args: list[str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def test_peer_with_an_unwritable_state_dir_exits_1_saying_so(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    state = blocker / "state"  # cannot be created, even by root
    run = run_cli([*PEER, "--rounds", "3", "--state-dir", str(state)])
    assert run.returncode == 1, run.stderr
    assert f"cannot write checkpoints to {state}" in run.stderr
    assert "choose another state dir" in run.stderr


def test_peer_with_a_busy_metrics_port_exits_2_naming_the_flag() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = run_cli([*PEER, "--rounds", "2", "--metrics-port", str(port)])
    assert run.returncode == 2, run.stderr
    assert f"--metrics-port {port}" in run.stderr and "free port" in run.stderr
    assert "Traceback" not in run.stderr


def test_peer_ignores_a_checkpoint_with_an_absurd_round_and_runs(tmp_path: Path) -> None:
    from gossiplearn.learning.datasets import load_dataset
    from gossiplearn.learning.models import build_model
    from gossiplearn.learning.trainer import params_of
    from gossiplearn.peer.checkpoint import CHECKPOINT, load_checkpoint
    from gossiplearn.protocols.codec import encode
    from gossiplearn.protocols.messages import ModelMessage, spec_of

    data = load_dataset("digits")
    params = params_of(build_model("logreg", data.input_shape, data.num_classes, seed=0))
    (tmp_path / CHECKPOINT).write_bytes(encode(ModelMessage(2**64 - 1, params)))
    run = run_cli([*PEER, "--rounds", "2", "--state-dir", str(tmp_path)])
    assert run.returncode == 0, run.stderr
    assert "ignoring checkpoint" in run.stderr and "out of range" in run.stderr
    saved = load_checkpoint(tmp_path, spec_of(params))
    assert saved is not None and saved[0] == 2  # started afresh


def test_a_billion_peers_is_refused_before_anything_is_built(
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    assert main(["simulate", "--peers", "1000000000", "--quiet"]) == 2
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert "peers" in err and "at most 1438" in err


def test_ctrl_c_stops_simulate_with_exit_130(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "gossiplearn", "simulate", "--peers", "1400", "--rounds",
            "1000", "--model", "logreg", "--out", str(tmp_path)]  # fmt: skip
    process = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(4)  # importing, validating or simulating: Ctrl-C works in all of them
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "interrupted" in err


@pytest.mark.parametrize("command", ["launch", "peer"])
def test_fedavg_on_real_peers_exits_2_saying_it_is_simulated_only(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--protocol", "fedavg", "--out", str(tmp_path)]) == 2
    assert "'fedavg' is simulated only" in capsys.readouterr().err
    scenario = tmp_path / "fedavg.toml"
    scenario.write_text('protocol = "fedavg"\npeers = 5\ntopology = "ring"\n')
    role = ["--index", "0"] if command == "peer" else []
    file_args = ["--scenario", str(scenario)] if command == "peer" else [str(scenario)]
    assert main([command, *file_args, *role, "--out", str(tmp_path)]) == 2
    assert "'fedavg' is simulated only" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["simulate", "--protocol", "nope"], "choose one of gossip, dpsgd, modest, sybilwall"),
        (["peer", "--protocol", "nope"], "choose one of gossip, modest, dpsgd, sybilwall"),
        (["launch", "--protocol", "sybilwall", "--aggregator", "krum"], "drop aggregator"),
        (["peer", "--protocol", "dpsgd", "--attack", "sign-flip", "--sybils", "3"], "attack:"),
        (["peer", "--protocol", "sybilwall", "--sybils", "3"], "sybils: only an attacker"),
    ],
)
def test_a_protocol_that_cannot_be_used_so_exits_2_naming_the_flag(
    args: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize("command", ["simulate", "launch", "peer", "sweep"])
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("gzip", "unknown stage 'gzip'; expected none, or a chain"),
        ("topk:0", "the fraction in 'topk:0' must be in (0, 1]"),
        ("random:2", "the fraction in 'random:2' must be in (0, 1]"),
        ("int8+topk:0.1", "'topk:0.1' cannot come after 'int8'; the order is sparsifier"),
        ("zlib+int8", "'int8' cannot come after 'zlib'"),
    ],
)
def test_a_bad_compression_spec_exits_2_naming_it_and_what_is_allowed(
    command: str, spec: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    given = (
        ["--vary", f"compression=int8,{spec}"] if command == "sweep" else ["--compression", spec]
    )
    assert main([command, *given, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "compression" in err and repr(spec) in err and expected in err


@pytest.mark.parametrize(
    "args",
    [
        ["simulate", "--protocol", "sybilwall"],
        ["peer", "--aggregator", "sybilwall"],
        ["simulate", "--attack", "sign-flip", "--attackers", "1", "--sybils", "3"],
    ],
)
def test_compression_where_it_cannot_work_exits_2_naming_the_flag(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*args, "--compression", "int8", "--out", str(tmp_path)]) == 2
    assert "compression 'int8'" in capsys.readouterr().err


def test_simulate_counts_compressed_bytes(tmp_path: Path) -> None:
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    assert main(["simulate", *FAST, "--out", str(plain)]) == 0
    args = ["--compression", "topk:0.1+int8", "--engine", "batched"]
    assert main(["simulate", *FAST, *args, "--out", str(packed)]) == 0
    summary = json.loads((packed / "summary.json").read_text())
    assert summary["config"]["compression"] == "topk:0.1+int8"
    assert summary["config"]["engine"] == "sequential"  # batched falls back, saying so
    full = json.loads((plain / "summary.json").read_text())["bytes_sent"]
    assert summary["bytes_sent"] < full / 4


def test_simulate_runs_engine_auto_by_default_and_says_which_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", *FAST, "--out", str(tmp_path / "auto")]) == 0
    assert "engine: batched (asked for auto)" in capsys.readouterr().out
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert summary["config"]["engine"] == "batched" and summary["config"]["device"] == "cpu"
    args = ["--engine", "sequential", "--out", str(tmp_path / "seq")]
    assert main(["simulate", *FAST, *args]) == 0
    assert "engine: sequential" in capsys.readouterr().out


@pytest.mark.parametrize("device", ["nonsense", "cuda:99"])
def test_simulate_with_a_device_that_is_not_here_exits_2_naming_the_flag(
    device: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", *FAST, "--device", device, "--out", str(tmp_path)]) == 2
    assert f"device: {device!r}" in capsys.readouterr().err
