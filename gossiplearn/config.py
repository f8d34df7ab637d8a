"""The fully resolved configuration of a run, validated with pydantic.

A scenario file and the command line set the same fields; unknown keys, wrong types and
bad spec strings are rejected with a :class:`~gossiplearn.errors.ConfigError` that names
the field and what is allowed.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gossiplearn.aggregation import AGGREGATORS
from gossiplearn.aggregation.chain import (
    composed_rule,
    is_chain,
    parse_chain,
    variance_stage,
)
from gossiplearn.attacks import parse_attack
from gossiplearn.errors import ConfigError
from gossiplearn.learning.datasets import check_dataset_name
from gossiplearn.learning.models import check_model_name
from gossiplearn.learning.partition import parse_partition
from gossiplearn.protocols.bristle import BristleConfig, sent_tensors
from gossiplearn.protocols.compression import Compression, SpecError, parse_compression
from gossiplearn.protocols.dpsgd import DPSGD_GRAPHS
from gossiplearn.protocols.gossip import GossipConfig
from gossiplearn.protocols.modest import ModestConfig
from gossiplearn.protocols.sybilwall import SybilWallConfig
from gossiplearn.timeline import Step, TimelineEvent, resolve
from gossiplearn.topologies import build_topology, parse_topology
from gossiplearn.types import Params

PROTOCOLS = ("gossip", "dpsgd", "fedavg", "modest")
#: Aggregators that are a protocol core of their own rather than a merge rule (they gossip
#: extra messages), with the aggregator_params each takes. Simulator and gossip only.
CORE_AGGREGATORS: dict[str, tuple[str, ...]] = {
    "sybilwall": ("lam", "max_records"),
    "bristle": (
        "alpha",
        "candidates",
        "overlap",
        "max_models",
        "validation_per_class",
        "center",
        "bias",
        "extractor",
    ),
}


class NetworkConfig(BaseModel):
    """The simulated network and hardware (virtual seconds, bytes per second)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_min: float = Field(0.01, ge=0)
    latency_max: float = Field(0.1, ge=0)
    #: Probability that a message is lost on the way (its sender still pays for it).
    loss: float = Field(0.0, ge=0, lt=1)
    bandwidth_min: float = Field(2.5e6, gt=0)
    bandwidth_max: float = Field(2.5e7, gt=0)
    speed_spread: float = Field(0.2, ge=0, lt=1)
    seconds_per_sample: float = Field(1e-4, gt=0)


