"""Self-centred clipping: received models are pulled to within τ of the own model.

ClippedGossip (He, Karimireddy and Jaggi, 2022) merges ``own + clip(x_j − own, τ)`` in
place of ``x_j``, so one Byzantine neighbour moves a peer by at most its mixing weight
times τ per merge, however far away the model it sends is. τ here is the lower median of
the received models' distances from the own model: while honest models are the majority
of a merge, τ is an honest distance, and honest models at or below the median pass
unchanged. With a single received model nothing is clipped (τ is its own distance).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def clip_rows(
    own: npt.NDArray[np.float64], received: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """``received`` ([k, P] rows) moved towards ``own`` ([P]) to within the lower median
    of their distances from it."""
    if len(received) <= 1:
        return received  # τ is the one model's own distance: nothing moves
    # One [k, P] buffer, rewritten row by row: the whole-matrix expression's two extra
    # [k, P] temporaries made this several times slower than its arithmetic.
    out = received - own
    distances = np.sqrt(np.einsum("kp,kp->k", out, out))
    tau = np.sort(distances)[(len(distances) - 1) // 2]
    for row, model, distance in zip(out, received, distances, strict=True):
        if distance > tau:
            row *= tau / distance
            row += own
        else:
            row[:] = model  # unclipped: exactly as received
    return out
