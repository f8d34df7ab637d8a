"""The lab switch's NAT rule: stateful filtering of Ethernet frames, no I/O (pure logic).

A host "behind NAT" may open flows outward (TCP, UDP, ICMP echo); frames of those flows come
back; any other frame from outside its group (its LAN behind the same NAT) is dropped, as a
home router or a cloud's NAT gateway would. ARP always passes: it never leaves a LAN in
reality, and here the lab's one /24 stands for every LAN.

Connection tracking: each frame leaving a NAT'd host records its 5-tuple (protocol, source
address and port, destination address and port; the echo identifier stands for both ports
of ICMP echo) with the time; an inbound frame is admitted if its reversed 5-tuple was
recorded by the target within the protocol's idle timeout. Addresses are not translated
(each host keeps its 10.77.0.x address and its ports, as a port-preserving NAT), so this is
endpoint-dependent filtering: a flow opened to B:4001 lets only B:4001 answer. A TCP
simultaneous open (both sides send a SYN from their listen port, as DCUtR hole punching
does) works as through a real NAT: whichever SYN comes second finds the other side's
mapping. Outbound frames are recorded when they leave the host, inbound ones judged when
they arrive (after the link delay), as at two real NATs at either end of a path.

Not modelled: IP fragments after the first carry no ports and are dropped inbound; TCP
FIN/RST do not end a flow early (the idle timeout does).
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field

ETH_IPV4, ETH_ARP = 0x0800, 0x0806
TCP, UDP, ICMP = 6, 17, 1
#: Idle seconds after which a flow's mapping is gone (Linux conntrack: UDP 30 s, TCP much
#: longer once established; a lab test lasts minutes).
IDLE_TIMEOUT = {TCP: 600.0, UDP: 30.0, ICMP: 30.0}
_PURGE_AT = 4096

Flow = tuple[int, bytes, int, bytes, int]  # protocol, source ip, port, destination ip, port


@dataclass(frozen=True)
class Packet:
    """What the NAT rule needs of an IPv4 frame."""

    flow: Flow
    #: A TCP SYN without ACK: the first frame of a new connection.
    syn: bool = False


def parse(frame: bytes) -> Packet | str | None:
    """An IPv4 TCP/UDP/ICMP-echo frame's :class:`Packet`; ``"arp"`` for ARP; None for
    anything else (other protocols, later fragments, truncated frames)."""
    if len(frame) < 14:
        return None
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == ETH_ARP:
        return "arp"
    if ethertype != ETH_IPV4 or len(frame) < 34 or frame[14] >> 4 != 4:
        return None
    header = (frame[14] & 0x0F) * 4
    fragment = int.from_bytes(frame[20:22], "big") & 0x1FFF
    protocol, source, destination = frame[23], frame[26:30], frame[30:34]
    l4 = 14 + header
    if fragment:
        return None
    if protocol in (TCP, UDP) and len(frame) >= l4 + 4:
        sport, dport = struct.unpack_from("!HH", frame, l4)
        syn = protocol == TCP and len(frame) >= l4 + 14 and frame[l4 + 13] & 0x12 == 0x02
        return Packet((protocol, source, sport, destination, dport), syn)
    if protocol == ICMP and len(frame) >= l4 + 6 and frame[l4] in (0, 8):  # echo reply/request
        ident = int.from_bytes(frame[l4 + 4 : l4 + 6], "big")
        return Packet((ICMP, source, ident, destination, ident))
    return None


def reverse(flow: Flow) -> Flow:
    protocol, source, sport, destination, dport = flow
    return protocol, destination, dport, source, sport


@dataclass
class NatTable:
    """Which hosts are behind NAT (``group[host]``: None when public; hosts of one group
    share a LAN behind one NAT), and the flows each NAT'd host opened."""

    group: list[int | None]
    flows: dict[int, dict[Flow, float]] = field(default_factory=dict)
    #: Inbound frames dropped per target host; "syn" counts new TCP connections refused.
    dropped: Counter[str] = field(default_factory=Counter)

    def set_groups(self, group: list[int | None]) -> None:
        """New NAT groups; flows already open stay open (a mapping outlives a rule change
        only as long as its host stays behind NAT)."""
        self.group = group
        self.flows = {h: f for h, f in self.flows.items() if group[h] is not None}

    def leaving(self, host: int, frame: bytes, now: float) -> None:
        """A frame left ``host``: if the host is behind NAT, its flow is now open."""
        if self.group[host] is None:
            return
        packet = parse(frame)
        if isinstance(packet, Packet):
            flows = self.flows.setdefault(host, {})
            flows[packet.flow] = now
            if len(flows) > _PURGE_AT:
                self._purge(flows, now)

    def admits(self, source: int, target: int, frame: bytes, now: float) -> bool:
        """Whether ``target``'s NAT lets a frame from ``source`` in (``leaving`` must have
        been called for every earlier frame)."""
        group = self.group[target]
        if group is None or self.group[source] == group:
            return True
        packet = parse(frame)
        if packet == "arp":
            return True
        if isinstance(packet, Packet):
            key = reverse(packet.flow)
            flows = self.flows.get(target, {})
            opened = flows.get(key)
            if opened is not None and now - opened <= IDLE_TIMEOUT[key[0]]:
                flows[key] = now  # traffic both ways keeps the mapping alive
                return True
            if packet.syn:
                self.dropped[f"syn {target}"] += 1
        self.dropped[str(target)] += 1
        return False

    @staticmethod
    def _purge(flows: dict[Flow, float], now: float) -> None:
        for key, seen in list(flows.items()):
            if now - seen > IDLE_TIMEOUT[key[0]]:
                del flows[key]
