"""Coverage-guided fuzzing of the wire decoder with atheris (optional; not run by pytest).

    pip install atheris
    python tests/fuzz/atheris_wire.py -atheris_runs=200000      # libFuzzer flags work

Seeds the corpus with a valid encoding of every message type (from test_fuzz_wire) and
fails on anything but our own WireError subclasses, as the hypothesis tests do.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from gossiplearn.errors import WireError
    from gossiplearn.protocols.codec import decode_message

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from test_fuzz_wire import LIMIT, SPEC, VALID


def one_input(data: bytes) -> None:
    with contextlib.suppress(WireError):  # anything else is a finding
        decode_message(data, SPEC, max_bytes=LIMIT)


def main() -> None:
    corpus = Path(__file__).parent / "corpus"
    corpus.mkdir(exist_ok=True)
    for index, data in enumerate(VALID):
        (corpus / f"valid-{index}").write_bytes(data)
    atheris.Setup([*sys.argv, str(corpus)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
