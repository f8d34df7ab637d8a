"""Starting gossiplearn peers and relays on lab hosts, and reading what they print."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab_net import Lab

PORT = 4001
LISTEN = f"/ip4/0.0.0.0/tcp/{PORT}"


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> float:
    """Seconds until ``predicate()`` holds; AssertionError after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class LabNode:
    """A ``gossiplearn peer`` or ``relay`` on one lab host, with a key of its own."""

    def __init__(self, lab: Lab, host: int, work: Path, name: str | None = None) -> None:
        self.lab, self.host = lab, host
        self.home = work / (name or f"host{host}")
        self.home.mkdir()
        self.key = self.home / "node.key"
        self.process: subprocess.Popen[bytes] | None = None
        # keygens of several nodes run side by side; each node waits for its own
        self._keygen = lab.spawn(host, ["keygen", str(self.key)], self.home / "keygen.log")

    @property
    def log_path(self) -> Path:
        return self.home / "node.log"

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def relay(self, *extra: str) -> LabNode:
        self._keygen.wait(timeout=120)
        self.process = self.lab.spawn(
            self.host,
            ["relay", "--listen", LISTEN, "--identity", str(self.key), *extra],
            self.log_path,
        )
        return self

    def peer(self, *extra: str) -> LabNode:
        """The README's peer command (``--listen``, ``--identity``, ``--state-dir``,
        ``--out``) plus ``extra``; ``LAB_PEER_ARGS`` adds more (e.g. a log level)."""
        self._keygen.wait(timeout=120)
        self.process = self.lab.spawn(
            self.host,
            ["peer", "--listen", LISTEN, "--identity", str(self.key),
             "--state-dir", str(self.home / "state"), "--out", str(self.home / "results"),
             *extra, *os.environ.get("LAB_PEER_ARGS", "").split()],
            self.log_path,
        )  # fmt: skip
        return self

    def address(self, timeout: float = 120) -> str:
        """The ``/ip4/<lab address>/tcp/4001/p2p/<id>`` it printed."""
        pattern = re.compile(
            rf"listening on (/ip4/{re.escape(self.lab.address(self.host))}/tcp/{PORT}/p2p/\w+)"
        )
        wait_for(lambda: pattern.search(self.log()), timeout, f"host {self.host}'s address")
        found = pattern.search(self.log())
        assert found is not None
        return found.group(1)

    @property
    def peer_id(self) -> str:
        return self.address().rsplit("/", 1)[1]

    def summary(self) -> dict[str, Any]:
        return dict(json.loads((self.home / "results" / "summary.json").read_text()))

    def rounds(self) -> list[dict[str, Any]]:
        path = self.home / "results" / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)