class LearningConfig(BaseModel):
    """What a peer does, shared by simulated runs (RunConfig) and real peers (PeerConfig)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    aggregator: str = "vc"
    #: Weight of the own model in a gossip merge (VC's β).
    beta: float = Field(0.5, ge=0, lt=1)
    vc_target: Literal["others", "conservative"] = "others"
    #: mean and vc: clip received models around the own one before averaging (self-centred
    #: clipping), so that one Byzantine neighbour cannot drag a peer arbitrarily far.
    clip: bool = True
    #: Extra options of the aggregation rule, e.g. {"byzantine": 2} for krum.
    aggregator_params: dict[str, int | float | str] = Field(default_factory=dict)
    push: Literal["all", "one"] = "all"
    buffer_size: int | None = Field(None, ge=1)
    wait_for_buffer: bool = True
    #: Seconds (virtual in the simulator) to wait for the merge buffer / D-PSGD neighbours.
    merge_timeout: float = Field(10.0, gt=0)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(32, ge=1)
    local_epochs: float = Field(1.0, gt=0)
    #: Fixed local steps per round; overrides local_epochs when set.
    local_steps: int | None = Field(None, ge=1)
    #: MoDeST: peers that train per round, aggregators per round, the fraction of the
    #: sample's models an aggregator waits for, seconds before a ping counts as lost, rounds
    #: of silence before a peer is no longer sampled, and seconds after its first model
    #: that an aggregator averages whatever arrived.
    sample_size: int = Field(10, ge=1)
    aggregators: int = Field(1, ge=1)
    success_fraction: float = Field(1.0, gt=0, le=1)
    ping_timeout: float = Field(5.0, gt=0)
    inactivity_threshold: int = Field(50, ge=1)
    aggregation_timeout: float = Field(10.0, gt=0)
    eval_every: int = Field(1, ge=1)
    #: Real peers: a round's training lasts at least this many seconds (a gossip period,
    #: bounding traffic); the simulator's rounds take their modelled compute time.
    min_round_seconds: float | None = Field(None, gt=0)
    max_message_mb: float = Field(64.0, gt=0)
    #: How models travel: none, or a chain such as topk:0.1+int8 (gossiplearn.protocols.
    #: compression), with error feedback against per-pair references.
    compression: str = "none"
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _protocol_alias(cls, values: Any) -> Any:
        """``protocol: sybilwall`` (or bristle) is the same run as ``aggregator: sybilwall``:
        a protocol of the gossip family that merges with its own rule."""
        if not isinstance(values, dict) or values.get("protocol") not in CORE_AGGREGATORS:
            return values
        name = values["protocol"]
        aggregator = values.get("aggregator", name)
        if aggregator == "vc":  # the default of plain gossip
            aggregator = name
        if aggregator != name and not str(aggregator).startswith(f"{name}+"):
            raise ValueError(
                f"protocol {name!r} merges with its own rule: drop aggregator "
                f"{values['aggregator']!r} (or set it to {name!r}, or a chain {name}+...)"
            )
        return values | {"protocol": "gossip", "aggregator": aggregator}

    @property
    def core_aggregator(self) -> str | None:
        """The protocol core this config's aggregator is (sybilwall, also for a chain that
        starts with it; bristle), or None for a merge rule of plain gossip."""
        name = self.aggregator
        if is_chain(name):
            return "sybilwall" if parse_chain(name).sybilwall else None
        return name if name in CORE_AGGREGATORS else None

    @property
    def core_protocol(self) -> str:
        """The name this config's cores are built under (gossiplearn.protocols.registry)."""
        return self.core_aggregator or str(getattr(self, "protocol", "gossip"))

    @field_validator("compression")
    @classmethod
    def _compression(cls, value: str) -> str:
        try:
            return str(parse_compression(value))
        except SpecError as error:
            raise ValueError(str(error)) from None

    @model_validator(mode="after")
    def _compression_fits(self) -> LearningConfig:
        if self.compression != "none" and self.core_aggregator == "sybilwall":
            raise ValueError(
                f"compression {self.compression!r}: sybilwall relays signed models, which must "
                "arrive exact; use compression none with sybilwall"
            )
        return self

    @property
    def compression_spec(self) -> Compression:
        return parse_compression(self.compression)

    @field_validator("aggregator")
    @classmethod
    def _aggregator(cls, value: str) -> str:
        if is_chain(value):
            parse_chain(value)
            return value
        known = {**AGGREGATORS, **CORE_AGGREGATORS}
        if value not in known:
            raise ValueError(
                f"unknown aggregator {value!r}: choose one of {', '.join(known)}, or a chain "
                "such as median+vc or sybilwall+trimmed-mean+vc"
            )
        return value

    @model_validator(mode="after")
    def _aggregator_params_fit(self) -> LearningConfig:
        if is_chain(self.aggregator):
            _check_chain_params(self.aggregator, self.aggregator_params)
            return self
        if self.aggregator in CORE_AGGREGATORS:
            _check_core_params(self.aggregator, self.aggregator_params)
            return self
        rule = AGGREGATORS[self.aggregator]
        try:
            inspect.signature(rule).bind({}, [], **self.aggregator_options())
        except TypeError:
            allowed = [
                name
                for name, p in inspect.signature(rule).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY
                and name not in ("beta", "target", "clip")
            ]
            raise ValueError(
                f"aggregator_params {sorted(self.aggregator_params)} do not fit "
                f"{self.aggregator!r}; it takes {allowed or 'no parameters'}"
            ) from None
        return self

    def aggregator_options(self) -> dict[str, Any]:
        """Keyword options for the aggregation rule: β (and the VC target) where they apply,
        plus ``aggregator_params`` (e.g. ``trim`` for trimmed-mean, ``byzantine`` for krum)."""
        options = dict(self.aggregator_params)
        if is_chain(self.aggregator):  # each part of the chain takes what it knows
            for key in CORE_AGGREGATORS["sybilwall"]:
                options.pop(key, None)
            return options | {"beta": self.beta, "clip": self.clip, "target": self.vc_target}
        if self.aggregator in ("mean", "vc"):
            options["beta"] = self.beta
            options["clip"] = self.clip
        if self.aggregator == "vc":
            options["target"] = self.vc_target
        return options

    def modest_config(self, rounds: int, local_steps: int, samples: int) -> ModestConfig:
        """The MoDeST core's settings for a peer that trains ``local_steps`` per round."""
        return ModestConfig(
            rounds=rounds,
            local_steps=local_steps,
            sample_size=self.sample_size,
            aggregators=self.aggregators,
            success_fraction=self.success_fraction,
            ping_timeout=self.ping_timeout,
            inactivity_threshold=self.inactivity_threshold,
            aggregation_timeout=self.aggregation_timeout,
            samples=samples,
        )

    def gossip_config(self, rounds: int, local_steps: int, samples: int) -> GossipConfig:
        """The gossip core's settings for a peer that trains ``local_steps`` per round."""
        return GossipConfig(
            rounds=rounds,
            local_steps=local_steps,
            push=self.push,
            buffer_size=self.buffer_size,
            wait_for_buffer=self.wait_for_buffer,
            merge_timeout=self.merge_timeout,
            samples=samples,
        )

    def sybilwall_config(self, rounds: int, local_steps: int, samples: int) -> SybilWallConfig:
        """The SybilWall core's settings (``lam`` and ``max_records`` from aggregator_params)."""
        options = self.aggregator_params
        chain = parse_chain(self.aggregator) if is_chain(self.aggregator) else None
        return SybilWallConfig(
            rounds=rounds,
            local_steps=local_steps,
            merge_timeout=self.merge_timeout,
            samples=samples,
            lam=float(options.get("lam", 0.8)),
            max_records=int(options.get("max_records", 64)),
            then=composed_rule(chain, self.aggregator_options()) if chain else None,
            restore=variance_stage(chain, self.aggregator_options()) if chain else None,
        )

    def bristle_config(self, rounds: int, local_steps: int, samples: int) -> BristleConfig:
        """The Bristle core's settings (its options from aggregator_params)."""
        options = self.aggregator_params
        return BristleConfig(
            rounds=rounds,
            local_steps=local_steps,
            merge_timeout=self.merge_timeout,
            samples=samples,
            alpha=float(options.get("alpha", 0.4)),
            candidates=int(options.get("candidates", 10)),
            overlap=int(options.get("overlap", 3)),
            max_models=int(options.get("max_models", 20)),
            center=bool(options.get("center", 1)),
            share_bias=options.get("bias", "local") == "shared",
        )

    def sent_params(self, params: Params) -> Params:
        """The tensors of ``params`` this run's peers send: for Bristle the head's weight
        (and bias with ``bias=shared``), for the other protocols everything."""
        if self.aggregator != "bristle":
            return params
        return sent_tensors(params, self.bristle_config(1, 1, 0))

    def validation_per_class(self) -> int:
        """Bristle: local samples of each class a peer judges heads on."""
        return int(self.aggregator_params.get("validation_per_class", 10))

    def steps_per_round(self, steps_per_epoch: int) -> int:
        if self.local_steps is not None:
            return self.local_steps
        return max(1, round(self.local_epochs * steps_per_epoch))


