"""The one set-up every entry point shares (`tlkit run`, `tlkit lr-find`, the tests): resolve the weights,
open the cache, load the data, build the classifier, and hand out trainers for it."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlkit.data import ImageData, keep_groups_together, load_data
from tlkit.duplicates import DETAIL_SIZE, Duplicates, find_duplicates
from tlkit.errors import TlkitError
from tlkit.model import Classifier, build_classifier
from tlkit.recipe import Recipe, from_scratch, is_from_scratch
from tlkit.sources import list_source
from tlkit.storage import ArrayStore, memory_budget
from tlkit.training.checkpoint import Checkpoints
from tlkit.training.distribute import Placement, current_placement
from tlkit.training.features import FeatureStore, choose_replicas, feature_batch, feature_fingerprint
from tlkit.training.stage import plan_stages
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
        trainer = self.trainer()
        return trainer.pooled_features()[np.concatenate(list(trainer.rows.values()))]

    def find_duplicates(self, near: bool) -> Duplicates:
        """Exact duplicates of the data's images (positions in ``data.rows()``) and, with ``near``,
        near-duplicates, found on :meth:`pooled_features` (training reuses them)."""
        from threadpoolctl import threadpool_limits

        features = self.pooled_features() if near else None
        with threadpool_limits(1):  # many small products: one thread is faster, and leaves TensorFlow alone
            return find_duplicates(self.data.rows(), self.recipe.data.near_duplicate, features)

    def keep_duplicates_together(self, limit: int = NEAR_SEARCH_LIMIT) -> None:
        """Find duplicates (near-duplicates too when ``data.duplicates`` is ``near``, there are at most ``limit``
        images and they are decoded at DETAIL_SIZE px or more) and move every group into the split of its first
        member."""
        started, spec, count = time.perf_counter(), self.recipe.data, sum(self.data.counts().values())
        skip = None
        if spec.duplicates == "near" and count > limit:
            skip = f"near-duplicate search skipped for {count} images (`tlkit run` checks up to {limit})"
        elif spec.duplicates == "near" and self.recipe.size < DETAIL_SIZE:
            skip = (f"near-duplicate search skipped at {self.recipe.size} px (the pixel check needs {DETAIL_SIZE} px "
                    "or more)")
        self.duplicates = self.find_duplicates(spec.duplicates == "near" and skip is None)
        self.data = keep_groups_together(self.data, self.duplicates, spec, self.features.arrays)
        if skip:
            self.data.warnings.append(f"{skip}: exact duplicates only; `tlkit data audit` looks for near ones")
        summary = self.data.duplicates.summary()
        log.info("duplicates (%s): %d group(s) of %d images; %d spanned splits and are now in one (%d image(s) "
                 "moved); %d with conflicting labels (%.1fs)", summary["method"], summary["groups"],
                 summary["images"], summary["merged"], len(summary["moved"]), len(summary["conflicts"]),
                 time.perf_counter() - started)
        for conflict in summary["conflicts"][:SHOWN_CONFLICTS]:
            log.warning("duplicates with different labels: %s",
                        ", ".join(f"{p} ({label})" for p, label in zip(conflict["paths"], conflict["labels"])))


def with_data(recipe: Recipe, data: str | Path | None) -> Recipe:
    """The recipe with ``data.path`` set to ``data`` (when given) and local paths made absolute, so recipe.json
    names the same files from any folder; an error when neither names any data."""
    path = data or recipe.data.path
    if not path:
        raise TlkitError(NO_DATA)
    update = {"path": str(path) if str(path).startswith("tfds:") else str(Path(path).expanduser().absolute())}
    if recipe.data.image_dir:
        update["image_dir"] = str(Path(recipe.data.image_dir).expanduser().absolute())
    return recipe.model_copy(update={"data": recipe.data.model_copy(update=update)})


def for_weights(recipe: Recipe, weights: ResolvedWeights) -> Recipe:
    """The recipe as it trains with ``weights`` (what recipe.json records). Without pretrained weights (random
    init) a frozen base would give the head nothing to learn, so unless ``random_init="as_recipe"`` the whole
    network trains from scratch (:func:`tlkit.recipe.from_scratch`), loudly; either way ``weights`` is "none"."""
    if weights.path is not None:
        return recipe
    if recipe.random_init == "as_recipe" or is_from_scratch(recipe):
        return recipe.model_copy(update={"weights": "none"})
    adapted = from_scratch(recipe)
    stage = adapted.stages[0]
    log.warning("no pretrained weights (random init): training the whole network from scratch instead of the "
                "recipe's stages: %d epochs, %s at %g on a %s schedule, BatchNorm with batch statistics "
                "(random_init=as_recipe keeps the recipe's stages)", stage.epochs, stage.optimizer,
                stage.learning_rate, stage.schedule)
    return adapted


def prepare(recipe: Recipe, data: str | Path | None = None, *, weights: ResolvedWeights | None = None,
            weights_dir: str | None = None, cache_dir: str | Path | None = None, cache_memory: float = 0.5,
            placement: Placement | None = None, group_duplicates: bool = True) -> Session:
    """Weights first (a missing file fails before any data work; ``weights`` if already resolved), then the
    data's listing and the classifier, then a check that training fits in memory, then the decoded images
    (cached in ``cache_dir``, in RAM within ``cache_memory`` of the available memory). The classifier is built
    under ``placement``'s strategy (default: the one in scope). Without pretrained weights the recipe becomes
    :func:`for_weights`'s. Then, with ``group_duplicates`` and unless ``data.duplicates`` is ``ignore``,
    duplicate groups are moved into one split each."""
    recipe = with_data(recipe, data)
    placement = placement or current_placement()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    weights = weights or resolve_weights(recipe.base, recipe.alpha, recipe.size, recipe.weights, weights_dir)
    recipe = for_weights(recipe, weights)
    log.info("base %s%s at %d px, weights: %s", recipe.base, f" (alpha {recipe.alpha})" if recipe.alpha else "",
             recipe.size, weights.describe())
    timings["weights"] = time.perf_counter() - started
    listing = list_source(recipe.data.path, recipe.data)
    with placement.strategy.scope():
        classifier = build_classifier(recipe, len(listing.class_names), weights)
    check_memory(recipe, classifier)
    timings["model"] = time.perf_counter() - started - timings["weights"]
    store = ArrayStore(cache_dir, memory_budget(cache_memory))
    images = load_data(listing, recipe.size, recipe.data, store)
    timings["data"] = time.perf_counter() - started - timings["weights"] - timings["model"]
    session = Session(recipe, weights, images, classifier, FeatureStore(store), placement, timings)
    if group_duplicates and recipe.data.duplicates != "ignore":
        session.keep_duplicates_together()
        timings["duplicates"] = time.perf_counter() - started - sum(timings.values())
    return session


def check_memory(recipe: Recipe, classifier: Classifier) -> None:
    """Fail before decoding any image when a stage cannot fit in the memory available. A step that trains layers
    keeps their outputs (float32) for the backward pass: the whole base's for a batch when every step runs it,
    else those above the cut; computing cached features runs the frozen part forward, about two layers'
    outputs at a time for a feature batch."""
    base = classifier.base
    sizes = [4 * sum(math.prod(t.shape[1:]) for t in _outputs(layer)) for layer in base.layers]
    plans = plan_stages(recipe, base, choose_replicas(recipe, classifier.augment))
    steps = [recipe.batch_size * sum(sizes[0 if not plan.cached else plan.cut:]) for plan in plans if plan.spec.epochs]
    features = feature_batch(recipe.size) * 2 * max(sizes) if any(p.cached for p in plans) else 0
    needed, available = max(steps + [features]), memory_budget(1.0)
    if needed > available:
        raise TlkitError(f"--image-size {recipe.size} with --batch-size {recipe.batch_size}: training {recipe.base} "
                         f"needs about {needed / 2**30:,.1f} GB of memory (the layer outputs a step keeps) and "
                         f"{available / 2**30:,.1f} GB is available; use a smaller --image-size (the base's default "
                         f"is {recipe.backbone.default_size}) or --batch-size")


def _outputs(layer) -> list:
    output = layer.output
    return list(output) if isinstance(output, (list, tuple)) else [output]
