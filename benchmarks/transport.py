"""Transport throughput: libp2p (Noise + yamux) against a plain asyncio TCP stream, and
the time to move a 10 MB model between two real peers per compression spec.

Both carry the same frames (gossiplearn.transport.framing: header, BLAKE2b digest,
one-byte acknowledgement), from this process to a receiver process on 127.0.0.1, so the
two sides run on their own cores as real peers do. A send is timed from the call until
the receiver's acknowledgement (the frame arrived and its digest checked). Senders are
interleaved (libp2p, libp2p before tuning, tcp, ...) so load on a shared machine hits all
alike; "libp2p before" is the channel as it was before tuning (1 MiB writes that yamux
cuts into frames Noise splits in two, py-libp2p's window update after every read), kept
in the transport for this comparison. Also measured: the resident memory of one idle
libp2p transport process, and (full run) the time for one 10 MB model to reach 16 peers
forwarding along a binary tree.

Models: a float32 MLP of 10.05 MB goes from this peer to a receiver peer per spec (none,
float16, bfloat16, int8, topk:0.1+int8), end to end: compress and encode as a peer does,
send, decode and rebuild at the receiver, which reports back. Every spec is compared
with today's time, measured in the same run: spec none over the channel before tuning.
A sampling profile (both processes, every thread) says where the time of a 10 MB send
goes, before and after tuning.

    python benchmarks/transport.py            # 1/10/50 MB, 7 sends each, 16-peer tree
    python benchmarks/transport.py --quick    # 1/10 MB, 3 sends each, no tree (< 2 min)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
from _transport_models import (
    DONE,
    IDLE,
    LAYERS,
    MODEL,
    PROFILE,
    PROFILE_RESULT,
    SPECS,
    ModelReceiver,
    ModelSender,
    Sampler,
    drifted,
    dumps,
    model_params,
    receiver_spec,
)
from rich.console import Console
from rich.table import Table

from gossiplearn.transport.base import MODEL_PROTOCOL, TransportError
from gossiplearn.transport.framing import FrameReader, Status, encode_header

RESULTS = Path(__file__).parent / "results"
MB = 10**6
PROTOCOL = MODEL_PROTOCOL
Send = Callable[[bytes], Awaitable[None]]


# ---- receivers (run in child processes) ---------------------------------------------------


async def serve_tcp(digest: bool) -> None:
    """A plain asyncio TCP receiver: our framing (or, without ``digest``, a bare 8-byte
    length prefix read into a preallocated buffer), one ack byte per frame."""

    async def framed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = FrameReader(max_frame_bytes=2**30)
        while chunk := await reader.read(min(frames.wanted, 2**24)):
            for _payload in frames.feed(chunk):
                writer.write(bytes([Status.OK]))
                await writer.drain()

    async def bare(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                length = int.from_bytes(await reader.readexactly(8), "big")
            except asyncio.IncompleteReadError:
                return
            buffer = memoryview(bytearray(length))
            filled = 0
            while filled < length:
                chunk = await reader.read(min(length - filled, 2**24))
                if not chunk:
                    return
                buffer[filled : filled + len(chunk)] = chunk
                filled += len(chunk)
            writer.write(bytes([Status.OK]))
            await writer.drain()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await (framed if digest else bare)(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"READY tcp:{port}", flush=True)
    async with server:
        await server.serve_forever()


def libp2p_transport(tuned: bool = True) -> Any:
    """A transport for the benchmark; ``tuned`` False: the channel before tuning."""
    from gossiplearn.transport import libp2p

    transport = libp2p.Libp2pTransport(max_frame_bytes=2**30, send_timeout=300.0)
    if not tuned:
        transport._channel = libp2p._UNTUNED
    return transport


async def serve_models(tuned: bool) -> None:
    """A libp2p peer that decodes every model as a peer does, then reports to its sender
    (how long decoding took); it profiles itself between two PROFILE messages."""
    transport = libp2p_transport(tuned)
    receiver = ModelReceiver(receiver_spec())
    sampler: Sampler | None = None

    async def on_model(sender: str, payload: bytes) -> None:
        start = time.perf_counter()
        receiver.decode(sender, payload)
        decode_s = time.perf_counter() - start
        await transport.send(sender, DONE, dumps({"decode_s": decode_s}))

    async def on_profile(sender: str, payload: bytes) -> None:
        nonlocal sampler
        if payload == b"start":
            sampler = Sampler(transport.peer_id)
            sampler.start()
        elif sampler is not None:
            result = await asyncio.to_thread(sampler.stop)
            sampler = None
            await transport.send(sender, PROFILE_RESULT, dumps(result))

    transport.set_handler(MODEL, on_model)
    transport.set_handler(PROFILE, on_profile)
    await transport.start()
    print(f"READY {transport.addresses[0]}", flush=True)
    await asyncio.Event().wait()


async def serve_libp2p(forward_to: list[str], report_to: str | None, tuned: bool) -> None:
    """A libp2p receiver; with ``forward_to`` it relays every model to those peers and
    reports to ``report_to`` (the tree benchmark)."""
    transport = libp2p_transport(tuned)
    children: list[str] = []
    root: str | None = None

    async def on_model(sender: str, payload: bytes) -> None:
        sends = [transport.send(child, PROTOCOL, payload) for child in children]
        if root is not None:  # report the arrival while forwarding
            sends.append(transport.send(root, "/bench/done/1", transport.peer_id.encode()))
        # a forward still waiting for its acknowledgement when the run ends and the
        # processes are stopped fails; a forward that fails earlier shows as a timeout
        await asyncio.gather(*sends, return_exceptions=True)

    transport.set_handler(PROTOCOL, on_model)
    await transport.start()
    children = [await transport.connect(address) for address in forward_to]
    if report_to is not None:
        root = await transport.connect(report_to)
    print(f"READY {transport.addresses[0]}", flush=True)
    await asyncio.Event().wait()


# ---- senders --------------------------------------------------------------------------------


async def tcp_sender(port: int, digest: bool) -> tuple[Send, Callable[[], Awaitable[None]]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send(payload: bytes) -> None:
        writer.write(encode_header(payload) if digest else len(payload).to_bytes(8, "big"))
        writer.write(payload)
        await writer.drain()
        status = await reader.readexactly(1)
        if status[0] != Status.OK:
            raise TransportError(f"tcp receiver answered {status[0]}")

    async def close() -> None:
        writer.close()
        await writer.wait_closed()

    return send, close


class Child:
    """A receiver process and the address it printed."""

    def __init__(self, *args: str) -> None:
        command = [sys.executable, __file__, "--serve", *args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)

    async def address(self, timeout: float = 60.0) -> str:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.process.stdout.readline), timeout)
        if not line.startswith("READY "):
            raise RuntimeError(f"receiver failed to start: {line!r}")
        return line.split(" ", 1)[1].strip()

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc status")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def timed(send: Send, payload: bytes) -> float:
    start = time.perf_counter()
    await send(payload)
    return time.perf_counter() - start


async def throughput(sizes: list[int], repeats: int, console: Console) -> dict[str, Any]:
    tcp_child, raw_child, p2p_child = Child("tcp"), Child("rawtcp"), Child("libp2p")
    before_child = Child("libp2p", "--untuned")
    sender, before = libp2p_transport(), libp2p_transport(tuned=False)
    try:
        tcp_port = int((await tcp_child.address()).split(":")[1])
        raw_port = int((await raw_child.address()).split(":")[1])
        p2p_address = await p2p_child.address()
        before_address = await before_child.address()
        await asyncio.sleep(3.0)  # let the idle process settle before reading its memory
        idle_rss = p2p_child.rss_mb()
        await sender.start()
        await before.start()
        receiver = await sender.connect(p2p_address)
        before_receiver = await before.connect(before_address)
        tcp_send, tcp_close = await tcp_sender(tcp_port, digest=True)
        raw_send, raw_close = await tcp_sender(raw_port, digest=False)

        async def p2p_send(payload: bytes) -> None:
            await sender.send(receiver, PROTOCOL, payload)

        async def before_send(payload: bytes) -> None:
            await before.send(before_receiver, PROTOCOL, payload)

        senders = {
            "libp2p": p2p_send,
            "libp2p_before": before_send,
            "tcp": tcp_send,
            "tcp_raw": raw_send,
        }
        for send in senders.values():  # warm up: connections, windows, code paths
            await send(os.urandom(MB))
        rows = []
        for size in sizes:
            payload = os.urandom(size * MB)
            seconds: dict[str, list[float]] = {name: [] for name in senders}
            for _ in range(repeats):
                for name, send in senders.items():
                    seconds[name].append(await timed(send, payload))
            row: dict[str, Any] = {"size_mb": size}
            for name, samples in seconds.items():
                row[f"{name}_mb_s"] = size / statistics.median(samples)
                row[f"{name}_best_mb_s"] = size / min(samples)
                row[f"{name}_seconds"] = samples
            row["ratio"] = row["libp2p_mb_s"] / row["tcp_mb_s"]
            row["ratio_raw"] = row["libp2p_mb_s"] / row["tcp_raw_mb_s"]
            row["speedup"] = row["libp2p_mb_s"] / row["libp2p_before_mb_s"]
            rows.append(row)
            console.print(
                f"{size:>3} MB  libp2p {row['libp2p_mb_s']:7.1f} MB/s   "
                f"before tuning {row['libp2p_before_mb_s']:7.1f} MB/s   "
                f"tcp {row['tcp_mb_s']:7.1f} MB/s   ratio {row['ratio']:.2f}   "
                f"tcp without digest {row['tcp_raw_mb_s']:7.1f} MB/s"
            )
        await tcp_close()
        await raw_close()
        return {"idle_rss_mb": idle_rss, "rows": rows}
    finally:
        await sender.stop()
        await before.stop()
        for child in (tcp_child, raw_child, p2p_child, before_child):
            child.stop()


async def tree(peers: int, size: int) -> dict[str, Any]:
    """Time for one model from the root to reach every peer of a binary tree of
    ``peers`` processes, each forwarding to its two children on arrival."""
    root = libp2p_transport()
    arrivals: dict[str, float] = {}
    all_arrived = asyncio.Event()

    async def on_done(sender: str, payload: bytes) -> None:
        arrivals[payload.decode()] = time.perf_counter()
        if len(arrivals) == peers - 1:
            all_arrived.set()

    root.set_handler("/bench/done/1", on_done)
    await root.start()
    children: dict[int, Child] = {}
    addresses: dict[int, str] = {}
    try:
        for index in range(peers - 1, 0, -1):  # leaves first: parents need their addresses
            kids = [addresses[k] for k in (2 * index + 1, 2 * index + 2) if k < peers]
            children[index] = Child("libp2p", *kids, "--report-to", root.addresses[0])
            addresses[index] = await children[index].address()
        first = [await root.connect(addresses[k]) for k in (1, 2) if k < peers]
        await asyncio.gather(*(root.send(k, PROTOCOL, os.urandom(1000)) for k in first))
        await asyncio.wait_for(all_arrived.wait(), 120)  # warm-up round
        arrivals.clear()
        all_arrived.clear()
        payload = os.urandom(size * MB)
        start = time.perf_counter()
        await asyncio.gather(*(root.send(k, PROTOCOL, payload) for k in first))
        await asyncio.wait_for(all_arrived.wait(), 300)
        total = max(arrivals.values()) - start
        depth = (peers).bit_length() - 1
        return {"peers": peers, "size_mb": size, "seconds": total, "tree_depth": depth}
    finally:
        await root.stop()
        for child in children.values():
            child.stop()


class ModelPeer:
    """This process's end of one model link: a transport, its receiver child, and the
    queue of the child's reports."""

    def __init__(self, tuned: bool) -> None:
        self.tuned = tuned
        self.child = Child("models", *([] if tuned else ["--untuned"]))
        self.transport = libp2p_transport(tuned)
        self.reports: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.receiver = ""

    async def start(self) -> None:
        async def on_report(sender: str, payload: bytes) -> None:
            self.reports.put_nowait(json.loads(payload))

        self.transport.set_handler(DONE, on_report)
        self.transport.set_handler(PROFILE_RESULT, on_report)
        await self.transport.start()
        self.receiver = await self.transport.connect(await self.child.address())

    async def move(self, link: ModelSender, params: dict[str, Any]) -> dict[str, float]:
        """Encode, send, decode at the receiver: the seconds of each and of all."""
        start = time.perf_counter()
        payload = link.encode(self.receiver, params)
        encoded = time.perf_counter()
        await self.transport.send(self.receiver, MODEL, payload)
        sent = time.perf_counter()
        report = await asyncio.wait_for(self.reports.get(), 120)
        done = time.perf_counter()
        return {
            "seconds": done - start,
            "encode_s": encoded - start,
            "send_s": sent - encoded,
            "decode_s": report["decode_s"],
            "bytes": len(payload),
        }

    async def profile(self, link: ModelSender, models: list[dict[str, Any]]) -> dict[str, Any]:
        """Sampling profiles of both peers over ``len(models)`` moves."""
        await self.transport.send(self.receiver, PROFILE, b"start")
        sampler = Sampler(self.transport.peer_id)
        sampler.start()
        moves = [await self.move(link, params) for params in models]
        mine = await asyncio.to_thread(sampler.stop)
        await self.transport.send(self.receiver, PROFILE, b"stop")
        theirs = await asyncio.wait_for(self.reports.get(), 60)
        return {
            "sends": len(moves),
            "seconds": statistics.median(m["seconds"] for m in moves),
            "mean_seconds": statistics.mean(m["seconds"] for m in moves),
            "sender": mine,
            "receiver": theirs,
        }

    async def stop(self) -> None:
        await self.transport.stop()
        self.child.stop()


