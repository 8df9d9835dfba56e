"""The one set-up every entry point shares (`tlkit run`, `tlkit lr-find`, the tests): resolve the weights,
open the cache, load the data, build the classifier, and hand out trainers for it."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from tlkit.data import ImageData, load_data
from tlkit.errors import TlkitError
from tlkit.model import Classifier, build_classifier
from tlkit.recipe import Recipe
from tlkit.storage import ArrayStore, memory_budget
from tlkit.training.checkpoint import Checkpoints
from tlkit.training.distribute import Placement, current_placement
from tlkit.training.features import FeatureStore, feature_fingerprint
from tlkit.training.trainer import Trainer
from tlkit.weights import ResolvedWeights, resolve_weights

log = logging.getLogger(__name__)

NO_DATA = ("no data: pass --data FOLDER (one sub-folder per class), a CSV of path,label, or tfds:NAME[:SPLIT]")


@dataclass
class Session:
    """A recipe made ready to train: its weights, data, classifier, caches and placement."""

    recipe: Recipe  # with data.path set to the data actually used
    weights: ResolvedWeights
    data: ImageData
    classifier: Classifier
    features: FeatureStore
    placement: Placement
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds of weights, data and model

    @property
    def fingerprint(self) -> dict:
        """What cached features depend on apart from the cut."""
        return feature_fingerprint(self.recipe, self.weights, self.data)

    def trainer(self, recipe: Recipe | None = None, checkpoints: Checkpoints | None = None,
                log_dir: Path | None = None) -> Trainer:
        """A trainer of this session's classifier for ``recipe`` (default: the session's; another recipe may
        differ only in its stages)."""
        return Trainer(self.classifier, recipe or self.recipe, self.data, self.features, self.fingerprint,
                       self.placement, checkpoints, log_dir)


def with_data(recipe: Recipe, data: str | Path | None) -> Recipe:
    """The recipe with ``data.path`` set to ``data`` (when given); an error when neither names any data."""
    path = data or recipe.data.path
    if not path:
        raise TlkitError(NO_DATA)
    return recipe.model_copy(update={"data": recipe.data.model_copy(update={"path": str(path)})})


def prepare(recipe: Recipe, data: str | Path | None = None, *, weights_dir: str | None = None,
            cache_dir: str | Path | None = None, cache_memory: float = 0.5,
            placement: Placement | None = None) -> Session:
    """Weights first (a missing file fails before any data work), then the data (decoded images cached in
    ``cache_dir``, in RAM within ``cache_memory`` of the available memory), then the classifier, built
    under ``placement``'s strategy (default: the one in scope)."""
    recipe = with_data(recipe, data)
    placement = placement or current_placement()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    weights = resolve_weights(recipe.base, recipe.alpha, recipe.size, recipe.weights, weights_dir)
    log.info("base %s%s at %d px, weights: %s", recipe.base, f" (alpha {recipe.alpha})" if recipe.alpha else "",
             recipe.size, weights.describe())
    timings["weights"] = time.perf_counter() - started
    store = ArrayStore(cache_dir, memory_budget(cache_memory))
    images = load_data(recipe.data.path, recipe.size, recipe.data, store)
    timings["data"] = time.perf_counter() - started - timings["weights"]
    with placement.strategy.scope():
        classifier = build_classifier(recipe, len(images.class_names), weights)
    timings["model"] = time.perf_counter() - started - timings["weights"] - timings["data"]
    return Session(recipe, weights, images, classifier, FeatureStore(store), placement, timings)
