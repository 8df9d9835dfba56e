"""`tlkit lr-find`: fastai's learning-rate range test. Train one batch per step while the rate grows
exponentially from ``start`` to ``end``, record the loss, suggest a rate, plot loss against rate.

The sweep trains exactly what the stage trains, through the same step, on cached features when the stage
allows, else on full images; stages before it train first as in `tlkit run`. The model is left as it was found.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tlkit.errors import TlkitError
from tlkit.recipe import Recipe
from tlkit.runfolder import RunFolder
from tlkit.session import Session, prepare
from tlkit.training.datasets import as_dataset
from tlkit.training.stage import stage_id
from tlkit.ui import ensure_logging

log = logging.getLogger(__name__)

RULE = "minimum of the smoothed loss / 10"
SMOOTHING = 0.9  # exponential moving average, run forwards and backwards so the curve does not lag the rate
DIVERGED = 4.0  # stop once the (running) smoothed loss exceeds 4x its minimum, as fastai does


@dataclass
class Sweep:
    """The rates tried, the losses seen, the suggestion, and how long it took."""

    stage: str
    mode: str  # "cached ..." or "full forward"
    learning_rates: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    rule: str
    stopped: str
    sweep_seconds: float
    feature_seconds: float
    pretrain_seconds: float  # training the stages before the swept one


def running_average(losses) -> np.ndarray:
    """Bias-corrected exponential moving average: what the sweep knows at each step."""
    average, out = 0.0, []
    for i, loss in enumerate(losses):
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        out.append(average / (1 - SMOOTHING ** (i + 1)))
    return np.array(out)


def smooth(losses) -> np.ndarray:
    """The running average run forwards, then backwards: smooth, and centred on each rate (no lag)."""
    return running_average(running_average(np.asarray(losses))[::-1])[::-1]


def suggest(learning_rates, smoothed) -> float:
    """A tenth of the rate at which the smoothed loss is lowest (Smith's and fastai v1's rule).

    The steepest-slope rule (fastai's 'steep') proved unstable on noisy small-batch sweeps of real
    photos; the minimum is broad and a tenth of it lands where training is fast and stable.
    """
    lowest = int(np.argmin(smoothed))
    if learning_rates[lowest] / 10 < learning_rates[0]:
        log.warning("the loss was lowest within a decade of the first rate; sweep from a lower --start")
    return float(max(learning_rates[lowest] / 10, learning_rates[0]))


def check_options(recipe: Recipe, stage_number: int, start: float, end: float, steps: int) -> None:
    if not 0 < start < end:
        raise TlkitError(f"lr-find needs 0 < --start < --end; received start={start}, end={end}")
    if steps < 10:
        raise TlkitError(f"lr-find needs --steps of at least 10; received {steps}")
    if not 1 <= stage_number <= len(recipe.stages):
        raise TlkitError(f"--stage {stage_number}: the recipe has {len(recipe.stages)} stage(s), counted from 1")


def sweep(session: Session, stage_number: int = 1, start: float = 1e-7, end: float = 1.0,
          steps: int = 100) -> Sweep:
    """Run the range test for stage ``stage_number`` (counted from 1) of the session's recipe, through the
    training step `tlkit run` uses (same loss, class weights and loss scaling); the model is left as found."""
    recipe, classifier = session.recipe, session.classifier
    check_options(recipe, stage_number, start, end, steps)
    index = stage_number - 1
    stage = recipe.stages[index]
    name = stage_id(index, stage.kind)

    started = time.perf_counter()
    if index:
        log.info("training stage(s) 1-%d first, as tlkit run would", index)
        session.trainer(recipe.model_copy(update={"stages": recipe.stages[:index]})).run()
    pretrain_seconds = time.perf_counter() - started

    constant = stage.model_copy(update={"epochs": max(1, stage.epochs), "schedule": "constant", "warmup_epochs": 0.0})
    trainer = session.trainer(recipe.model_copy(update={"stages": (constant,)}))
    trainer.prepare_features()
    plan = trainer.plans[0]
    setup = trainer.setup(plan)
    train = as_dataset(trainer.train_batches(plan, 0))
    saved = classifier.model.get_weights()

    log.info("lr-find %s (%s): %d steps from %.1e to %.1e", name, plan.mode, steps, start, end)
    rates = start * (end / start) ** (np.arange(steps) / (steps - 1))
    losses, stopped = [], f"completed {steps} steps"
    swept = time.perf_counter()
    batches = iter(train.repeat())
    for step, rate in enumerate(rates):
        setup.optimizer.learning_rate = float(rate)
        loss = setup.loop.train_step(*next(batches))
        losses.append(loss)
        average = running_average(losses)
        if not math.isfinite(loss) or average[-1] > DIVERGED * average.min():
            stopped = f"stopped at step {step + 1}: the loss diverged (smoothed loss above {DIVERGED:g}x its minimum)"
            break
    sweep_seconds = time.perf_counter() - swept
    classifier.model.set_weights(saved)

    finite = np.isfinite(losses)
    rates, losses = rates[:len(losses)][finite], np.asarray(losses)[finite]
    smoothed = smooth(losses)
    suggestion = suggest(rates, smoothed)
    log.info("lr-find %s: %s in %.1fs; suggested learning rate %.2e", name, stopped, sweep_seconds, suggestion)
    return Sweep(name, plan.mode, rates.tolist(), losses.tolist(), smoothed.tolist(), suggestion, RULE, stopped,
                 round(sweep_seconds, 3), round(trainer.feature_seconds, 3), round(pretrain_seconds, 3))


def plot(result: Sweep, path: Path) -> None:
    """Loss against learning rate (log scale), raw and smoothed, with the suggestion marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(result.learning_rates, result.losses, color="0.75", linewidth=1, label="loss per batch")
    axes.plot(result.learning_rates, result.smoothed, color="tab:blue", linewidth=2, label="smoothed loss")
    lowest = int(np.argmin(result.smoothed))
    axes.plot([result.learning_rates[lowest]], [result.smoothed[lowest]], "v", color="0.3", markersize=8,
              label=f"lowest smoothed loss at {result.learning_rates[lowest]:.2e}")
    at = np.interp(np.log(result.suggestion), np.log(result.learning_rates), result.smoothed)
    axes.axvline(result.suggestion, color="tab:red", linestyle="--", linewidth=1)
    axes.plot([result.suggestion], [at], "o", color="tab:red", markersize=9,
              label=f"suggested {result.suggestion:.2e}")
    axes.set_xscale("log")
    low, high = min(result.smoothed), max(result.smoothed)
    axes.set_ylim(low - 0.1 * (high - low), min(high, 3 * result.smoothed[0]) + 0.1 * (high - low))
    axes.set_xlabel("learning rate (log scale)")
    axes.set_ylabel("training loss")
    axes.set_title(f"lr-find, stage {result.stage} ({result.mode}): suggested {result.suggestion:.2e}\n"
                   f"rule: {result.rule}", fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()
    figure.savefig(path)


def lr_find(recipe: Recipe, out: str | Path, *, data: str | None = None, weights_dir: str | None = None,
            cache_dir: str | None = None, cache_memory: float = 0.5, stage: int = 1, start: float = 1e-7,
            end: float = 1.0, steps: int = 100) -> Sweep:
    """Set up as `tlkit run` does, sweep, and write lr_find.png, .csv and .json to ``out``; progress is logged as
    the CLI shows it (unless the program set up logging)."""
    ensure_logging()
    check_options(recipe, stage, start, end, steps)
    session = prepare(recipe, data, weights_dir=weights_dir, cache_dir=cache_dir, cache_memory=cache_memory)
    result = sweep(session, stage, start, end, steps)

    folder = RunFolder(out)
    folder.path.mkdir(parents=True, exist_ok=True)
    plot(result, folder.path / "lr_find.png")
    folder.write_csv(folder.path / "lr_find.csv", [
        {"learning_rate": rate, "loss": loss, "smoothed_loss": smoothed}
        for rate, loss, smoothed in zip(result.learning_rates, result.losses, result.smoothed)])
    folder.write_csv(folder.skipped_file, [{"path": str(p), "reason": r} for p, r in session.data.skipped],
                     ["path", "reason"])
    summary = {k: v for k, v in asdict(result).items() if k not in ("learning_rates", "losses", "smoothed")}
    folder.write_json(folder.path / "lr_find.json", {**summary, "start": start, "end": end, "steps": steps,
                                                     "weights": session.weights.describe()})
    return result