async def models(repeats: int, profiled: int, console: Console) -> dict[str, Any]:
    """Per spec, the time to move a 10 MB model between two peers, against today's (spec
    none over the channel before tuning), interleaved; then the profiles."""
    params = model_params()
    rng = np.random.default_rng(1)
    size = sum(array.nbytes for array in params.values())
    spec = receiver_spec()
    today, tuned = ModelPeer(tuned=False), ModelPeer(tuned=True)
    configs = [("today", today, "none")] + [(name, tuned, name) for name in SPECS]
    links = {name: ModelSender(spec_name, spec, seed) for seed, (name, _, spec_name) in
             enumerate(configs)}  # fmt: skip
    try:
        await today.start()
        await tuned.start()
        for name, peer, _ in configs:  # warm up: connections, and each link's full model
            for _ in range(2):
                await peer.move(links[name], params)
        samples: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in configs}
        for _ in range(repeats):
            params = drifted(params, rng)
            for name, peer, _ in configs:
                samples[name].append(await peer.move(links[name], params))
        rows = []
        for name, _, spec_name in configs:
            moves = samples[name]
            row: dict[str, Any] = {"config": name, "spec": spec_name, "model_mb": size / MB}
            for key in ("seconds", "encode_s", "send_s", "decode_s"):
                row[key] = statistics.median(m[key] for m in moves)
            row["best_seconds"] = min(m["seconds"] for m in moves)
            row["wire_mb"] = statistics.median(m["bytes"] for m in moves) / MB
            row["samples"] = [m["seconds"] for m in moves]
            rows.append(row)
        base = rows[0]["seconds"]
        for row in rows:
            row["speedup"] = base / row["seconds"]
            row["goal_4x"] = row["speedup"] >= 4.0
            console.print(
                f"{row['config']:>14}  {row['wire_mb']:6.2f} MB on the wire  "
                f"{row['seconds'] * 1000:7.1f} ms  {row['speedup']:5.2f}x today"
            )
        profiles = {}
        for name, peer in (("today", today), ("tuned", tuned)):
            batch = []
            for _ in range(profiled):
                params = drifted(params, rng)
                batch.append(params)
            profiles[name] = await peer.profile(links[name if name == "today" else "none"], batch)
        return {"model_bytes": size, "rows": rows, "profiles": profiles}
    finally:
        await today.stop()
        await tuned.stop()


