"""Checkpoints are atomic: a process killed while writing one leaves the last good one."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gossiplearn.peer.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from gossiplearn.protocols.messages import spec_of
from gossiplearn.types import Params

PARAMS: Params = {"w": np.zeros((1024, 1024), np.float32), "b": np.zeros(10, np.float32)}

WRITER = """
import sys, numpy as np
from pathlib import Path
from gossiplearn.peer.checkpoint import save_checkpoint
folder = Path(sys.argv[1])
params = {"w": np.zeros((1024, 1024), np.float32), "b": np.zeros(10, np.float32)}
round_ = 0
while True:
    round_ += 1
    params["w"][:] = round_
    save_checkpoint(folder, round_, params)
    print(round_, flush=True)
"""


def test_round_trip(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 7, PARAMS)
    loaded = load_checkpoint(tmp_path, spec_of(PARAMS))
    assert loaded is not None and loaded[0] == 7
    np.testing.assert_array_equal(loaded[1]["w"], PARAMS["w"])
    assert load_checkpoint(tmp_path / "empty", spec_of(PARAMS)) is None


@pytest.mark.slow
def test_sigkill_while_writing_leaves_the_last_good_checkpoint(tmp_path: Path) -> None:
    for attempt in range(5):
        folder = tmp_path / f"run-{attempt}"
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(folder)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert writer.stdout is not None
            written = 0
            while written < 3 + attempt:  # kill at a different point each time
                written = int(writer.stdout.readline())
            time.sleep(0.003 * attempt)
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=30)
        finally:
            if writer.poll() is None:
                writer.kill()
        loaded = load_checkpoint(folder, spec_of(PARAMS))
        assert loaded is not None
        round_, params = loaded
        assert round_ >= written  # at least the last write that was reported done
        assert np.all(params["w"] == round_)  # and never a torn mix of two writes
        assert [p.name for p in folder.iterdir()] == [CHECKPOINT]  # half-writes cleaned up


@pytest.mark.parametrize("round_", [2**64 - 1, 2**40 + 1])
def test_an_out_of_range_round_is_refused_on_load(tmp_path: Path, round_: int) -> None:
    from gossiplearn.errors import CheckpointError
    from gossiplearn.protocols.codec import encode
    from gossiplearn.protocols.messages import ModelMessage

    (tmp_path / CHECKPOINT).write_bytes(encode(ModelMessage(round_, PARAMS)))
    with pytest.raises(CheckpointError, match="out of range"):
        load_checkpoint(tmp_path, spec_of(PARAMS))
    with pytest.raises(CheckpointError, match="out of range"):
        save_checkpoint(tmp_path, round_, PARAMS)
