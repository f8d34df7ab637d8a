"""Coverage-guided fuzzing of the wire decoder with atheris (optional; not run by pytest).

    pip install atheris
    python tests/fuzz/atheris_wire.py -atheris_runs=200000      # libFuzzer flags work

Seeds a fresh corpus (in a temporary folder) with a valid encoding of every message type
(from test_fuzz_wire) and fails on anything but our own WireError subclasses, as the
hypothesis tests do.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import gossiplearn.protocols.bristle_messages
    import gossiplearn.protocols.codec
    import gossiplearn.protocols.compressed_messages
    import gossiplearn.protocols.feedback
    import gossiplearn.protocols.modest_messages
    import gossiplearn.protocols.sybilwall_messages  # noqa: F401 (instrumented for coverage)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from test_fuzz_wire import VALID, _decode


def one_input(data: bytes) -> None:
    _decode(data)  # decodes (and rebuilds a compressed model); only WireError is allowed


def main() -> None:
    corpus = Path(tempfile.mkdtemp(prefix="gossiplearn-atheris-"))
    for index, data in enumerate(VALID):
        (corpus / f"valid-{index}").write_bytes(data)
    atheris.Setup([*sys.argv, str(corpus)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
