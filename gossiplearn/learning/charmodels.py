"""A character-level model for next-character prediction (the ``shakespeare`` dataset).

Inputs are int64 character codes ``[N, L]``; the output is one score per character. The
input vocabulary is the output one (``num_classes`` codes), as in any next-token task.

:func:`charlstm` is LEAF's Shakespeare model made small: an 8-wide embedding, one LSTM
layer of :data:`LSTM_HIDDEN` units and a linear read-out of the last step. LEAF stacks two
LSTM layers of 256 (820k parameters, 30x ours); one layer of 64 trains about 7x faster per
step than 256 here and, trained on 16 speakers' samples alone, comes within 0.015 of the
accuracy of one of 128. torch.func cannot vmap an LSTM, so the batched engine hands this
model to the sequential one (and says so). A convolutional variant (embedding, dilated
causal convolutions), which the batched engine can stack, learned worse in our trials
(0.14 to 0.26 against 0.35 after 1000 steps), and stacking did not speed it up (8 peers,
5 rounds: 22 s batched, 21 s sequential), so there is none.
"""

from __future__ import annotations

import torch
from torch import nn

from gossiplearn.errors import ModelError

__all__ = ["CharLSTM", "charlstm"]

EMBEDDING = 8
LSTM_HIDDEN = 64


class CharLSTM(nn.Module):
    """Embedding, one LSTM layer, a linear layer on the last step's output."""

    def __init__(self, vocab: int, hidden: int = LSTM_HIDDEN) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, EMBEDDING)
        self.lstm = nn.LSTM(EMBEDDING, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps, _ = self.lstm(self.embed(x))
        return self.out(steps[:, -1])


def charlstm(shape: tuple[int, ...], classes: int) -> nn.Module:
    """:class:`CharLSTM` (26k parameters with shakespeare's 96 characters)."""
    if len(shape) != 1:
        raise ModelError(
            f"charlstm needs token sequences [L] (int64 character codes, e.g. --dataset "
            f"shakespeare), got inputs of shape {shape}: use an image or feature model here"
        )
    return CharLSTM(classes)
