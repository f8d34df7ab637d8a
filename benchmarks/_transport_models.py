"""Helpers of ``benchmarks/transport.py``: a 10 MB model moved between two real peers,
per compression spec, and a sampling profile of where a send's time goes.

The model path is the peer's own (``Peer._encode_for`` and ``Peer._on_model_bytes``):
:class:`~gossiplearn.protocols.feedback.ModelLink` compresses for the receiver, the codec
encodes, the libp2p transport carries the frame, the receiver decodes
(:func:`~gossiplearn.protocols.codec.decode_message`) and rebuilds the model from its
reference, then reports back on a small message. The sender times all of it.

The profile samples the Python stacks of the transport's trio thread and the asyncio
thread about once a millisecond (``sys._current_frames``) and files each sample under the
innermost layer it is in: digest, Noise, socket syscalls, yamux, our frame reassembly,
the codec, trio's scheduler, the asyncio loop (the bridge and the handlers), or idle
(waiting for the other side). The sampler needs the GIL to look, so each sample is
weighted by the time since the one before, and the GIL switch interval is cut to 0.5 ms
while it runs (else code that holds the GIL would be under-counted against code that
releases it: hashing, encryption, syscalls). A sampling profile: shares, not exact times.
"""

from __future__ import annotations

import collections
import itertools
import json
import linecache
import sys
import threading
import time
from types import FrameType
from typing import Any

import numpy as np

from gossiplearn.protocols.codec import decode_message, encode
from gossiplearn.protocols.compressed_messages import CompressedModel
from gossiplearn.protocols.compression import parse_compression
from gossiplearn.protocols.feedback import ModelLink
from gossiplearn.protocols.messages import ModelMessage, ModelSpec, spec_of
from gossiplearn.types import Params

MODEL = "/bench/model/1"
DONE = "/bench/model-done/1"
PROFILE = "/bench/profile/1"
PROFILE_RESULT = "/bench/profile-result/1"
SPECS = ["none", "float16", "bfloat16", "int8", "topk:0.1+int8"]
#: Hidden layers of the MLP (784 inputs, 10 outputs): 2,513,650 float32, 10.05 MB.
HIDDEN = (2048, 440)


def model_params(seed: int = 0) -> Params:
    """A float32 MLP state of about 10 MB, initialised as torch initialises it."""
    import torch

    torch.manual_seed(seed)
    sizes = (784, *HIDDEN, 10)
    layers: list[torch.nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1])
    return {name: t.detach().numpy().copy() for name, t in net.state_dict().items()}


def drifted(params: Params, rng: np.random.Generator, scale: float = 1e-3) -> Params:
    """The next round's model: every weight moved a little, as local training does."""
    return {
        name: (array + rng.normal(0.0, scale, array.shape)).astype(np.float32)
        for name, array in params.items()
    }


class ModelSender:
    """One compression spec's link from this peer to a receiver."""

    def __init__(self, spec: str, model_spec: ModelSpec, seed: int) -> None:
        self.spec = spec
        self.link = ModelLink(parse_compression(spec), model_spec, np.random.default_rng(seed))
        self.round = 0

    def encode(self, receiver: str, params: Params) -> bytes:
        self.round += 1
        return encode(self.link.outgoing(receiver, ModelMessage(self.round, params, 100)))


class ModelReceiver:
    """Decodes what arrives, one link per codec (so specs can be interleaved)."""

    def __init__(self, model_spec: ModelSpec) -> None:
        self.spec = model_spec
        self.links: dict[str, ModelLink] = {}

    def decode(self, sender: str, payload: bytes) -> ModelMessage:
        message = decode_message(payload, self.spec, max_bytes=2**30)
        if isinstance(message, CompressedModel):
            key = str(message.codec)
            link = self.links.get(key)
            if link is None:
                link = self.links[key] = ModelLink(
                    parse_compression("none"), self.spec, np.random.default_rng(0)
                )
            rebuilt, reply = link.incoming(sender, message)
            if rebuilt is None or reply is not None:
                raise RuntimeError(f"no reference for a {key} message")
            message = rebuilt
        if not isinstance(message, ModelMessage):
            raise RuntimeError(f"expected a model, got {type(message).__name__}")
        return message


