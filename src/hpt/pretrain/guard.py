"""The forgetting and collapse guard of a stage: keep the best checkpoint by a validation signal, roll back to it.

Every `every` steps (and at the start and the end) the guard scores the backbone with a cheap signal on
validation images (signals.py). It keeps the start, and replaces the kept checkpoint by a later one only when its
reading is above the kept one beyond noise (`keep: best`: whenever its reading is higher), so that the start is
returned unless a later step is shown better. When a reading falls below the kept one beyond noise, the stage rolls back to the kept checkpoint and stops (`on_drop: stop`), or rolls back and
goes on at a lower learning rate (`on_drop: lower-lr`, at most `max_lowerings` times). Under `budget: auto` the
stage also stops, rolled back to the kept checkpoint, once `patience` readings in a row have not improved beyond
noise on the last reading that did. At the end of a stage the backbone is always the kept checkpoint, and the
summary says which step was kept and why.

Health of the representation: every reading also measures, on the same features, the linear CKA with those of
the same images at the stage's start (the Base of the stage, its BatchNorm statistics re-estimated on the stage's
images) - 1 is the start's representation up to rotation and scale, and a stage that forgets what its start knew
moves towards the agreement of an unrelated network - and their effective rank (1 when every image maps to one
point). A reading whose agreement is below `agreement_floor`, or whose rank is below `rank_floor` times the
start's, counts as a drop (rolled back to the kept checkpoint), whatever the signal says. `auto` applies the
DEFAULT_* floors with the rank signal and none with kNN or linear, whose labels see forgetting and collapse
directly; a number applies that floor with any signal; 0 turns it off.

Without labels (`signal: rank`) nothing measures whether a step is better, only whether it is healthy: the
effective rank dips and recovers in healthy continued pretraining (docs/results.md, "Agreement with the Base"),
so it is no score to keep the best of. The rank signal keeps the latest reading that passes both floors: the
stage trains as asked and is rolled back only on evidence of collapse or forgetting. `budget: auto`, which stops
when the signal stops improving, needs a signal that measures quality (knn or linear).

"Beyond noise": for top-1 signals, the 95% paired bootstrap interval of the difference of two readings over the
same validation images excludes 0; for a mean AUROC (multi-label data, no per-image outcomes) the difference
exceeds `margin` (default: two standard errors of a top-1 reading).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from hpt.data.spec import DataSpec, parse_data_spec
from hpt.errors import HptError
from hpt.pretrain.signals import LabelledSignal, RankSignal, Reading, effective_rank

log = logging.getLogger("hpt")

#: The floors of `agreement_floor: auto` and `rank_floor: auto` with the rank signal (docs/results.md, "Agreement
#: with the Base"): the linear CKA with the start's features, and the effective rank as a share of the start's.
DEFAULT_AGREEMENT_FLOOR = 0.85
DEFAULT_RANK_FLOOR = 0.5
#: What `auto` means for each floor, as recorded in a stage's settings (so that a run made under other defaults is
#: not reused as if it had been made under these).
AUTO_FLOORS = {"agreement_floor": f"auto ({DEFAULT_AGREEMENT_FLOOR:g} with the rank signal, else 0)",
               "rank_floor": f"auto ({DEFAULT_RANK_FLOOR:g} with the rank signal, else 0)"}


@dataclass
class GuardConfig:
    """`guard:` of a stage."""

    every: int = 100  # steps between readings (the start and the end are always read)
    signal: Literal["auto", "knn", "linear", "rank"] = "auto"  # auto: knn if the data is labelled, else rank
    data: DataSpec | None = None  # data whose validation split is read; None: the stage's own data
    labels: int = 1000  # labelled training images used as the kNN memory (knn, linear)
    images: int = 1000  # images whose features give the effective rank (rank)
    on_drop: Literal["stop", "lower-lr"] = "stop"
    # beyond-noise: a later checkpoint replaces the kept one only when its reading is above the kept one beyond
    # noise (so the start is returned unless a step is shown better); best: the best reading, even within noise
    keep: Literal["beyond-noise", "best"] = "beyond-noise"
    lr_factor: float = 0.1  # on_drop lower-lr: multiply the lr by this at each roll-back
    max_lowerings: int = 2  # on_drop lower-lr: after this many roll-backs the next drop stops the stage
    patience: int = 3  # budget auto: readings without a gain beyond noise before the stage stops
    margin: float | None = None  # the noise of signals without per-image outcomes (see the module's docstring)
    bn_batches: int = 20  # batches that re-estimate the start's BatchNorm statistics before its reading
    # linear CKA with the start's features below which a reading counts as a drop; auto: DEFAULT_AGREEMENT_FLOOR
    # with the rank signal, none with knn or linear; 0: no floor
    agreement_floor: float | Literal["auto"] = "auto"
    # effective rank of the features, as a share of the start's, below which a reading counts as a collapse; auto:
    # DEFAULT_RANK_FLOOR with the rank signal, none with knn or linear; 0: no floor
    rank_floor: float | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        self.data = None if self.data is None else parse_data_spec(self.data)
        for name in ("every", "labels", "images", "patience", "bn_batches"):
            if getattr(self, name) < 1:
                raise HptError(f"guard.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.lr_factor < 1:
            raise HptError(f"guard.lr_factor must be between 0 and 1, got {self.lr_factor}")
        if self.max_lowerings < 0:
            raise HptError(f"guard.max_lowerings must be >= 0, got {self.max_lowerings}")
        if self.margin is not None and self.margin < 0:
            raise HptError(f"guard.margin must be >= 0, got {self.margin}")
        for name in ("agreement_floor", "rank_floor"):
            floor = getattr(self, name)
            if floor != "auto" and not (isinstance(floor, (int, float)) and not isinstance(floor, bool)
                                        and 0 <= floor < 1):
                raise HptError(f"guard.{name} must be auto or a number in [0, 1), got {floor!r}")


@dataclass
class GuardAction:
    """What the loop does after a reading."""

    keep: bool = False  # this checkpoint is the new best: save it as the kept state
    rollback: bool = False  # load the kept state into the model and the optimizer
    stop: bool = False  # end the stage (after the roll-back)
    lr_scale: float = 1.0  # multiply the scheduled lr by this from now on
    message: str = ""


@dataclass
class _Mark:
    step: int
    value: float
    correct: np.ndarray | None = None


@dataclass
class Guard:
    """The guard's bookkeeping and decisions; the loop saves and loads the states it asks for."""

    config: GuardConfig
    signal: Any
    auto_budget: bool = False
    history: list[tuple[int, float]] = field(default_factory=list)
    kept: _Mark | None = None
    reference: _Mark | None = None  # the last reading that improved beyond noise (budget auto)
    stale: int = 0
    lowerings: int = 0
    lr_scale: float = 1.0
    reason: str = ""
    stopped_at: int | None = None
    agreement_floor: float = 0.0  # resolved from the config by build_guard
    rank_floor: float = 0.0  # resolved from the config by build_guard
    start_features: torch.Tensor | None = None  # the signal's features at the stage's start
    agreement: list[tuple[int, float]] = field(default_factory=list)  # (step, CKA with the start) per reading
    feature_rank: list[tuple[int, float]] = field(default_factory=list)  # (step, effective rank) per reading

    def due(self, step: int, last_step: int) -> bool:
        return step % self.config.every == 0 or step == last_step

    def read(self, step: int, backbone: torch.nn.Module) -> Reading:
        reading = self.signal.read(backbone)
        self.history.append((step, reading.value))
        return reading

    def observe(self, step: int, reading: Reading, last_step: int) -> GuardAction:
        """Decide what follows a reading taken at `step` (the stage ends at `last_step`)."""
        agreement = self._agreement(step, reading)
        action = self._decide(step, reading, last_step, agreement)
        action.lr_scale = self.lr_scale
        if agreement is not None and not action.message.startswith("agreement"):
            action.message += f" (agreement with the start {agreement:.3f})"
        return action

    def _agreement(self, step: int, reading: Reading) -> float | None:
        """Linear CKA of this reading's features with the start's; None when the signal gives no features."""
        if reading.features is None:
            return None
        if self.start_features is None:
            self.start_features = reading.features.float().clone()
        from hpt.analysis.cka import linear_cka

        value = linear_cka(reading.features, self.start_features)
        value = 0.0 if np.isnan(value) else value  # constant features: nothing of the start is left
        self.agreement.append((step, round(value, 6)))
        self.feature_rank.append((step, round(effective_rank(reading.features), 4)))
        return value

    def _decide(self, step: int, reading: Reading, last_step: int, agreement: float | None) -> GuardAction:
        mark = _Mark(step, reading.value, reading.correct)
        name = self.signal.name
        if self.kept is None:
            self.kept = self.reference = mark
            return GuardAction(keep=True, message=f"{name} {reading.value:.4f} at the start")
        kept = self.kept
        unhealthy = self._unhealthy(step, agreement)
        if unhealthy:
            return self._drop(mark, kept, last_step, unhealthy)
        quality = self.signal.measures_quality
        if quality and self._beyond_noise(mark, kept) < 0:
            return self._drop(mark, kept, last_step)
        action = GuardAction()
        if not quality:  # no score to prefer one healthy step to another: the latest healthy one is kept
            better = True
        elif self.config.keep == "beyond-noise":
            better = self._beyond_noise(mark, kept) > 0
        else:
            better = reading.value > kept.value
        if better:
            self.kept, action.keep = mark, True
        if quality:  # budget auto's count of readings without a gain beyond noise
            if self.reference is not None and self._beyond_noise(mark, self.reference) > 0:
                self.reference, self.stale = mark, 0
            else:
                self.stale += 1
        kept = self.kept
        action.message = f"{name} {reading.value:.4f}" + ("; kept" if action.keep else
                                                         f"; kept: step {kept.step} ({kept.value:.4f})")
        if self.auto_budget and self.stale >= self.config.patience and step < last_step:
            self.reason = (f"budget auto: {self.stale} readings without a gain beyond noise over step "
                           f"{self.reference.step if self.reference else 0}; kept step {kept.step} "
                           f"({name} {kept.value:.4f}), {self._why_kept()}")
            return self._finish(action, step)
        if step >= last_step:
            self.reason = f"end of the budget; kept step {kept.step} ({name} {kept.value:.4f}), {self._why_kept()}"
            return self._finish(action, step)
        return action

    def _unhealthy(self, step: int, agreement: float | None) -> str:
        """Why the reading at `step` counts as a drop whatever its signal says ("" when it is healthy)."""
        if agreement is not None and agreement < self.agreement_floor:
            return (f"agreement with the start fell to {agreement:.3f} at step {step}, below guard.agreement_floor "
                    f"{self.agreement_floor:g}")
        if self.rank_floor > 0 and len(self.feature_rank) >= 2:
            start, now = self.feature_rank[0][1], self.feature_rank[-1][1]
            if now < self.rank_floor * start:
                return (f"the effective rank of the features fell to {now:.1f} at step {step}, below "
                        f"guard.rank_floor {self.rank_floor:g} x the start's {start:.1f} (a collapse)")
        return ""

    def _why_kept(self) -> str:
        if not self.signal.measures_quality:
            return "the last reading above the guard's floors"
        if self.config.keep == "best":
            return "the best reading"
        return "no later reading above it beyond noise"

    def _drop(self, mark: _Mark, kept: _Mark, last_step: int, fell: str = "") -> GuardAction:
        name = self.signal.name
        fell = fell or (f"{name} fell to {mark.value:.4f} at step {mark.step}, below step {kept.step}'s "
                        f"{kept.value:.4f} beyond noise")
        lower = self.config.on_drop == "lower-lr" and self.lowerings < self.config.max_lowerings
        if lower and mark.step < last_step:
            self.lowerings += 1
            self.lr_scale *= self.config.lr_factor
            self.stale = 0
            return GuardAction(rollback=True,
                               message=f"{fell}: rolled back to step {kept.step}, lr x{self.lr_scale:g} from here")
        self.reason = f"{fell}: rolled back to step {kept.step} and stopped"
        return self._finish(GuardAction(), mark.step)  # its message: the reason

    def _finish(self, action: GuardAction, step: int) -> GuardAction:
        assert self.kept is not None
        action.stop = True
        action.rollback = self.kept.step != step
        self.stopped_at = step
        action.message = f"{action.message}. {self.reason}" if action.message else self.reason
        return action

    def _beyond_noise(self, a: _Mark, b: _Mark) -> int:
        """+1 if reading a is above b beyond noise, -1 if below, 0 if within noise."""
        if a.correct is not None and b.correct is not None and len(a.correct) == len(b.correct):
            from hpt.eval.paired import paired_difference_interval

            interval = paired_difference_interval(a.correct, b.correct)
            return 1 if interval.low > 0 else -1 if interval.high < 0 else 0
        margin = self.margin(b.value)
        return 1 if a.value > b.value + margin else -1 if a.value < b.value - margin else 0

    def margin(self, value: float) -> float:
        if self.config.margin is not None:
            return self.config.margin
        n = self.signal.val_images
        return 2.0 * float(np.sqrt(max(value * (1.0 - value), 1e-6) / max(n, 1)))

    def record(self) -> dict[str, Any]:
        """What summary.json, the log and the report say about the guard."""
        kept = self.kept
        return {"signal": self.signal.name, "every": self.config.every, "history": [list(h) for h in self.history],
                "kept_step": kept.step if kept else None, "kept_value": kept.value if kept else None,
                "reason": self.reason, "rolled_back": bool(kept and self.stopped_at is not None
                                                           and kept.step != self.stopped_at),
                "stopped_at": self.stopped_at, "lowerings": self.lowerings, "lr_scale": self.lr_scale,
                "agreement": [list(a) for a in self.agreement], "agreement_floor": self.agreement_floor,
                "feature_rank": [list(r) for r in self.feature_rank], "rank_floor": self.rank_floor}

    def state(self) -> dict[str, Any]:
        """The guard's part of the resume state (plain values and tensors: loadable with weights_only)."""
        def mark(m: _Mark | None) -> dict[str, Any] | None:
            if m is None:
                return None
            correct = None if m.correct is None else torch.from_numpy(m.correct.astype(np.bool_))
            return {"step": m.step, "value": m.value, "correct": correct}

        return {"history": [list(h) for h in self.history], "kept": mark(self.kept), "reference": mark(self.reference),
                "stale": self.stale, "lowerings": self.lowerings, "lr_scale": self.lr_scale,
                "agreement": [list(a) for a in self.agreement], "start_features": self.start_features,
                "feature_rank": [list(r) for r in self.feature_rank]}

    def load_state(self, state: dict[str, Any]) -> None:
        def mark(d: dict[str, Any] | None) -> _Mark | None:
            if d is None:
                return None
            correct = None if d["correct"] is None else d["correct"].numpy().astype(bool)
            return _Mark(int(d["step"]), float(d["value"]), correct)

        self.history = [(int(s), float(v)) for s, v in state["history"]]
        self.kept, self.reference = mark(state["kept"]), mark(state["reference"])
        self.stale, self.lowerings, self.lr_scale = int(state["stale"]), int(state["lowerings"]), float(
            state["lr_scale"])
        self.agreement = [(int(s), float(v)) for s, v in state.get("agreement", [])]
        self.feature_rank = [(int(s), float(v)) for s, v in state.get("feature_rank", [])]
        self.start_features = state.get("start_features")


