"""Two peers behind NAT exchange models through a relay on a third, public host; DCUtR's
outcome (hole punched to a direct connection, or still relayed) is reported.

Hosts 0 and 1 each sit behind a NAT of their own (the lab switch's stateful rule: they dial
out, nothing dials in); host 2 runs ``gossiplearn relay``. The peers use the README's
behind-NAT command: ``--network NAME --relay R --bootstrap R``.

Run: ``PYTHONPATH=$PWD python -m pytest -s -m lab tests/lab/test_lab_nat_relay.py`` (root).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from lab_net import Lab, lab_unavailable
from lab_peers import PORT, LabNode, wait_for

_REASON = lab_unavailable()
pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]

ROUNDS = 10
DIAL = """
import socket
try:
    socket.create_connection(("{ip}", {port}), timeout=4)
    print("connected")
except TimeoutError:
    print("timed out")
except OSError as error:
    print("failed:", error)
"""


def test_two_peers_behind_nat_exchange_models_through_a_relay(tmp_path: Path) -> None:
    with Lab(3, nat=[0, 1]) as lab:
        started = time.monotonic()
        relay = LabNode(lab, 2, tmp_path, "relay")
        peers = [LabNode(lab, host, tmp_path) for host in (0, 1)]
        relay_address = relay.relay().address()
        for host, peer in enumerate(peers):
            peer.peer(
                "--network", "natlab", "--relay", relay_address, "--bootstrap", relay_address,
                "--partition-index", f"{host}/2", "--rounds", str(ROUNDS), "--linger", "5",
                "--log-level", "info",
            )  # fmt: skip
        ids = [p.peer_id for p in peers]  # once both printed their addresses
        listening = time.monotonic()

        def joined() -> bool:
            return all(f"neighbour joined: {ids[1 - i]}" in p.log() for i, p in enumerate(peers))

        wait_for(joined, 120, "the peers behind NAT to become neighbours")
        joined_after = time.monotonic() - started
        since_listening = time.monotonic() - listening
        # While B listens on its port, a plain direct dial from A gets no answer: the NAT
        # rule drops the SYN (and its retries).
        direct = lab.python(0, DIAL.format(ip=lab.address(1), port=PORT)).stdout.strip()
        for peer in peers:
            peer.wait(timeout=120)
        dropped = lab.nat_dropped()
    summaries = [p.summary() for p in peers]
    networks = [s["network"] for s in summaries]
    outcomes = [n["dcutr"].get(ids[1 - i]) for i, n in enumerate(networks)]
    relayed = [(n["relayed_bytes_in"], n["relayed_bytes_out"]) for n in networks]
    print(f"neighbours through the relay {joined_after:.1f} s after the relay started, "
          f"{since_listening:.1f} s after both peers listened")  # fmt: skip
    print("direct dial A -> B:", direct, "; frames dropped by the NAT rule:", dropped)
    print("DCUtR outcome (A's view, B's view):", outcomes)
    print("relayed bytes (in, out) per peer:", relayed, "; model bytes in:",
          [s["bytes_in"] for s in summaries])  # fmt: skip
    print("AutoNAT:", [n["reachability"] for n in networks], "; accuracy:",
          [s["accuracy"] for s in summaries])  # fmt: skip
    for peer in peers:
        failed = [line for line in peer.log().splitlines() if "cannot reach" in line]
        print(f"host {peer.host}: {len(failed)} failed dials logged", *failed[:2], sep="\n  ")
    assert direct == "timed out"
    assert dropped.get("syn 0", 0) + dropped.get("syn 1", 0) > 0
    for i, summary in enumerate(summaries):
        assert summary["finished"] and summary["round"] == ROUNDS
        assert summary["bytes_in"] > 0  # models came, and only B can have sent them to A
        assert max(r["neighbours"] for r in peers[i].rounds()) >= 1
    # models flowed over the relay: each peer took at least one model's bytes through it
    model_bytes = [s["bytes_out"] / max(1, s["messages_out"]) for s in summaries]
    assert relayed[0][0] >= model_bytes[1] and relayed[1][0] >= model_bytes[0], relayed
    assert set(outcomes) <= {"direct", "relayed"} and None not in outcomes, networks
    assert "public" not in [n["reachability"] for n in networks]  # AutoNAT is not fooled
