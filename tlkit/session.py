"""The one set-up every entry point shares (`tlkit run`, `tlkit lr-find`, the tests): resolve the weights,
open the cache, load the data, build the classifier, and hand out trainers for it."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlkit.data import ImageData, keep_groups_together, load_data
from tlkit.duplicates import Duplicates, find_duplicates
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
SHOWN_CONFLICTS = 10  # duplicate groups with conflicting labels logged one by one (all are in run.json)
NEAR_SEARCH_LIMIT = 20_000  # images up to which `tlkit run` looks for near-duplicates (the search is quadratic)


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
    duplicates: Duplicates | None = None  # what duplicate search found (positions in data.rows() before grouping)

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

    def pooled_features(self) -> np.ndarray:
        """Every image's base output, average-pooled, in ``data.rows()`` order: the head stage's cache when
        its head average-pools (see :meth:`Trainer.pooled_features`)."""
        return self.trainer().pooled_features()[np.concatenate(list(self.data.catalogue()[1].values()))]

    def find_duplicates(self, near: bool) -> Duplicates:
        """Exact duplicates of the data's images (positions in ``data.rows()``) and, with ``near``,
        near-duplicates, found on :meth:`pooled_features` (training reuses them)."""
        from threadpoolctl import threadpool_limits

        features = self.pooled_features() if near else None
        with threadpool_limits(1):  # many small products: one thread is faster, and leaves TensorFlow alone
            return find_duplicates(self.data.rows(), self.recipe.data.near_duplicate, features)

    def keep_duplicates_together(self, limit: int = NEAR_SEARCH_LIMIT) -> None:
        """Find duplicates (near-duplicates too when ``data.duplicates`` is ``near`` and there are at most
        ``limit`` images) and move every group into the split of its first member."""
        started, spec, count = time.perf_counter(), self.recipe.data, sum(self.data.counts().values())
        self.duplicates = self.find_duplicates(spec.duplicates == "near" and count <= limit)
        self.data = keep_groups_together(self.data, self.duplicates, spec, self.features.arrays)
        if spec.duplicates == "near" and count > limit:
            self.data.warnings.append(f"near-duplicate search skipped for {count} images (`tlkit run` checks up "
                                      f"to {limit}): exact duplicates only; `tlkit data audit` checks any number")
        summary = self.data.duplicates.summary()
        log.info("duplicates (%s): %d group(s) of %d images; %d spanned splits and are now in one (%d image(s) "
                 "moved); %d with conflicting labels (%.1fs)", summary["method"], summary["groups"],
                 summary["images"], summary["merged"], len(summary["moved"]), len(summary["conflicts"]),
                 time.perf_counter() - started)
        for conflict in summary["conflicts"][:SHOWN_CONFLICTS]:
            log.warning("duplicates with different labels: %s",
                        ", ".join(f"{p} ({label})" for p, label in zip(conflict["paths"], conflict["labels"])))


def with_data(recipe: Recipe, data: str | Path | None) -> Recipe:
    """The recipe with ``data.path`` set to ``data`` (when given); an error when neither names any data."""
    path = data or recipe.data.path
    if not path:
        raise TlkitError(NO_DATA)
    return recipe.model_copy(update={"data": recipe.data.model_copy(update={"path": str(path)})})


def prepare(recipe: Recipe, data: str | Path | None = None, *, weights_dir: str | None = None,
            cache_dir: str | Path | None = None, cache_memory: float = 0.5,
            placement: Placement | None = None, group_duplicates: bool = True) -> Session:
    """Weights first (a missing file fails before any data work), then the data (decoded images cached in
    ``cache_dir``, in RAM within ``cache_memory`` of the available memory), then the classifier, built
    under ``placement``'s strategy (default: the one in scope); then, with ``group_duplicates`` and unless
    ``data.duplicates`` is ``ignore``, duplicate groups are moved into one split each."""
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
    session = Session(recipe, weights, images, classifier, FeatureStore(store), placement, timings)
    if group_duplicates and recipe.data.duplicates != "ignore":
        session.keep_duplicates_together()
        timings["duplicates"] = time.perf_counter() - started - sum(timings.values())
    return session