def build_guard(config: GuardConfig, stage_data: DataSpec, device: torch.device, auto_budget: bool) -> Guard:
    """The guard of a stage, its signal chosen (signal auto: knn where the data has labels, else rank)."""
    data = config.data or stage_data
    kind = config.signal
    if kind == "auto":
        kind = "knn" if _labelled(data) else "rank"
    signal = RankSignal(data, config.images, device) if kind == "rank" else LabelledSignal(data, kind, config.labels,
                                                                                             device)
    if auto_budget and not signal.measures_quality:
        raise HptError("budget: auto stops a stage when its guard's signal stops improving, and the rank signal of "
                       f"unlabelled data ({data}) measures health, not quality: give the stage a fixed budget "
                       "(--steps), or a labelled guard.data with signal knn or linear")

    def resolved(floor: float | str, default: float) -> float:
        return float(default if floor == "auto" and kind == "rank" else 0.0 if floor == "auto" else floor)

    return Guard(config, signal, auto_budget, agreement_floor=resolved(config.agreement_floor, DEFAULT_AGREEMENT_FLOOR),
                 rank_floor=resolved(config.rank_floor, DEFAULT_RANK_FLOOR))


def _labelled(data: DataSpec) -> bool:
    from hpt.data import open_any

    try:
        dataset = open_any(data)
    except HptError:
        return False
    return getattr(dataset, "labels", None) is not None
