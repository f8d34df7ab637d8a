"""examples/custom_task (a user's own model file and data loader) on real peers: run by
`gossiplearn launch` and by two `gossiplearn peer` processes over libp2p on 127.0.0.1.
(The simulator runs it in tests/test_plugins.py.) Each test stops its processes itself."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gossiplearn.cli import main

pytestmark = [pytest.mark.network, pytest.mark.slow]

EXAMPLE = Path(__file__).parents[1] / "examples" / "custom_task"
TASK = [
    "--model",
    f"{EXAMPLE / 'model.py'}:tabular_net",
    "--dataset",
    f"{EXAMPLE / 'data.py'}:load",
]
ADDRESS = re.compile(r"listening on (/ip4/127\.0\.0\.1/tcp/\d+/p2p/\w+)")


def test_launch_runs_the_users_model_and_data(tmp_path: Path) -> None:
    args = ["launch", *TASK, "--peers", "4", "--topology", "ring", "--rounds", "8"]
    assert main([*args, "--timeout", "300", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["peers_finished"] == 4
    # measured: 0.96-0.97, as in the simulator
    assert summary["mean_accuracy"] >= 0.93, summary["mean_accuracy"]


def test_two_peer_processes_run_the_users_model_and_data(tmp_path: Path) -> None:
    common = [*TASK, "--rounds", "8", "--min-round-seconds", "0.5", "--linger", "0"]
    logs = [tmp_path / f"peer{i}.log" for i in range(2)]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        first = ["--listen", "/ip4/127.0.0.1/tcp/0", "--partition-index", "0/2"]
        processes.append(_peer([*first, *common, "--out", str(tmp_path / "p0")], logs[0]))
        address = _printed_address(logs[0])
        second = ["--bootstrap", address, "--partition-index", "1/2"]
        processes.append(_peer([*second, *common, "--out", str(tmp_path / "p1")], logs[1]))
        for process in processes:
            assert process.wait(timeout=240) == 0, [log.read_text() for log in logs]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for i in range(2):
        summary = json.loads((tmp_path / f"p{i}" / "summary.json").read_text())
        assert summary["finished"] and summary["round"] == 8
        assert summary["accuracy"] >= 0.9, summary
        merged = [json.loads(line) for line in (tmp_path / f"p{i}" / "metrics.jsonl").open()]
        assert max(line["neighbours"] for line in merged) == 1  # they found each other


def _peer(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gossiplearn", "peer", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _printed_address(log: Path) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = ADDRESS.findall(log.read_text())
        if found:
            return str(found[0])
        time.sleep(0.2)
    raise AssertionError(f"the first peer printed no address:\n{log.read_text()}")
