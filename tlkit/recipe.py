"""Recipes: typed, validated declarations of a run, and how to load them (:mod:`tlkit.overrides` changes them).

A recipe module in ``recipes/`` defines a module-level ``recipe = Recipe(...)``. Nothing in a
recipe executes training; :func:`tlkit.run` does.

>>> from tlkit import Recipe, Head, FeatureExtraction, FineTune
>>> r = Recipe(description="demo", base="mobilenet_v2", alpha=0.35, image_size=96,
...            stages=(FeatureExtraction(epochs=2), FineTune(epochs=2, unfreeze_blocks=2)))
>>> r.stages[1].unfreeze_blocks
2
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tlkit.backbones import BACKBONES
from tlkit.errors import TlkitError


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Head(_Spec):
    """The new classifier on top of the base."""

    pooling: Literal["avg", "max", "flatten"] = "avg"
    hidden: tuple[Annotated[int, Field(gt=0)], ...] = ()
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    activation: Literal["softmax", "sigmoid"] = "softmax"  # sigmoid: one unit, two classes only
    # L2 penalty on the head's kernels, added to the mean loss; auto: 1 / (2 x training images), the strength
    # of scikit-learn's LogisticRegression default (C=1); 0 turns it off
    l2: Union[Literal["auto"], Annotated[float, Field(ge=0.0)]] = "auto"


class Augment(_Spec):
    """Training-time augmentation, as Keras preprocessing layers inside the model (off at inference)."""

    flip: Optional[Literal["horizontal", "vertical", "horizontal_and_vertical"]] = None
    rotation: float = Field(0.0, ge=0.0, le=0.5)  # fraction of a full turn
    zoom: float = Field(0.0, ge=0.0, lt=1.0)
    translation: float = Field(0.0, ge=0.0, lt=1.0)
    contrast: float = Field(0.0, ge=0.0, lt=1.0)
    brightness: float = Field(0.0, ge=0.0, lt=1.0)

    @property
    def only_flip(self) -> bool:
        return self.flip is not None and not any(
            (self.rotation, self.zoom, self.translation, self.contrast, self.brightness))

    @property
    def active(self) -> bool:
        return self.flip is not None or any(
            (self.rotation, self.zoom, self.translation, self.contrast, self.brightness))


class Data(_Spec):
    """Where images come from, how they are split, and how classes are weighted."""

    path: Optional[str] = None  # class folders, train/val(/test) folders, a CSV of path,label, or tfds:NAME[:SPLIT]
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # used when the source has no validation split
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # used when the source has no test split
    split_seed: int = 0  # salts the path hash that ranks each class's files for the split; 0: the path alone
    class_weight: Union[None, Literal["auto"], dict[str, Annotated[float, Field(gt=0.0)]]] = None  # None: unweighted
    min_per_class: int = Field(5, ge=1)  # classes with fewer usable images get a warning

    @model_validator(mode="after")
    def _fractions_leave_training_data(self):
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% for training")
        return self


class _Stage(_Spec):
    epochs: int = Field(ge=0)
    learning_rate: float = Field(gt=0.0)
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"  # sgd: momentum 0.9
    patience: Optional[int] = Field(3, ge=1)  # early stopping on val_loss; None turns it off
    # each epoch repeats the training set until the stage takes at least this many optimizer steps
    min_steps: int = Field(0, ge=0)
    weight_decay: Optional[float] = Field(None, ge=0.0)  # decoupled; None: the optimizer's default (adamw 0.004)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    # constant | plateau: x plateau_factor after plateau_patience epochs without a lower val_loss |
    # cosine: to 0 over the stage, after warmup_epochs of linear warmup from 0 | step: x step_factor every step_every
    schedule: Literal["constant", "plateau", "cosine", "step"] = "constant"
    warmup_epochs: float = Field(0.0, ge=0.0)
    plateau_patience: int = Field(2, ge=1)
    plateau_factor: float = Field(0.1, gt=0.0, lt=1.0)
    step_every: int = Field(3, ge=1)
    step_factor: float = Field(0.1, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _schedule_options(self):
        if self.warmup_epochs and self.schedule != "cosine":
            raise ValueError(f"warmup_epochs applies to schedule=cosine; received schedule={self.schedule}")
        if self.warmup_epochs and self.warmup_epochs >= self.epochs > 0:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be fewer than epochs ({self.epochs})")
        if self.schedule == "plateau" and self.patience and self.plateau_patience >= self.patience:
            raise ValueError(f"plateau_patience ({self.plateau_patience}) must be below patience "
                             f"({self.patience}), or early stopping ends the stage before the rate drops")
        return self


class FeatureExtraction(_Stage):
    """Stage 1: the whole base frozen, only the head trains."""

    kind: Literal["feature_extraction"] = "feature_extraction"
    learning_rate: float = Field(1e-3, gt=0.0)
    min_steps: int = Field(3000, ge=0)  # the head to convergence: on cached features, seconds for any folder


class FineTune(_Stage):
    """Stage 2: the top of the base unfrozen (by layer name, top blocks or fraction), low learning rate."""

    kind: Literal["fine_tune"] = "fine_tune"
    learning_rate: float = Field(1e-5, gt=0.0)
    unfreeze_from: Optional[str] = None
    unfreeze_blocks: Optional[int] = Field(None, ge=1)
    unfreeze_fraction: Optional[float] = Field(None, gt=0.0, le=1.0)
    base_learning_rate_ratio: float = Field(1.0, gt=0.0, le=1.0)  # unfrozen base layers: learning_rate x this

    @model_validator(mode="after")
    def _one_unfreeze_rule(self):
        given = [n for n in ("unfreeze_from", "unfreeze_blocks", "unfreeze_fraction") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("a FineTune stage needs exactly one of unfreeze_from, unfreeze_blocks, "
                             f"unfreeze_fraction; received: {given or 'none'}")
        return self


Stage = Annotated[Union[FeatureExtraction, FineTune], Field(discriminator="kind")]


class Recipe(_Spec):
    """A complete, declarative description of a transfer-learning run."""

    description: str
    base: str
    alpha: Optional[float] = None  # width multiplier of MobileNet bases
    image_size: Optional[int] = Field(None, ge=32)  # None: the base's default
    weights: str = "imagenet"  # imagenet | none | auto | path to a weights file
    # frozen: every BatchNorm layer stays non-trainable, so Keras runs it in inference mode and its moving
    # statistics never move (Keras 3 ignores `base(x, training=False)` for trainable BN layers nested in a
    # functional base). train: BN layers in unfrozen blocks train with batch statistics.
    batchnorm: Literal["frozen", "train"] = "frozen"
    head: Head = Head()
    augment: Augment = Augment()
    data: Data = Data()
    stages: tuple[Stage, ...] = (FeatureExtraction(epochs=5),)
    batch_size: int = Field(32, ge=1)
    seed: int = 1337
    cache: bool = True  # compute the frozen part of the base once (exact); False: full forward every step
    augment_replicas: int = Field(0, ge=0)  # cached augmented copies per image when augmentation is not just a flip
    # after the validated run, train again on train + val with the epochs it kept, and save and export that model
    refit: bool = True

    @field_validator("base")
    @classmethod
    def _known_base(cls, value):
        if value not in BACKBONES:
            raise ValueError(f"unknown base {value!r}; valid choices: {', '.join(sorted(BACKBONES))}")
        return value

    @field_validator("weights", mode="before")
    @classmethod
    def _weights_choice(cls, value):
        value = "none" if value is None else value  # as in Keras, weights=None means random init
        if isinstance(value, str) and value not in ("imagenet", "none", "auto") and not value.endswith(".h5"):
            raise ValueError("weights must be imagenet, none, auto or a path to a .h5 weights file; "
                             f"received: {value!r}")
        return value

    @model_validator(mode="after")
    def _base_options(self):
        BACKBONES[self.base].check(self.alpha, self.image_size)
        if not self.stages:
            raise ValueError("a recipe needs at least one stage")
        return self

    @property
    def size(self) -> int:
        """The image side length actually used."""
        return self.image_size or BACKBONES[self.base].default_size

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        return cls.model_validate_json(text)


def _bundled_names() -> list[str]:
    """The modules of ``tlkit.recipes`` (loaded like any recipe: by name, at run time)."""
    package = importlib.import_module("tlkit.recipes")
    return sorted(info.name for info in pkgutil.iter_modules(package.__path__) if not info.name.startswith("_"))


def bundled_recipes() -> dict[str, Recipe]:
    """Every recipe shipped in ``recipes/``, by module name."""
    return {name: load_recipe(name) for name in _bundled_names()}


def load_recipe(name_or_path: str) -> Recipe:
    """Load a bundled recipe by name, a recipe module by file path, or a run folder's resolved recipe.json."""
    path = Path(name_or_path)
    try:
        if path.suffix == ".json":
            if not path.is_file():
                raise TlkitError(f"recipe file not found: {path}")
            return Recipe.from_json(path.read_text())
        if path.suffix == ".py":
            if not path.is_file():
                raise TlkitError(f"recipe file not found: {path}")
            spec = importlib.util.spec_from_file_location(f"tlkit_user_recipe_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            try:
                module = importlib.import_module(f"tlkit.recipes.{name_or_path}")
            except ModuleNotFoundError:
                raise TlkitError(f"unknown recipe {name_or_path!r}; bundled recipes: {', '.join(_bundled_names())} "
                                 "(or pass a path to a .py recipe module)") from None
    except ValidationError as error:
        raise TlkitError(f"recipe {name_or_path}: {validation_message(error)}") from None
    recipe = getattr(module, "recipe", None)
    if not isinstance(recipe, Recipe):
        raise TlkitError(f"recipe module {name_or_path} must define `recipe = tlkit.Recipe(...)`")
    return recipe


def validation_message(error: ValidationError) -> str:
    """Pydantic's report squeezed onto one line: `field: problem (received: value)`."""
    parts = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"] if p not in ("feature_extraction", "fine_tune"))
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            message = "unknown field"
        received = "" if e["type"] in ("value_error", "missing") else f" (received: {e.get('input')!r})"
        parts.append(f"{where + ': ' if where else ''}{message}{received}")
    return "; ".join(parts)
