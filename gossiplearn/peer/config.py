"""Configuration of one real peer (times are wall-clock seconds)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from gossiplearn.attacks import parse_attack
from gossiplearn.config import CORE_AGGREGATORS, LearningConfig
from gossiplearn.errors import ConfigError

#: Protocols real peers run; the others (fedavg) are simulated only.
REAL_PROTOCOLS = ("gossip", "modest", "dpsgd")


def check_real_protocol(protocol: str) -> None:
    """ConfigError unless real peers can run ``protocol`` (launch, peer)."""
    if protocol not in REAL_PROTOCOLS:
        raise ConfigError(f"protocol {_not_real(protocol)}")


def _not_real(protocol: str) -> str:
    """Why real peers cannot run ``protocol`` (the caller names the setting)."""
    allowed = ", ".join([*REAL_PROTOCOLS, *CORE_AGGREGATORS])
    if protocol == "fedavg":
        return (
            "'fedavg' is simulated only (a centralised reference, no real peers): "
            f"run it with `gossiplearn simulate`; real peers run {allowed}"
        )
    return f"{protocol!r} is unknown to real peers: choose one of {allowed}"


class PeerConfig(LearningConfig):
    """How a real peer learns, gossips and keeps its neighbours."""

    #: gossip (the default); modest: decentralized sampling (every peer must bootstrap
    #: from the whole membership so that all derive the same samples); dpsgd: synchronous
    #: averaging with every neighbour, each weighted 1 / (1 + neighbours).
    protocol: Literal["gossip", "modest", "dpsgd"] = "gossip"
    #: Make this peer attack (to test your own network's defences); see gossiplearn.attacks.
    attack: str | None = None
    #: Identities an attacker holds, itself included: each sends the same poisoned model.
    sybils: int = Field(1, ge=1, le=1000)
    #: Rounds to run; None runs until stopped.
    rounds: int | None = Field(None, ge=1)
    #: Neighbours to keep: peer exchange dials known peers while fewer are live. With
    #: dpsgd it is the cap all peers share: each neighbour weighs 1 / (1 + neighbours).
    neighbours: int = Field(8, ge=1)
    #: Round 1 starts once this many neighbours are connected, or after start_timeout.
    min_neighbours: int = Field(1, ge=0)
    start_timeout: float = Field(10.0, ge=0)
    exchange_interval: float = Field(2.0, gt=0)
    send_timeout: float = Field(30.0, gt=0)
    #: Seconds to open a stream to a peer (dialling first if needed): one that does not
    #: answer within it is unreachable, skipped and probed with backoff, not waited for.
    open_timeout: float = Field(3.0, gt=0)
    #: Payload one neighbour may push per second, on average (bursts of two seconds'
    #: worth); more is refused before it is buffered.
    inbound_mb_per_second: float = Field(32.0, gt=0)

    @field_validator("protocol", mode="before")
    @classmethod
    def _real_protocol(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in REAL_PROTOCOLS:
            raise ValueError(_not_real(value))
        return value

    @model_validator(mode="after")
    def _attack_fits(self) -> PeerConfig:
        if self.core_aggregator is not None and self.protocol != "gossip":
            raise ValueError(
                f"aggregator {self.aggregator!r} is a protocol of its own; {self.protocol} "
                "merges with its own rule: drop the aggregator or run protocol gossip"
            )
        if self.attack is not None:
            parse_attack(self.attack)
            if self.protocol != "gossip":
                raise ValueError(
                    f"attack: a peer attacks with protocol gossip only, not {self.protocol!r}: "
                    "drop the attack or run protocol gossip"
                )
            if self.aggregator == "bristle":
                raise ValueError("attack: a bristle peer does not attack on real peers (simulate)")
        elif self.sybils > 1:
            raise ValueError("sybils: only an attacker holds Sybil identities; set attack")
        return self
