"""The lab's NAT rule with real kernels' TCP (no peers; ~10 s): hosts 0 and 1 are each
behind a NAT of their own, host 2 is public.

Run: ``PYTHONPATH=$PWD python -m pytest -m lab tests/lab/test_lab_nat_rule.py -v`` (root).
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from lab_net import Lab, lab_unavailable

_REASON = lab_unavailable()
pytestmark = [pytest.mark.lab, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

PORT = 4100
SERVE = """
import socket
s = socket.create_server(("0.0.0.0", {port}))
s.settimeout({wait})
try:
    c, _ = s.accept()
    c.sendall(b"hi")
    print("accepted")
except TimeoutError:
    print("nobody came")
"""
DIAL = """
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if {bind}:
    s.bind(("0.0.0.0", {port}))
s.settimeout(4)
time.sleep(max(0.0, {at} - time.time()))
try:
    s.connect(("{ip}", {port}))
    print("connected")
except TimeoutError:
    print("timed out")
except OSError as error:
    print("failed", error)
"""


def _serve(lab: Lab, host: int, wait: float = 6) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", lab.namespaces[host], sys.executable, "-c",
         SERVE.format(port=PORT, wait=wait)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def _dial(lab: Lab, host: int, to: int, *, bind: bool = False, at: float = 0.0) -> str:
    code = DIAL.format(ip=lab.address(to), port=PORT, bind=bind, at=at)
    return lab.python(host, code).stdout.strip()


def _wait(server: subprocess.Popen[str]) -> str:
    out, _ = server.communicate(timeout=20)
    return out.strip()


def test_natd_hosts_dial_out_take_no_new_inbound_connections_and_can_hole_punch() -> None:
    with Lab(3, nat=[0, 1], loss=0.0) as lab:
        server = _serve(lab, 2)
        time.sleep(1.0)
        assert _dial(lab, 0, 2) == "connected"  # out from behind NAT: replies come back
        assert _wait(server) == "accepted"

        for source in (2, 1):  # public host, and the other NAT'd host: dropped, no answer
            server = _serve(lab, 0, wait=5)
            time.sleep(1.0)
            assert _dial(lab, source, 0) == "timed out"
            assert _wait(server) == "nobody came"
        dropped = lab.nat_dropped()
        assert dropped.get("syn 0", 0) >= 2, dropped  # the SYNs and their retries

        # A TCP simultaneous open from each side's own port 4100, as hole punching does
        # (both start at the same moment; the second SYN finds the first one's mapping).
        at = time.time() + 2.0
        other = subprocess.Popen(
            ["ip", "netns", "exec", lab.namespaces[1], sys.executable, "-c",
             DIAL.format(ip=lab.address(0), port=PORT, bind=True, at=at)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        mine = _dial(lab, 0, 1, bind=True, at=at)
        assert (mine, _wait(other)) == ("connected", "connected")
        print("frames dropped by the NAT rule:", lab.nat_dropped())
