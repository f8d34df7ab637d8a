"""The lab switch's NAT rule on hand-built Ethernet frames (fast; no namespaces needed)."""

from __future__ import annotations

import socket
import struct

from lab_nat import ICMP, TCP, UDP, NatTable, Packet, parse

A, B, C = 0, 1, 2  # hosts A and B behind NAT (each its own), C public
IP = {A: "10.77.0.1", B: "10.77.0.2", C: "10.77.0.3"}
SYN, ACK = 0x02, 0x10


def frame(source: int, destination: int, protocol: int, sport: int, dport: int,
          flags: int = ACK, fragment: int = 0) -> bytes:  # fmt: skip
    """An Ethernet + IPv4 frame with a minimal TCP/UDP/ICMP-echo header."""
    if protocol == TCP:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, flags, 65535, 0, 0)
    elif protocol == UDP:
        l4 = struct.pack("!HHHH", sport, dport, 8, 0)
    else:  # ICMP echo request (sport 8) or reply (sport 0), identifier dport
        l4 = struct.pack("!BBHHH", sport, 0, 0, dport, 1)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, fragment, 64, protocol, 0,
        socket.inet_aton(IP[source]), socket.inet_aton(IP[destination]),
    )  # fmt: skip
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + l4


def table() -> NatTable:
    return NatTable([0, 1, None])


def test_a_public_host_takes_every_frame() -> None:
    nat = table()
    assert nat.admits(A, C, frame(A, C, TCP, 5000, 4001, SYN), 0.0)
    assert nat.admits(B, C, frame(B, C, UDP, 5353, 5353), 0.0)


def test_a_new_inbound_connection_to_a_natd_host_is_dropped_and_counted() -> None:
    nat = table()
    assert not nat.admits(C, A, frame(C, A, TCP, 40000, 4001, SYN), 0.0)
    assert not nat.admits(C, A, frame(C, A, UDP, 5353, 5353), 0.0)
    assert nat.dropped == {"syn 0": 1, "0": 2}


def test_replies_to_an_outbound_flow_come_back_but_only_from_its_endpoint() -> None:
    nat = table()
    nat.leaving(A, frame(A, C, TCP, 40000, 4001, SYN), 0.0)
    assert nat.admits(C, A, frame(C, A, TCP, 4001, 40000, SYN | ACK), 0.1)
    assert nat.admits(C, A, frame(C, A, TCP, 4001, 40000), 500.0)  # kept alive both ways
    assert not nat.admits(C, A, frame(C, A, TCP, 4002, 40000, SYN | ACK), 0.1)  # other port
    assert not nat.admits(B, A, frame(B, A, TCP, 4001, 40000, SYN | ACK), 0.1)  # other host


def test_hosts_of_one_group_reach_each_other_and_arp_always_passes() -> None:
    nat = NatTable([0, 0, None])
    assert nat.admits(A, B, frame(A, B, TCP, 40000, 4001, SYN), 0.0)
    arp = b"\xff" * 6 + b"\x04" * 6 + b"\x08\x06" + bytes(28)
    assert parse(arp) == "arp"
    assert NatTable([0, 1, None]).admits(A, B, arp, 0.0)


def test_a_simultaneous_open_between_two_natd_hosts_goes_through() -> None:
    """Both send a SYN from their listen port 4001 to the other's. A's arrives at B's NAT
    before B's SYN has left (dropped); B's SYN then finds A's mapping; A's SYN-ACK finds B's."""
    nat = table()
    nat.leaving(A, frame(A, B, TCP, 4001, 4001, SYN), 0.00)
    assert not nat.admits(A, B, frame(A, B, TCP, 4001, 4001, SYN), 0.05)
    nat.leaving(B, frame(B, A, TCP, 4001, 4001, SYN), 0.02)
    assert nat.admits(B, A, frame(B, A, TCP, 4001, 4001, SYN), 0.07)
    nat.leaving(A, frame(A, B, TCP, 4001, 4001, SYN | ACK), 0.08)
    assert nat.admits(A, B, frame(A, B, TCP, 4001, 4001, SYN | ACK), 0.13)


def test_dials_from_ephemeral_ports_do_not_meet() -> None:
    """Without binding to the listen port, each SYN goes to the other's listen port from
    a fresh port: neither matches the other's mapping (as behind a real NAT)."""
    nat = table()
    nat.leaving(A, frame(A, B, TCP, 40000, 4001, SYN), 0.0)
    nat.leaving(B, frame(B, A, TCP, 50000, 4001, SYN), 0.0)
    assert not nat.admits(A, B, frame(A, B, TCP, 40000, 4001, SYN), 0.05)
    assert not nat.admits(B, A, frame(B, A, TCP, 50000, 4001, SYN), 0.05)


def test_a_udp_mapping_expires_when_idle() -> None:
    nat = table()
    nat.leaving(A, frame(A, C, UDP, 6000, 53), 0.0)
    assert nat.admits(C, A, frame(C, A, UDP, 53, 6000), 29.0)
    assert not nat.admits(C, A, frame(C, A, UDP, 53, 6000), 60.0)


def test_ping_out_works_and_ping_in_does_not() -> None:
    nat = table()
    nat.leaving(A, frame(A, C, ICMP, 8, 77), 0.0)
    assert nat.admits(C, A, frame(C, A, ICMP, 0, 77), 0.1)
    assert not nat.admits(C, A, frame(C, A, ICMP, 8, 78), 0.1)


def test_parse_reads_ports_and_refuses_what_it_cannot_track() -> None:
    packet = parse(frame(A, C, TCP, 40000, 4001, SYN))
    assert isinstance(packet, Packet) and packet.syn
    assert packet.flow == (TCP, bytes([10, 77, 0, 1]), 40000, bytes([10, 77, 0, 3]), 4001)
    assert not packet_syn(frame(A, C, TCP, 40000, 4001, SYN | ACK))
    assert parse(frame(A, C, UDP, 1, 2, fragment=100)) is None  # a later fragment
    assert parse(frame(A, C, TCP, 1, 2)[:30]) is None  # truncated
    assert parse(b"\x00" * 12 + b"\x86\xdd" + bytes(40)) is None  # IPv6


def packet_syn(data: bytes) -> bool:
    packet = parse(data)
    return isinstance(packet, Packet) and packet.syn
