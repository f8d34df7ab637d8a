"""Crash-safe checkpoints of a peer's model and round.

The model is stored in the wire format (msgpack, never pickle) and read back with the same
checks as a received model. Writes go to a temporary file that is fsynced and renamed over
the old checkpoint, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gossiplearn.errors import CheckpointError, WireError
from gossiplearn.protocols.codec import decode, encode
from gossiplearn.protocols.messages import ModelMessage, ModelSpec
from gossiplearn.types import Params

CHECKPOINT = "checkpoint.msgpack"
#: No honest run gets near this many rounds (2**40: a round a microsecond for 12 days);
#: a checkpoint beyond it is corrupt or forged, and would overflow the wire format.
MAX_ROUND = 2**40


def check_round(round_: int) -> int:
    """``round_`` if it is in 0..MAX_ROUND; else CheckpointError."""
    if not 0 <= round_ <= MAX_ROUND:
        raise CheckpointError(f"round {round_} is out of range 0..2**40")
    return round_


def check_writable(state_dir: Path) -> None:
    """Create ``state_dir`` and check that a checkpoint can be written there; else
    CheckpointError saying what to fix."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=state_dir, prefix=".checkpoint-probe-"):
            pass
    except OSError as error:
        raise CheckpointError(
            f"cannot write checkpoints to {state_dir}: {error.strerror or error}; "
            "make it a writable directory or choose another state dir"
        ) from None


def save_checkpoint(state_dir: Path, round_: int, params: Params) -> Path:
    check_round(round_)
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / CHECKPOINT
    payload = encode(ModelMessage(round_, params))
    fd, temp = tempfile.mkstemp(dir=state_dir, prefix=".checkpoint-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(state_dir: Path, spec: ModelSpec) -> tuple[int, Params] | None:
    """The saved (round, params), or None if there is none; WireError if it does not fit,
    CheckpointError if its round is out of range.

    Temporary files left by a write that was killed half way are removed."""
    for stale in state_dir.glob(".checkpoint-*.tmp"):
        stale.unlink(missing_ok=True)
    path = state_dir / CHECKPOINT
    if not path.is_file():
        return None
    message = decode(path.read_bytes(), spec, max_bytes=2**34)
    check_round(message.round)
    return message.round, {name: value.copy() for name, value in message.params.items()}


__all__ = [
    "CHECKPOINT",
    "MAX_ROUND",
    "CheckpointError",
    "WireError",
    "check_writable",
    "load_checkpoint",
    "save_checkpoint",
]
