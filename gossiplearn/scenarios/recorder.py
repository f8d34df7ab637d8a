"""Evaluation points: collects every reporting peer's accuracy for a round, in round order."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from gossiplearn.learning.trainer import Evaluator
from gossiplearn.types import Params, PeerId

MetricsLine = dict[str, Any]

#: Reports scored together at most (bounds the models held for scoring).
SCORE_BATCH = 200


class RoundRecorder:
    """Evaluates reported models every ``eval_every`` rounds and in the last round.

    Lines come out in round order, each with ``peers_reporting``. With a set of
    ``reporters`` (gossip, D-PSGD, FedAvg), the line for round r is emitted once every live
    reporter has reported r; a peer that crashes or leaves (:meth:`peer_gone`) is no longer
    waited for, and a joining peer (:meth:`add_reporter`) only from the round after it
    joined. With ``reporters=None`` any peer may report any round (MoDeST's aggregators):
    the line for round r is emitted once some peer reported a later round. Reports for a
    round whose line is already out are dropped. :meth:`flush` emits whatever is left.
    """

    def __init__(
        self,
        evaluator: Evaluator,
        reporters: set[PeerId] | None,
        *,
        rounds: int,
        eval_every: int,
        bytes_sent: Callable[[], int],
        emit: Callable[[MetricsLine], None],
        extra: Callable[[PeerId, Params], dict[str, float]] | None = None,
    ) -> None:
        self.evaluator = evaluator
        #: More measures of a peer's reported model (e.g. attack success, the weight it
        #: gave attackers); each is averaged over the peers that have it into each line.
        self.extra = extra
        #: peer -> the last round it is not expected to report (0: it reports every round).
        self.reporters = None if reporters is None else dict.fromkeys(reporters, 0)
        self._last_join = 0  # no reporter's ``after`` is larger
        self.rounds = rounds
        self.eval_every = eval_every
        self.bytes_sent = bytes_sent
        self.emit = emit
        self.lines: list[MetricsLine] = []
        self.final_accuracy: dict[PeerId, float] = {}
        self._pending: defaultdict[int, dict[PeerId, dict[str, float]]] = defaultdict(dict)
        self._time: defaultdict[int, float] = defaultdict(float)
        self._latest = 0  # highest round reported
        self._emitted = 0  # highest round whose line is out
        #: Reports whose accuracy is not computed yet: scored together, in report order,
        #: when an evaluator can score many models at once (StackedEvaluator).
        self._unscored: list[tuple[PeerId, Params, dict[str, float]]] = []

    def add_reporter(self, peer: PeerId, after_round: int) -> None:
        """Wait for ``peer``'s reports of the rounds after ``after_round``."""
        if self.reporters is not None:
            self.reporters[peer] = after_round
            self._last_join = max(self._last_join, after_round)

    def peer_gone(self, peer: PeerId) -> None:
        """``peer`` crashed or left: stop waiting for it; it has no final accuracy (what it
        reported before stays in its rounds' lines)."""
        if self.reporters is not None:
            self.reporters.pop(peer, None)
        self._score()  # its reports so far count in their lines
        self.final_accuracy.pop(peer, None)
        self._emit_complete()

    def evaluated(self, round_: int) -> bool:
        return round_ % self.eval_every == 0 or round_ == self.rounds

    def on_round(self, peer: PeerId, round_: int, params: Params, time: float) -> None:
        self._latest = max(self._latest, round_)
        if not self.evaluated(round_) or round_ <= self._emitted:
            self._emit_complete()
            return
        measures = self.extra(peer, params) if self.extra else {}
        self._pending[round_][peer] = measures
        self._time[round_] = max(self._time[round_], time)
        self._unscored.append((peer, params, measures))
        if len(self._unscored) >= SCORE_BATCH or not hasattr(self.evaluator, "accuracies"):
            self._score()
        self._emit_complete()

    def _score(self) -> None:
        """Add the accuracy to every report waiting for it (many models at once)."""
        if not self._unscored:
            return
        unscored, self._unscored = self._unscored, []
        models = [params for _, params, _ in unscored]
        many = getattr(self.evaluator, "accuracies", None)
        scores = many(models) if many else [self.evaluator.accuracy(m) for m in models]
        for (peer, _, measures), accuracy in zip(unscored, scores, strict=True):
            measures["accuracy"] = accuracy
            self.final_accuracy[peer] = accuracy

    def _emit_complete(self) -> None:
        for round_ in sorted(self._pending):
            if not self._complete(round_):
                return
            self._emit(round_)

    def _complete(self, round_: int) -> bool:
        if self.reporters is None:
            return round_ < self._latest
        reported = self._pending[round_].keys()
        if round_ > self._last_join and len(reported) < len(self.reporters):
            return False  # every reporter is expected: the cheap answer, asked per report
        expected = {peer for peer, after in self.reporters.items() if after < round_}
        return expected <= reported

    def flush(self) -> None:
        """Emit rounds that not every peer reached (e.g. a peer stopped early)."""
        for round_ in sorted(self._pending):
            self._emit(round_)

    def _emit(self, round_: int) -> None:
        self._score()
        self._emitted = max(self._emitted, round_)
        measures = list(self._pending.pop(round_).values())
        accuracies = [m["accuracy"] for m in measures]
        line: MetricsLine = {
            "round": round_,
            "time": round(self._time.pop(round_), 6),
            "mean_accuracy": sum(accuracies) / len(accuracies),
            "min_accuracy": min(accuracies),
            "max_accuracy": max(accuracies),
            "peers_reporting": len(accuracies),
            "bytes_sent": self.bytes_sent(),
        }
        keys = sorted({key for m in measures for key in m} - {"accuracy"})
        for key in keys:
            values = [m[key] for m in measures if key in m]
            line[key] = sum(values) / len(values)
        self.lines.append(line)
        self.emit(line)
