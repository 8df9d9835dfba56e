"""A stage's plan: which base layers train, on what (cached features or full images) and why, under the one
stage id that the console, history.csv, TensorBoard folders, run.json and the report all use."""
from __future__ import annotations

from dataclasses import dataclass

from tlkit.model import cut_index
from tlkit.recipe import FeatureExtraction, FineTune, FromScratch, Recipe
from tlkit.training.features import Replicas

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

    @property
    def id(self) -> str:
        return stage_id(self.index, self.spec.kind)

    @property
    def folder_name(self) -> str:
        return self.id.replace(":", "-")

    @property
    def cached(self) -> bool:
        return self.mode != FULL_FORWARD


def plan_stages(recipe: Recipe, base, replicas: Replicas | None) -> list[StagePlan]:
    """The plan of every stage of ``recipe`` on ``base``; ``replicas`` None means every step runs the base."""
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
        if not any(layer.weights for layer in base.layers[:cut]):
            plans.append(StagePlan(index, spec, cut, first, FULL_FORWARD, "nothing is frozen, so nothing to cache"))
        else:
            plans.append(StagePlan(index, spec, cut, first, mode, reason))
    return plans
