"""Messages whose bytes and contents the simulator computes when they are first needed.

With a deferring training pool, a pushed model is often not trained yet when it is sent.
Its size is known from the model's spec, which is all the network model needs, so the
simulator sends a :class:`LateEncoding`: the message is encoded by the real codec the first
time its bytes are needed, and the bytes counted are the bytes encoded (checked).

A receiver may wait too (:func:`late_model_message`): it is handed a ModelMessage whose
params are :class:`~gossiplearn.learning.pool.DeferredParams` that, when first read, encode
the sent message, decode those bytes with the real codec and check them against the
receiver's spec. Round and sample count, which the cores read at once, are the sent ones.

Invariant: every message is encoded and decoded before its content is used. A message the
codec would reject on arrival (only non-finite values can make an honest, well-sized model
fail) is found when it is decoded: :class:`LateRejection` is raised then, and the run must
be repeated with messages decoded on arrival, since the receiver acted on a message it
would have dropped.
"""

from __future__ import annotations

from gossiplearn.errors import WireError
from gossiplearn.learning.pool import DeferredParams
from gossiplearn.protocols.codec import decode_message, encode
from gossiplearn.protocols.messages import ModelMessage, ModelSpec
from gossiplearn.types import Params

__all__ = ["LateEncoding", "LateRejection", "late_model_message"]


class LateRejection(RuntimeError):
    """A message decoded late is one the receiver would have rejected on arrival."""


class LateEncoding:
    """A model message whose params are not computed yet: encoded when its bytes are first
    needed. ``size`` is its encoded size, known from the model's spec."""

    def __init__(self, message: ModelMessage, size: int) -> None:
        self.message: ModelMessage | None = message
        self.size = size
        self._payload = b""

    @property
    def encoded(self) -> bool:
        return self.message is None

    def payload(self) -> bytes:
        if self.message is not None:
            self._payload, self.message = encode(self.message), None
            if len(self._payload) != self.size:
                raise RuntimeError(
                    f"message encoded to {len(self._payload)} bytes, not {self.size}"
                )
        return self._payload


def late_model_message(sent: LateEncoding, spec: ModelSpec, max_bytes: int) -> ModelMessage | None:
    """What the receiver of ``sent`` gets if its decoding can wait, else None (decode now).

    Decoding waits only for a message not encoded yet whose size and spec pass the
    receiver's checks, so that its contents are all that is left to check.
    """
    message = sent.message
    if message is None or sent.size > max_bytes:
        return None
    params = message.params
    if not isinstance(params, DeferredParams) or params.spec != spec:
        return None

    def decoded() -> Params:
        try:
            received = decode_message(sent.payload(), spec, max_bytes=max_bytes)
        except WireError as error:
            raise LateRejection(
                f"a model of round {message.round} decoded late is rejected: {error}"
            ) from error
        if not (
            isinstance(received, ModelMessage)
            and (received.round, received.samples) == (message.round, message.samples)
        ):
            raise LateRejection(f"a model of round {message.round} decoded late differs")
        return received.params

    return ModelMessage(
        message.round, DeferredParams(decoded, spec, inputs=[params]), message.samples
    )