def profile_table(result: dict[str, Any]) -> Table:
    """Milliseconds per 10 MB send in each layer, per peer, before and after tuning."""
    profiles = result["profiles"]
    table = Table(title="Where the time of one 10 MB model send goes (ms, sampled, spec none)")
    table.add_column("layer")
    columns = [(name, side) for name in ("today", "tuned") for side in ("sender", "receiver")]
    for name, side in columns:
        table.add_column(f"{side}, {'before tuning' if name == 'today' else 'tuned'}",
                         justify="right")  # fmt: skip
    for layer in [*LAYERS, IDLE]:
        cells = []
        for name, side in columns:
            profile = profiles[name]
            seconds = profile[side]["layers"].get(layer, 0.0) / profile["sends"]
            cells.append(f"{seconds * 1000:.1f}")
        table.add_row(layer, *cells)
    table.add_row(
        "end to end (mean of the profiled sends)",
        *(f"{profiles[name]['mean_seconds'] * 1000:.1f}" for name, _ in columns),
    )
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 10 MB only, < 2 minutes")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--no-tree", action="store_true", help="skip the 16-peer tree")
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--report-to", help=argparse.SUPPRESS)
    parser.add_argument("--untuned", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        kind, *forward = args.serve
        if kind in ("tcp", "rawtcp"):
            serve: Coroutine[Any, Any, None] = serve_tcp(digest=kind == "tcp")
        elif kind == "models":
            serve = serve_models(tuned=not args.untuned)
        else:
            serve = serve_libp2p(forward, args.report_to, tuned=not args.untuned)
        asyncio.run(serve)
        return 0

    console = Console(highlight=False)
    sizes = [1, 10] if args.quick else [1, 10, 50]
    repeats = args.repeats or (3 if args.quick else 7)
    started = time.perf_counter()
    result = asyncio.run(throughput(sizes, repeats, console))
    result["models"] = asyncio.run(models(repeats, 3 if args.quick else 5, console))
    if not (args.quick or args.no_tree):
        result["tree"] = asyncio.run(tree(16, 10))
    result["settings"] = {
        "sizes_mb": sizes,
        "repeats": repeats,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }

    table = Table(title=f"Transport throughput, 127.0.0.1, median of {repeats} acked sends")
    columns = (
        "size",
        "libp2p MB/s",
        "libp2p before tuning",
        "tcp MB/s (same framing)",
        "libp2p / tcp",
        "tcp MB/s (no digest)",
        "libp2p / tcp no digest",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for row in result["rows"]:
        table.add_row(
            f"{row['size_mb']} MB",
            f"{row['libp2p_mb_s']:.1f}",
            f"{row['libp2p_before_mb_s']:.1f}",
            f"{row['tcp_mb_s']:.1f}",
            f"{row['ratio']:.2f}x",
            f"{row['tcp_raw_mb_s']:.1f}",
            f"{row['ratio_raw']:.2f}x",
        )
    console.print(table)
    console.print(f"idle libp2p transport process: {result['idle_rss_mb']:.0f} MB RSS")
    moved = result["models"]
    table = Table(
        title=f"A {moved['model_bytes'] / MB:.2f} MB float32 model between two peers, end to "
        f"end (compress + encode, send, decode + rebuild), median of {repeats}; today = spec "
        "none over the channel before tuning, same run"
    )
    for column in ("spec", "MB on the wire", "encode ms", "send ms", "decode ms", "total ms",
                   "vs today", "4x goal"):  # fmt: skip
        table.add_column(column, justify="right")
    for row in moved["rows"]:
        label = "none (today)" if row["config"] == "today" else row["spec"]
        table.add_row(
            label,
            f"{row['wire_mb']:.2f}",
            f"{row['encode_s'] * 1000:.1f}",
            f"{row['send_s'] * 1000:.1f}",
            f"{row['decode_s'] * 1000:.1f}",
            f"{row['seconds'] * 1000:.1f}",
            f"{row['speedup']:.2f}x",
            "" if row["config"] == "today" else ("yes" if row["goal_4x"] else "no"),
        )
    console.print(table)
    console.print(profile_table(moved))
    if "tree" in result:
        t = result["tree"]
        console.print(
            f"one {t['size_mb']} MB model to all {t['peers']} peers (binary tree, depth "
            f"{t['tree_depth']}): {t['seconds']:.2f} s"
        )

    RESULTS.mkdir(exist_ok=True)
    name = "transport_quick" if args.quick else "transport"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    console.print(f"wrote {RESULTS / name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
