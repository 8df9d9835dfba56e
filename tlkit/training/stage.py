"""A stage's plan: which base layers train, on what (cached features or full images) and why, under the one
stage id that the console, history.csv, TensorBoard folders, run.json and the report all use."""
from __future__ import annotations

import math
from dataclasses import dataclass

from tlkit.model import cut_index
from tlkit.recipe import FeatureExtraction, FineTune, FromScratch, Recipe
from tlkit.training.features import Replicas
from tlkit.training.optim import batches_per_epoch

FULL_FORWARD = "full forward"


def stage_id(index: int, kind: str) -> str:
    """The id of the stage at ``index`` (counted from 0 in the recipe): ``"2:fine_tune"``, numbered from 1."""
    return f"{index + 1}:{kind}"


def stage_title(id_: str) -> str:
    """``"2:fine_tune"`` as people read it: ``"stage 2: fine tune"``."""
    number, _, kind = id_.partition(":")
    return f"stage {number}: {kind.replace('_', ' ')}"


@dataclass(frozen=True)
class StagePlan:
    """What one stage of a recipe does before it runs."""

    index: int  # position in recipe.stages
    spec: FeatureExtraction | FineTune | FromScratch
    cut: int  # index in base.layers of the first layer that trains; len(base.layers): none does
    first_trainable_layer: str | None
    mode: str  # "cached", "cached xN" or "full forward"
    reason: str
    passes: int = 1  # passes over the training set per epoch
    steps_per_epoch: int = 1

    @property
    def id(self) -> str:
        return stage_id(self.index, self.spec.kind)

    @property
    def folder_name(self) -> str:
        return self.id.replace(":", "-")

    @property
    def cached(self) -> bool:
        return self.mode != FULL_FORWARD


def passes_per_epoch(spec, train_images: int, batch_size: int) -> int:
    """Passes over the training set per epoch: as many as give the stage's epochs at least ``spec.min_steps``
    optimizer steps, at least one. The passes of an epoch are batched as one sequence, so an epoch of P passes
    takes ceil(P x images / batch_size) steps. (On cached features a few thousand steps of the head take
    seconds; a plain epoch of a small folder is one or two.)"""
    if not spec.min_steps or not spec.epochs or not train_images:
        return 1
    return max(1, math.ceil(math.ceil(spec.min_steps / spec.epochs) * batch_size / train_images))


def plan_stages(recipe: Recipe, base, replicas: Replicas | None, train_images: int = 0) -> list[StagePlan]:
    """The plan of every stage of ``recipe`` on ``base`` for ``train_images`` training images (0: not known yet,
    one pass per epoch); ``replicas`` None means every step runs the base."""
    if replicas is not None:
        mode, reason = replicas.name, replicas.reason
    else:
        mode = FULL_FORWARD
        reason = ("cache disabled (cache=false / --no-cache)" if not recipe.cache else
                  "augmentation other than flips; set augment_replicas=K to cache K augmented copies")
    plans = []
    for index, spec in enumerate(recipe.stages):
        cut = cut_index(recipe, base, spec)
        first = base.layers[cut].name if cut < len(base.layers) else None
        passes = passes_per_epoch(spec, train_images, recipe.batch_size)
        steps = batches_per_epoch(passes * train_images, recipe.batch_size)
        if not any(layer.weights for layer in base.layers[:cut]):
            plans.append(StagePlan(index, spec, cut, first, FULL_FORWARD, "nothing is frozen, so nothing to cache",
                                   passes, steps))
        else:
            plans.append(StagePlan(index, spec, cut, first, mode, reason, passes, steps))
    return plans
