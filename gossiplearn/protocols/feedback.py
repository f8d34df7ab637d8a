"""Error feedback for compressed models: per-pair shared references, as in CHOCO-SGD.

How it works (Koloskova, Stich and Jaggi, 2019, the x̂ updates of Algorithm 1): for each
pair (sender i, receiver j) both sides hold a reference x̂, the model j last rebuilt from
i. i sends ``q = C(x - x̂)``, the compressed difference, and both set ``x̂ += q``. What C
left out (entries a sparsifier dropped, quantisation error) stays in ``x - x̂`` and goes out
in a later message, so over time the receiver's x̂ follows x with no lasting error. The
receiver hands x̂ to the protocol core as the sender's model: every core (gossip with any
aggregator, D-PSGD, MoDeST, Bristle) merges models, not CHOCO's consensus steps.

Naming the reference: references form a *stream* per pair. A full model (``seq`` 0,
relative to zero, never sparsified, only quantised) starts a stream with a fresh random
64-bit id; each later message has ``seq`` one above the last and applies only to the
reference of ``seq - 1`` in the same stream. A receiver that does not hold exactly that
reference (first contact after its restart, a lost or reordered message, a stream it
evicted) never applies the message: it drops it, forgets the stream and answers
:class:`~gossiplearn.protocols.compressed_messages.ReferenceMissing` naming the stream;
a sender that gets it for the stream it is on starts a new one with a full model. A sender
that restarts, or whose send failed, starts a new stream too.

Why this and not acknowledgements: push gossip is fire-and-forget, and messages are lost
(churn in the simulator, timeouts on real peers). A sender cannot know what arrived, so
the sender assumes delivery and the receiver checks it: a loss costs at most the messages
in flight until the NACK arrives (each dropped, as a lost message would be) and one full
model, and a receiver is never silently wrong. The scheme needs no clock and no extra
message while nothing is lost.

Bounds (threat model): each side keeps at most ``max_peers`` references, and no more than
``max_bytes`` of them (least recently used dropped first; a dropped one only costs a full
model), so identities cannot fill memory beyond that.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from gossiplearn.protocols.codec import message_fields
from gossiplearn.protocols.compressed_messages import (
    CARRIED_TYPES,
    MAX_STREAM,
    CompressedModel,
    ReferenceMissing,
    float_tensors,
    rebuild,
    vector_size,
)
from gossiplearn.protocols.compression import Compression, add_step, encode_and_decode
from gossiplearn.protocols.messages import Message, ModelSpec
from gossiplearn.types import PeerId

Vector = npt.NDArray[np.float32]
#: References a link keeps per direction by default, in number and in bytes.
DEFAULT_MAX_PEERS = 1024
DEFAULT_MAX_BYTES = 256 * 2**20


@dataclass
class _Reference:
    stream: int
    seq: int
    vector: Vector
    #: Known to hold no -0.0 (last updated by an int8 step): see :func:`add_step`.
    clean: bool = False


class ModelLink:
    """One peer's compressed model transfer with all the others.

    :meth:`outgoing` turns each model-carrying message into a :class:`CompressedModel`
    for one receiver (other messages pass unchanged; with ``compression`` none, all do);
    :meth:`incoming` turns what arrives back into the carried message, or into the
    :class:`ReferenceMissing` answer to send back. Thread-safe: a real peer encodes in
    worker threads.
    """

    def __init__(
        self,
        compression: Compression,
        spec: ModelSpec,
        rng: np.random.Generator,
        *,
        max_peers: int = DEFAULT_MAX_PEERS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.compression = compression
        self.spec = spec
        self.rng = rng
        self._floats = float_tensors(spec)
        per_reference = 4 * max(1, vector_size(spec))
        #: References kept per direction: a count, and within ``max_bytes`` for big models.
        self.max_peers = max(1, min(max_peers, max_bytes // per_reference))
        #: (sending identity, receiver) -> the reference the receiver holds if all arrived.
        self.sent: OrderedDict[Hashable, _Reference] = OrderedDict()
        #: sender -> the reference rebuilt from its last message.
        self.held: OrderedDict[PeerId, _Reference] = OrderedDict()
        #: Messages dropped for want of a reference, and full models sent.
        self.missing = 0
        self.fulls = 0
        self._lock = threading.Lock()

    def outgoing(self, to: PeerId, message: Message, via: PeerId | None = None) -> Message:
        """What to send ``to`` for ``message`` (from identity ``via``, default our own)."""
        if not self.compression.enabled or message.TYPE_ID not in CARRIED_TYPES:
            return message
        fields = message_fields(message)
        params = getattr(message, "params")  # noqa: B009 -- every carried type has params
        floats = set(self._floats)
        fields["tensors"] = [t for t in fields["tensors"] if t[0] not in floats]
        inner = msgpack.packb(fields, use_bin_type=True)
        key = (via, to)
        with self._lock:
            ref = self.sent.pop(key, None)
            if ref is None:
                stream, seq = int(self.rng.integers(1, MAX_STREAM)), 0
                self.fulls += 1
            else:
                stream, seq = ref.stream, ref.seq + 1
            # the model, or its difference from the reference, flattened in one pass
            vector = self._flatten(params, None if ref is None else ref.vector)
            encoded = encode_and_decode(vector, self.compression, self.rng, sparse=ref is not None)
            packed = encoded.packed
            # What the receiver will hold: the values it decodes, added as it adds them.
            if ref is None:
                rebuilt = encoded.step.dense()
            else:
                rebuilt = add_step(ref.vector, encoded.step, not ref.clean)
            clean = self.compression.values == "int8"
            self.sent[key] = _Reference(stream, seq, rebuilt, clean)
            _trim(self.sent, self.max_peers)
        return CompressedModel(inner, self.compression, stream, seq, packed)

    def incoming(self, sender: PeerId, message: Message) -> tuple[Message | None, Message | None]:
        """(the message for the core or None, the answer to send ``sender`` or None)."""
        if isinstance(message, ReferenceMissing):
            with self._lock:
                for key in [k for k, r in self.sent.items() if r.stream == message.stream]:
                    if isinstance(key, tuple) and key[1] == sender:
                        del self.sent[key]
            return None, None
        if not isinstance(message, CompressedModel):
            return message, None
        step = message.step
        assert step is not None  # set by the decoder
        with self._lock:
            ref = self.held.pop(sender, None)
            if message.seq == 0:
                vector = step.dense().copy()
            elif ref is not None and ref.stream == message.stream and ref.seq == message.seq - 1:
                # in place: the reference was taken out of the table, and goes back only
                # if the sum is finite
                vector = add_step(ref.vector, step, not ref.clean)
            else:
                self.missing += 1
                return None, ReferenceMissing(message.stream)
            if not np.isfinite(vector).all():  # a sum can overflow: the stream is broken
                self.missing += 1
                return None, ReferenceMissing(message.stream)
            clean = message.codec.values == "int8"
            self.held[sender] = _Reference(message.stream, message.seq, vector, clean)
            _trim(self.held, self.max_peers)
        return rebuild(message, vector, self.spec), None

    def forget(self, to: PeerId, via: PeerId | None = None) -> None:
        """A send to ``to`` failed: its next model starts a new stream."""
        with self._lock:
            self.sent.pop((via, to), None)

    def _flatten(self, params: object, reference: Vector | None = None) -> Vector:
        """The floating-point tensors as one new float32 vector, less ``reference`` if
        given (each tensor cast to float32 first, then the float32 difference)."""
        assert isinstance(params, dict)
        parts = [np.asarray(params[name], dtype=np.float32).reshape(-1) for name in self._floats]
        size = sum(part.size for part in parts)
        if reference is not None and reference.size != size:
            raise ValueError(f"model of {size} values, reference of {reference.size}")
        vector = np.empty(size, dtype=np.float32)
        offset = 0
        for part in parts:
            end = offset + part.size
            if reference is None:
                vector[offset:end] = part
            else:
                np.subtract(part, reference[offset:end], out=vector[offset:end])
            offset = end
        return vector


def _trim(table: OrderedDict[Any, _Reference], cap: int) -> None:
    while len(table) > cap:
        table.popitem(last=False)
