"""Why coordinate-wise median gains under attack in the Bristle grid of ``claims.py``.

There, median's honest peers end at 0.737 without attackers and at 0.70-0.80 with 4, 6
or 10 attackers joining them. This runs the same setting (20 honest peers, window:4,
complete graph, the linear head on the frozen features, 60 rounds) with peers added that
send models whose values do not matter to the question: near zero, far above or far
below every honest value, or their own honestly trained model (``scale:1``), and with 4
more honest peers instead. If the gain came from what the attackers send, these would
differ at the same count (the README gives what they show).

    python benchmarks/median_extra_peers.py            # 12 runs, about 6 minutes
    python benchmarks/median_extra_peers.py --resume   # reuse the runs on file
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from claims import RESULTS, Runner, bristle_base, bristle_settings
from rich.console import Console

#: What the added peers send: (label, attack spec).
SENDERS = [
    ("near zero", "noise:uniform:0:0.000001"),
    ("uniform 5..6", "noise:uniform:5:6"),
    ("uniform -6..-5", "noise:uniform:-6:-5"),
    ("their own trained model", "scale:1"),
    ("the paper's noise (uniform -0.2..0.3)", "noise:uniform:-0.2:0.3"),
]
COUNTS = {"near zero": (2, 3, 4, 6, 8), "their own trained model": (3, 4)}


def main() -> int:
    base, _ = bristle_base(quick=False)
    cells: list[tuple[str, int, dict[str, Any]]] = [
        ("no one added", 0, bristle_settings(base, "median", None, 0)),
        ("4 more honest peers", 4, bristle_settings(base | {"peers": 24}, "median", None, 0)),
    ]
    for label, attack in SENDERS:
        for count in COUNTS.get(label, (4,)):
            cells.append((label, count, bristle_settings(base, "median", attack, count)))
    path = RESULTS / "median_extra_peers.json"
    runner = Runner(path, "--resume" in sys.argv[1:], Console(highlight=False))
    finals = [
        (label, count, runner(f"median/{label}/+{count}", settings)["final_accuracy"])
        for label, count, settings in cells
    ]
    print(f"\n{'added peers send':<40} {'added':>5}  final accuracy")
    for label, count, final in finals:
        print(f"{label:<40} {count:>5}  {final:.3f}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
