"""Where training stands (saved with every checkpoint, so a resumed run continues exactly), and what the
stages did."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields


@dataclass
class StageReport:
    """What one stage did, for the console and the run folder."""

    name: str
    mode: str
    reason: str
    first_trainable_layer: str | None
    trainable_params: int
    total_params: int
    parameters: dict = field(default_factory=dict)  # tlkit.training.summary.ParameterSummary
    epochs_run: int = 0
    seconds: float = 0.0
    steps_per_epoch: int = 0
    passes_per_epoch: int = 1  # passes over the training set per epoch (min_steps on cached features)
    l2: float = 0.0  # the head's L2 penalty
    kept: dict | None = None  # the run's kept epoch when the stage ended (TrainState.best): the next stage starts there


@dataclass
class TrainState:
    """Counters of the current stage and of the whole run, the kept epoch so far, early-stopping and
    reduce-on-plateau counters, the history rows and the finished stages.

    An epoch is as good as the best when its validation loss is within one standard error (over the
    validation images) of the lowest so far: the latest such epoch is kept, and early stopping counts the
    epochs that are not. A small validation split, whose losses differ by noise, thus keeps training."""

    stage: int = 0  # index of the current stage in recipe.stages
    stage_epoch: int = 0  # epochs done in the current stage
    global_epoch: int = 0  # epochs done in all stages
    stage_done: bool = False
    best: dict | None = None  # stage, epoch, stage_epoch, val_loss, val_accuracy of the kept epoch
    best_loss: float = math.inf  # the lowest val_loss in any stage
    best_se: float = 0.0  # its standard error
    stage_best: float = math.inf  # lowest val_loss of the current stage (early stopping)
    stage_se: float = 0.0
    wait: int = 0  # epochs of this stage since one was as good as its best
    plateau: list | None = None  # reduce-on-plateau's wait, best and cooldown counters
    history: list[dict] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)  # StageReport of each finished stage

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainState":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def done_with(self, index: int) -> bool:
        """Whether the stage at ``index`` finished before (in a run being resumed)."""
        return index < self.stage or (index == self.stage and self.stage_done)

    def start_stage(self, index: int) -> None:
        self.stage, self.stage_epoch, self.stage_done = index, 0, False
        self.stage_best, self.stage_se, self.wait, self.plateau = math.inf, 0.0, 0, None

    def record_epoch(self, stage: str, logs: dict, seconds: float) -> bool:
        """Add an epoch's history row and update the kept epoch and the early-stopping counters; return
        whether this epoch is kept (then its weights are)."""
        self.global_epoch += 1
        self.history.append({"stage": stage, "epoch": self.global_epoch, **logs, "seconds": round(seconds, 3)})
        loss, se = logs["val_loss"], logs.get("val_loss_se", 0.0)
        if loss < self.best_loss:
            self.best_loss, self.best_se = loss, se
        keep = loss <= self.best_loss + self.best_se
        if keep:
            self.best = {"stage": stage, "epoch": self.global_epoch, "stage_epoch": self.stage_epoch + 1,
                         "val_loss": loss, "val_accuracy": logs["val_accuracy"]}
        if loss < self.stage_best:
            self.stage_best, self.stage_se = loss, se
        self.wait = 0 if loss <= self.stage_best + self.stage_se else self.wait + 1
        return keep

    def patience_ran_out(self, patience: int | None) -> bool:
        return bool(patience) and self.wait >= patience

    def stage_seconds(self, stage: str) -> float:
        return round(sum(row["seconds"] for row in self.history if row["stage"] == stage), 3)


@dataclass
class Training:
    """The outcome of all stages: per-epoch history rows, stage reports, where the best weights came from."""

    history: list[dict] = field(default_factory=list)
    stages: list[StageReport] = field(default_factory=list)
    best: dict | None = None
    feature_seconds: float = 0.0
    head_l2: dict | None = None  # the head's L2 penalty as head.l2=auto chose it (Trainer.choose_l2)
