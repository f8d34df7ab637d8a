"""A late joiner whose only bootstrap peer is dead still finds the network.

Four hosts on one LAN segment (the lab switch floods multicast to every port). Peers on
hosts 0-2 run with ``--network labnet --mdns`` and bootstrap through host 0; host 0's peer
is then killed. A late joiner on host 3 is given only host 0's (dead) address, plus
``--mdns --network labnet``. The DHT needs a first live contact, so mDNS is the way in:
the running peers hear the joiner's mDNS announcement and dial it. (The joiner's own mDNS
query for running peers went unanswered in the lab: py-libp2p 0.8.1 hears a service when
it is announced, not one announced before it started; so every peer must run ``--mdns``.)

Run: ``PYTHONPATH=$PWD python -m pytest -s -m lab tests/lab/test_lab_late_joiner.py`` (root).
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from lab_net import Lab, lab_unavailable
from lab_peers import LabNode, wait_for

_REASON = lab_unavailable()
pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]

HOSTS = 4
FOUND = re.compile(r"found (\w+) via (\w+)")


def test_a_late_joiner_whose_bootstrap_peer_is_dead_finds_the_network(tmp_path: Path) -> None:
    with Lab(HOSTS) as lab:
        nodes = [LabNode(lab, host, tmp_path) for host in range(HOSTS)]
        common = ["--network", "labnet", "--mdns", "--rounds", "200", "--log-level", "info"]
        first = nodes[0].peer("--partition-index", f"0/{HOSTS}", *common).address()
        for host in (1, 2):
            nodes[host].peer("--partition-index", f"{host}/{HOSTS}", "--bootstrap", first, *common)
        ids = {host: nodes[host].peer_id for host in (1, 2)}

        def warm() -> bool:  # both live peers train with a neighbour
            return all(any(r["neighbours"] for r in nodes[h].rounds()) for h in (1, 2))

        wait_for(warm, 120, "the first peers to train together")
        process = nodes[0].process
        assert process is not None
        os.killpg(process.pid, signal.SIGKILL)  # its machine is gone
        process.wait(timeout=10)
        joiner = nodes[3].peer("--partition-index", f"3/{HOSTS}", "--bootstrap", first, *common)

        def joined() -> bool:
            return any(f"neighbour joined: {peer}" in joiner.log() for peer in ids.values())

        printed = wait_for(lambda: "listening on" in joiner.log(), 60, "the joiner to start")
        seconds = wait_for(joined, 90, "the late joiner to find a live peer") + printed
        time.sleep(4.0)  # a little longer: does it find the other one, and how
        log = joiner.log()
    joiner_id = nodes[3].peer_id
    heard = {h: FOUND.findall(nodes[h].log()) for h in (1, 2, 3)}
    print(f"late joiner had a live neighbour {seconds:.1f} s after it started "
          f"({printed:.1f} s of them to start python and listen)")  # fmt: skip
    print("found (peer, how) per host:", heard)
    print("neighbours the joiner got:", re.findall(r"neighbour joined: (\w+)", log))
    print("discovered by source:", {h: nodes[h].summary()["discovered"] for h in (1, 2, 3)})
    assert "bootstrap" in log and "unreachable" in log  # the dead bootstrap was tried
    assert (joiner_id, "mdns") in heard[1] + heard[2]  # the running peers heard it