class RunConfig(LearningConfig):
    """Everything that decides a simulated run. Same config and seed, same result."""

    #: A label for the scenario (names its default output folder).
    name: str | None = Field(None, pattern=r"^[\w.-]+$", max_length=64)
    peers: int = Field(16, ge=2)
    rounds: int = Field(50, ge=1)
    topology: str = "regular:4"
    dataset: str = "digits"
    data_dir: str | None = None
    partition: str = "iid"
    model: str = "mlp"
    protocol: Literal["gossip", "dpsgd", "fedavg", "modest"] = "gossip"
    #: One initial model for all peers (always, for modest).
    shared_init: bool = False
    #: D-PSGD: mix with every neighbour of the topology each round ("neighbours"), or with
    #: one peer of the exponential graph, cycling through hops 1, 2, 4, ... ("one-peer-exp",
    #: the MoDeST paper's baseline; needs topology exponential).
    dpsgd_graph: str = "neighbours"
    #: FedAvg: fraction of the peers sampled each round.
    sample_fraction: float = Field(1.0, gt=0, le=1)
    #: Events during the run: churn, partitions, attack windows (gossiplearn.timeline).
    #: ``churn`` is accepted as the key's older name.
    timeline: list[TimelineEvent] = Field(
        default_factory=list, validation_alias=AliasChoices("timeline", "churn")
    )
    #: Stop after this many seconds (virtual in simulate) even before ``rounds``.
    duration: float | None = Field(None, gt=0)
    #: An attack spec (gossiplearn.attacks) run by ``attackers`` peers: a count, or a
    #: fraction below 1; each attacker controls ``sybils`` identities in all.
    attack: str | None = None
    attackers: float = Field(0, ge=0)
    #: The attacking peers by id, instead of a random choice of ``attackers`` of them.
    attacker_ids: list[int] | None = None
    sybils: int = Field(1, ge=1)
    #: Backdoor: the share of an attacker's samples that get the trigger.
    backdoor_fraction: float = Field(0.5, gt=0, le=1)
    #: Evaluate on the first N test samples (a fixed, seeded subset); None: all of them.
    eval_samples: int | None = Field(None, ge=1)
    threads: int = Field(1, ge=1)
    #: How the simulator trains peers: one after another, or all pending jobs together
    #: (equal models within float rounding; see gossiplearn.learning.batched); ``auto``:
    #: batched where the model and protocol allow it, sequential elsewhere.
    engine: Literal["auto", "sequential", "batched"] = "auto"
    #: The torch device of the batched engine's tensors (cpu, cuda, cuda:1, mps ...).
    device: str = "cpu"
    network: NetworkConfig = NetworkConfig()

    @model_validator(mode="before")
    @classmethod
    def _attack_from_timeline(cls, values: Any) -> Any:
        """An ``attack-start`` event that says the attack sets the run's attack settings
        (and is kept as a plain start), so that a resolved config validates again."""
        if not isinstance(values, dict):
            return values
        key = "timeline" if "timeline" in values else "churn"
        events = values.get(key)
        if not isinstance(events, list):
            return values
        starts = [
            e for e in events
            if isinstance(e, dict) and e.get("kind") == "attack-start"
            and any(e.get(k) is not None for k in ("attack", "amount", "peers", "sybils"))
        ]  # fmt: skip
        if not starts:
            return values
        if len(starts) > 1 or values.get("attack") is not None:
            raise ValueError(
                "the attack is said twice: give attack/attackers/sybils once, either at the "
                "top level or in one attack-start event"
            )
        start = starts[0]
        lifted = {
            "attack": start.get("attack"),
            "attackers": start.get("amount", len(start.get("peers") or [])),
            "attacker_ids": start.get("peers"),
            "sybils": start.get("sybils", 1),
        }
        plain = {k: v for k, v in start.items() if k not in ("attack", "amount", "peers", "sybils")}
        events = [plain if e is start else e for e in events]
        return (
            {k: v for k, v in values.items() if k not in ("timeline", "churn")}
            | lifted
            | {"timeline": events}
        )

    @model_validator(mode="before")
    @classmethod
    def _modest_shares_init(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("protocol") == "modest":
            if values.get("shared_init") is False:
                raise ValueError(
                    "modest always starts from one shared initial model: drop shared_init"
                )
            values = {**values, "shared_init": True}
        return values

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        self._check_sizes()  # first: the checks below build things as large as the run
        if self.aggregators > self.sample_size:
            raise ValueError(
                f"aggregators ({self.aggregators}) cannot exceed sample_size ({self.sample_size})"
            )
        if self.core_aggregator is not None:
            if self.protocol != "gossip":
                raise ValueError(
                    f"aggregator {self.aggregator!r} runs with protocol gossip, "
                    f"not {self.protocol!r}"
                )
            if self.push != "all" or self.buffer_size is not None:
                raise ValueError(
                    f"aggregator {self.aggregator!r} pushes to all neighbours and waits for "
                    "one model from each: drop push and buffer_size"
                )
        if self.compression != "none" and self.sybils > 1:
            raise ValueError(
                f"compression {self.compression!r}: Sybil identities (sybils > 1) send over "
                "one attacker's references, which is not supported; use compression none"
            )
        if self.dpsgd_graph == "one-peer-exp":
            if self.protocol != "dpsgd":
                raise ValueError(
                    f"dpsgd_graph one-peer-exp is a D-PSGD option: set protocol dpsgd, "
                    f"not {self.protocol!r}"
                )
            if self.topology != "exponential":
                raise ValueError(
                    "dpsgd_graph one-peer-exp sends over the exponential graph's edges: set "
                    f"topology exponential, not {self.topology!r}"
                )
        self._check_attack()
        self._check_timeline()
        try:
            build_topology(self.topology, self.peers, topology_seed(self.seed))
        except ConfigError as error:
            raise ValueError(f"topology: {error}") from None
        return self

    def _check_sizes(self) -> None:
        total = self.peers + self.joining_peers()
        rows = TRAIN_ROWS.get(self.dataset)
        if rows is not None and total > rows:
            raise ValueError(
                f"peers: {total} peers need a training sample each, and {self.dataset} has "
                f"{rows}: use at most {rows} peers (joining ones included)"
            )
        if total > MAX_PEERS:
            raise ValueError(f"peers: {total} peers is more than the {MAX_PEERS} allowed")

    def _check_timeline(self) -> None:
        kinds = {e.kind for e in self.timeline}
        if kinds & {"join", "recover"} and self.protocol in ("dpsgd", "fedavg"):
            raise ValueError(
                f"timeline: peers cannot join or recover in a {self.protocol} run (gossip, modest)"
            )
        if kinds & {"attack-start", "attack-stop"} and self.attack is None:
            raise ValueError("timeline: attack-start/attack-stop need an attack: set attack")
        self.resolved_timeline()

    def resolved_timeline(self) -> list[Step]:
        """The timeline with the peers each event concerns decided from the seed."""
        return resolve(list(self.timeline), self.peers, timeline_rng(self.seed))

    def _check_attack(self) -> None:
        if self.attack is None:
            if self.attackers or self.sybils > 1:
                raise ValueError("attackers/sybils need an attack: set --attack")
            return
        parse_attack(self.attack)
        if self.protocol != "gossip":
            raise ValueError(f"attacks run with protocol gossip, not {self.protocol!r}")
        count = self.attacker_count()
        if not 1 <= count < self.peers:
            raise ValueError(
                f"attackers must give between 1 and {self.peers - 1} peers, got {count}"
            )
        outside = sorted(set(self.attacker_ids or []) - set(range(self.peers)))
        if outside:
            raise ValueError(f"attacker_ids {outside} are not initial peers (0..{self.peers - 1})")

    def attacker_count(self) -> int:
        """How many of the peers attack."""
        if self.attacker_ids:
            return len(self.attacker_ids)
        a = self.attackers
        return round(a * self.peers) if a < 1 else int(a)

    def joining_peers(self) -> int:
        """Peers that join during the run, in total."""
        return sum(e.count(self.peers) for e in self.timeline if e.kind == "join")

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, value: Any) -> Any:
        names = dict.fromkeys(["gossip", "dpsgd", "modest", *CORE_AGGREGATORS, "fedavg"])
        return _one_of("protocol", value, names) if isinstance(value, str) else value

    @field_validator("dpsgd_graph", mode="before")
    @classmethod
    def _dpsgd_graph(cls, value: Any) -> Any:
        known = dict.fromkeys(DPSGD_GRAPHS)
        return _one_of("dpsgd_graph", value, known) if isinstance(value, str) else value

    @field_validator("topology")
    @classmethod
    def _topology(cls, value: str) -> str:
        parse_topology(value)
        return value

    @field_validator("partition")
    @classmethod
    def _partition(cls, value: str) -> str:
        parse_partition(value)
        return value

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        return check_dataset_name(value)

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return check_model_name(value)


