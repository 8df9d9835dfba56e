"""Refitting on train + val: whether a run does it, and what it trains (the epochs that led to the kept weights,
stage by stage, in the order the validated run took them)."""
from __future__ import annotations

import numpy as np

from tlkit.recipe import Recipe
from tlkit.training.datasets import epoch_order
from tlkit.training.stage import StagePlan
from tlkit.training.state import StageReport


def refit_choice(recipe: Recipe, plans: list[StagePlan]) -> tuple[bool, str]:
    """Whether the run refits once its stages are done, and why (``recipe.refit``; auto: when every stage that
    trains does so on cached features, where training again costs seconds)."""
    if recipe.refit is not True and recipe.refit is not False:
        trained = [plan for plan in plans if plan.spec.epochs]
        if trained and all(plan.cached for plan in trained):
            return True, "auto: every stage trained on cached features, so training again on train + val is cheap"
        return False, ("auto: a stage trains on full images, where training again would double its time; "
                       "refit=true refits anyway")
    return recipe.refit, f"refit={str(recipe.refit).lower()}"


def refit_schedule(stages: list[StageReport]) -> list[tuple[str, int]]:
    """Each finished stage's id and the epochs the refit gives it: the kept epoch's stage trains up to that epoch,
    the stage it started from up to the epoch kept when that stage ended, and so on back; a stage whose weights
    the run dropped gets 0."""
    epochs, kept = {}, stages[-1].kept if stages else None
    names = [stage.name for stage in stages]
    while kept is not None:
        epochs[kept["stage"]] = kept["stage_epoch"]
        position = names.index(kept["stage"])
        kept = stages[position - 1].kept if position else None
    return [(name, epochs.get(name, 0)) for name in names]


def refit_order(images: int, examples: int, seed: int, epoch: int) -> np.ndarray:
    """A refit epoch's order: the validated epoch's ``examples`` drawn from shuffled passes over ``images``
    (train + val), so it takes the same optimizer steps under the same learning-rate schedule."""
    return epoch_order(images, seed, epoch, -(-examples // images))[:examples]