def receiver_spec() -> ModelSpec:
    return spec_of(model_params())


# ---- sampling profile -----------------------------------------------------------------------

#: The layers, in the order tables list them.
LAYERS = [
    "encode / decode (codec, compression)",
    "digest (BLAKE2b)",
    "frame reassembly (copies)",
    "our send / read loops",
    "Noise (ChaCha20-Poly1305)",
    "socket syscalls",
    "yamux",
    "libp2p streams, secure session, copies",
    "trio scheduler",
    "asyncio loop (bridge, handlers)",
    "other",
]
IDLE = "idle: trio thread waiting for the other side"


def classify(frame: FrameType | None, trio_thread: bool) -> str:
    """The layer of the innermost frame of a stack that belongs to one."""
    innermost = frame
    while frame is not None:
        code = frame.f_code
        path, name = code.co_filename, code.co_name
        if (path.endswith("_io_epoll.py") and name == "get_events") or (
            path.endswith("selectors.py") and name == "select"
        ):
            return IDLE
        if "/noise/" in path or "/cryptography/" in path:
            return "Noise (ChaCha20-Poly1305)"
        if path.endswith(("trio/_socket.py", "trio/_highlevel_socket.py")):
            return "socket syscalls"
        if path.endswith("gossiplearn/transport/framing.py"):
            line = linecache.getline(path, frame.f_lineno)
            if "hasher" in line or "blake2b" in line:
                return "digest (BLAKE2b)"
            return "frame reassembly (copies)"
        if path.endswith("gossiplearn/transport/libp2p.py"):
            if name == "_header":
                return "digest (BLAKE2b)"
            if name in ("_exchange", "_write_shielded", "_read_frame"):
                return "our send / read loops"
        if "/stream_muxer/yamux/" in path:
            return "yamux"
        if "/gossiplearn/protocols/" in path or "_transport_models" in path:
            return "encode / decode (codec, compression)"
        if "/libp2p/" in path:
            return "libp2p streams, secure session, copies"
        frame = frame.f_back
    if innermost is not None and "threading.py" in innermost.f_code.co_filename:
        return IDLE
    return "trio scheduler" if trio_thread else "asyncio loop (bridge, handlers)"


class Sampler:
    """Samples the stacks of one transport's trio thread (that of peer ``peer_id``) and of
    this process's main (asyncio) thread."""

    def __init__(self, peer_id: str, interval: float = 0.001) -> None:
        self.trio_thread = f"gossiplearn-libp2p-{peer_id[-8:]}"
        self.interval = interval
        self.counts: dict[tuple[str, str], float] = collections.defaultdict(float)
        self.ticks = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._switch = sys.getswitchinterval()

    def start(self) -> None:
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        sys.setswitchinterval(self._switch)
        return self.result()

    def _run(self) -> None:
        main = threading.main_thread().ident
        started = last = time.perf_counter()
        while not self._stop.is_set():
            now = time.perf_counter()
            elapsed, last = now - last, now
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                name = names.get(ident, "")
                if name == self.trio_thread:
                    self.counts[("trio", classify(frame, True))] += elapsed
                elif ident == main:
                    self.counts[("asyncio", classify(frame, False))] += elapsed
            self.ticks += 1
            time.sleep(self.interval)
        self.seconds = time.perf_counter() - started

    def result(self) -> dict[str, Any]:
        """Seconds per layer, both threads together; idle is the trio thread's."""
        layers: dict[str, float] = collections.defaultdict(float)
        for (thread, layer), seconds in self.counts.items():
            if layer != IDLE or thread == "trio":
                layers[layer] += seconds
        return {"seconds": self.seconds, "ticks": self.ticks, "layers": dict(layers)}


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()