#: Training rows of each known dataset: every peer needs at least one, so a run has at most
#: this many peers. Checked before anything is sized by the number of peers.
TRAIN_ROWS = {
    "digits": 1438,
    "fashion-mnist": 60_000,
    "mnist": 60_000,
    "mnist-5k": 4_000,
    "shakespeare": 123_400,
}
#: No run has more peers than this, whatever the dataset: a topology alone would outgrow
#: memory long before a run of them could finish.
MAX_PEERS = 100_000


def topology_seed(seed: int) -> int:
    """The seed the run's topology is built with (stream 0 of the run's seed)."""
    return int(np.random.SeedSequence(seed).spawn(1)[0].generate_state(1)[0])


def timeline_rng(seed: int) -> np.random.Generator:
    """The generator that resolves a timeline (the run's churn stream, see
    gossiplearn.scenarios.run): the same in every driver."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(8)[7])


def _check_core_params(name: str, params: dict[str, int | float | str]) -> None:
    allowed = CORE_AGGREGATORS[name]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"aggregator_params {unknown} do not fit {name!r}; it takes {allowed}")
    if name == "bristle":
        _check_bristle_params(params)
        return
    lam = params.get("lam", 1.0)
    if isinstance(lam, str) or not 0 < lam < float("inf"):
        raise ValueError(f"{name}: lam must be a number > 0, got {lam!r}")
    records = params.get("max_records", 0)
    if isinstance(records, str) or records != int(records) or records < 0:
        raise ValueError(f"{name}: max_records must be a whole number >= 0, got {records!r}")


def _check_chain_params(name: str, params: dict[str, int | float | str]) -> None:
    """A chain takes its rule's parameters (and sybilwall's, when it starts with it)."""
    chain = parse_chain(name)
    allowed = set(CORE_AGGREGATORS["sybilwall"]) if chain.sybilwall else set()
    if chain.rule is not None:
        rule = inspect.signature(AGGREGATORS[chain.rule]).parameters
        allowed |= {k for k, p in rule.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    allowed -= {"beta", "target", "clip"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(
            f"aggregator_params {unknown} do not fit {name!r}; it takes "
            f"{sorted(allowed) or 'no parameters'}"
        )
    if chain.sybilwall:
        own = CORE_AGGREGATORS["sybilwall"]
        _check_core_params("sybilwall", {k: v for k, v in params.items() if k in own})


def _check_bristle_params(params: dict[str, int | float | str]) -> None:
    alpha = params.get("alpha", 0.4)
    if isinstance(alpha, str) or not 0 <= alpha <= 1:
        raise ValueError(f"bristle: alpha must be a number in [0, 1], got {alpha!r}")
    lowest = {"candidates": 1, "overlap": 0, "max_models": 1, "validation_per_class": 1}
    for key, low in lowest.items():
        value = params.get(key, low)
        if isinstance(value, str) or value != int(value) or value < low:
            raise ValueError(f"bristle: {key} must be a whole number >= {low}, got {value!r}")
    if params.get("center", 1) not in (0, 1):
        raise ValueError(f"bristle: center must be 0 or 1, got {params['center']!r}")
    if params.get("bias", "local") not in ("local", "shared"):
        raise ValueError(
            f"bristle: bias must be local (kept by each peer, as the paper's reference code) "
            f"or shared (sent and merged with the weights), got {params['bias']!r}"
        )
    if not isinstance(params.get("extractor", ""), str):
        raise ValueError(
            f"bristle: extractor must be the path of a file from gossiplearn pretrain, "
            f"got {params['extractor']!r}"
        )


def _one_of(what: str, value: str, known: dict[str, Any]) -> str:
    if value not in known:
        raise ValueError(f"unknown {what} {value!r}: choose one of {', '.join(known)}")
    return value


Settings = TypeVar("Settings", bound=BaseModel)


def validated(cls: type[Settings], source: str, values: dict[str, Any]) -> Settings:
    """Validate ``values`` into ``cls``, or raise ConfigError naming each bad field."""
    try:
        return cls(**values)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            field = "".join(
                f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"]
            ).lstrip(".")
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                message = "unknown setting (check the spelling)"
            # errors of the whole config name their key themselves
            problems.append(f"  {field}: {message}" if field else f"  {message}")
        raise ConfigError(f"invalid {source}:\n" + "\n".join(problems)) from None


def make_config(source: str = "configuration", **values: Any) -> RunConfig:
    """Validate ``values`` into a RunConfig, or raise ConfigError naming each bad field."""
    return validated(RunConfig, source, values)
