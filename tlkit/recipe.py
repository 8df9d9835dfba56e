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
import json
import pkgutil
import traceback
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from tlkit.backbones import BACKBONES, Backbone
from tlkit.errors import TlkitError


SCRATCH_EPOCH_FACTOR = 2  # from scratch: this many times the epochs of the stages (see from_scratch())


def get_backbone(name: str) -> Backbone:
    """The record of a base: built in, registered, or ``keras_hub:PRESET`` (a preset name or a local folder)."""
    if name.startswith("keras_hub:"):
        from tlkit.hub import hub_backbone
        return hub_backbone(name.removeprefix("keras_hub:"))
    if name not in BACKBONES:
        raise TlkitError(f"unknown base {name!r}; valid choices: {', '.join(sorted(BACKBONES))}, or keras_hub:PRESET "
                         "(a base registered with register_backbone is known once its module is imported)")
    return BACKBONES[name]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Head(_Spec):
    """The new classifier on top of the base."""

    pooling: Literal["avg", "max", "flatten"] = "avg"
    hidden: tuple[Annotated[int, Field(gt=0)], ...] = ()
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    activation: Literal["softmax", "sigmoid"] = "softmax"  # sigmoid: one unit, two classes only
    # L2 penalty on the head's kernels, added to the mean loss; auto: cross-validated on the training images'
    # pooled features (tlkit.training.regularization), else 1 / (2 x training images), scikit-learn's C=1
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
    # CSV sources (a header is recognised by name: path, file, filename, image, id, ...; label, class, category, ...)
    path_column: Optional[str] = None  # the column with each image's path or id (None: recognised by name)
    label_column: Optional[str] = None  # the label column (None: recognised by name, or the one other column)
    image_dir: Optional[str] = None  # the folder paths and ids are relative to (None: the CSV's folder)
    suffix: str = ""  # appended to every path or id that does not end with it, e.g. ".jpg" for Kaggle-style ids
    # duplicate photos are kept in one split (each group in the split of its first member): near (exact
    # copies and near-duplicates), exact (identical decoded pixels only) or ignore
    duplicates: Literal["near", "exact", "ignore"] = "near"
    near_duplicate: float = Field(0.9, gt=0.0, le=1.0)  # aligned detail correlation that makes two images one photo

    @model_validator(mode="after")
    def _fractions_leave_training_data(self):
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% for training")
        return self


class _Stage(_Spec):
    epochs: int = Field(ge=0)  # 0 skips the stage
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


class FromScratch(_Stage):
    """The whole network trains from random init, BatchNorm layers with batch statistics: what a run without
    pretrained weights does (see :func:`from_scratch`)."""

    kind: Literal["from_scratch"] = "from_scratch"
    learning_rate: float = Field(1e-3, gt=0.0)


Stage = Annotated[Union[FeatureExtraction, FineTune, FromScratch], Field(discriminator="kind")]


class Trust(_Spec):
    """What the end of a run fits on the validation split so that answers can be acted on: a temperature
    (calibrated probabilities) and a threshold on a confidence score below which the answer is ``unknown_label``."""

    # auto: the score that separates better on validation (from the ood images when given, else correct from
    # misclassified); max_probability: the calibrated top probability; class_mean_similarity: the cosine
    # similarity of the pooled base features to their mean over the training images of the class answered
    score: Literal["auto", "max_probability", "class_mean_similarity"] = "auto"
    max_accuracy_drop: float = Field(0.01, ge=0.0, lt=1.0)  # the highest threshold costing at most this accuracy
    coverage: Optional[float] = Field(None, gt=0.0, le=1.0)  # instead: answer this fraction of validation images
    unknown_label: str = Field("unknown", min_length=1)
    ood: Optional[str] = None  # a folder of images of none of the classes, to measure how the scores separate


class Recipe(_Spec):
    """A complete, declarative description of a transfer-learning run."""

    description: str
    base: str  # a built-in base, one registered with register_backbone, or keras_hub:PRESET
    alpha: Optional[float] = None  # width multiplier of MobileNet bases
    image_size: Optional[int] = Field(None, ge=32)  # None: the base's default
    weights: str = "imagenet"  # imagenet (the base's pretrained file) | none | auto | path to a weights file
    # frozen: every BatchNorm layer stays non-trainable, so Keras runs it in inference mode and its moving
    # statistics never move (Keras 3 ignores `base(x, training=False)` for trainable BN layers nested in a
    # functional base); LayerNorm (no statistics) keeps its scale and offset. train: BN layers in unfrozen blocks
    # train with batch statistics, LayerNorm there trains its scale and offset.
    batchnorm: Literal["frozen", "train"] = "frozen"
    head: Head = Head()
    augment: Augment = Augment()
    data: Data = Data()
    stages: tuple[Stage, ...] = (FeatureExtraction(epochs=5),)
    batch_size: int = Field(32, ge=1)
    seed: int = Field(1337, ge=0, lt=2**32)
    cache: bool = True  # compute the frozen part of the base once (exact); False: full forward every step
    # what a run without pretrained weights (weights=none, or auto falling back) trains: from_scratch replaces
    # the stages with one FromScratch stage (see from_scratch()); as_recipe trains the stages as written on the
    # random base (a baseline that shows what pretraining gives)
    random_init: Literal["from_scratch", "as_recipe"] = "from_scratch"
    augment_replicas: int = Field(0, ge=0)  # cached augmented copies per image when augmentation is not just a flip
    # after the stages: train again from the starting weights on train + val, the epochs each stage kept step for
    # step, and keep that model (the val figures, calibration and threshold stay those of the validated model).
    # auto: when every stage trained on cached features, where it takes seconds; true / false: always / never
    refit: Union[Literal["auto"], bool] = "auto"
    trust: Trust = Trust()

    @field_validator("base")
    @classmethod
    def _known_base(cls, value, info: ValidationInfo):
        if value.startswith("keras_hub:") or (info.context or {}).get("run_folder"):
            return value  # a preset is read when the base is built; a run folder's recipe ran already
        try:
            get_backbone(value)
        except TlkitError as error:
            raise ValueError(str(error)) from None
        return value

    @field_validator("weights", mode="before")
    @classmethod
    def _weights_choice(cls, value):
        value = "none" if value is None else value  # as in Keras, weights=None means random init
        choices = ("imagenet", "none", "auto")
        if isinstance(value, str) and value not in choices and not value.endswith((".h5", ".keras")):
            raise ValueError("weights must be imagenet, none, auto or a path to a .h5 or .keras weights file; "
                             f"received: {value!r}")
        return value

    @model_validator(mode="after")
    def _base_options(self):
        if self.base in BACKBONES:
            BACKBONES[self.base].check(self.alpha, self.image_size)
        elif self.base.startswith("keras_hub:") and self.alpha is not None:
            raise ValueError(f"base {self.base} takes no alpha; received: alpha={self.alpha}")
        if not self.stages:
            raise ValueError("a recipe needs at least one stage")
        if any(isinstance(stage, FromScratch) for stage in self.stages) and self.batchnorm != "train":
            raise ValueError("a from_scratch stage needs batchnorm=train: BatchNorm statistics of a random "
                             "network mean nothing")
        if not any(stage.epochs for stage in self.stages):
            raise ValueError("every stage has epochs=0, so nothing would train; epochs=0 skips a stage, and at "
                             "least one stage needs 1 or more")
        return self

    @property
    def backbone(self) -> Backbone:
        """The base's record."""
        return get_backbone(self.base)

    @property
    def size(self) -> int:
        """The image side length actually used."""
        return self.image_size or self.backbone.default_size

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str, run_folder: bool = False) -> "Recipe":
        """``run_folder``: a finished run's recipe, valid even where its registered base is not registered."""
        return cls.model_validate_json(text, context={"run_folder": run_folder})


def is_from_scratch(recipe: Recipe) -> bool:
    return any(isinstance(stage, FromScratch) for stage in recipe.stages)


def from_scratch(recipe: Recipe) -> Recipe:
    """``recipe`` as a network without pretrained weights must train: every layer from the first step, so its
    stages become one :class:`FromScratch` stage of twice as many epochs as they add up to (a random network
    learns far slower than a pretrained one adapts), Adam at 2e-3, early stopping off (the validation loss of a
    young network is noisy; the best epoch is still the one kept), BatchNorm with batch statistics; weights
    become "none" (recipe.json records what ran)."""
    epochs = SCRATCH_EPOCH_FACTOR * sum(stage.epochs for stage in recipe.stages)
    stage = FromScratch(epochs=epochs, learning_rate=2e-3, patience=None)
    tree = {**recipe.model_dump(), "weights": "none", "batchnorm": "train", "stages": [stage.model_dump()]}
    return Recipe.model_validate(tree)


def _bundled_names() -> list[str]:
    """The modules of ``tlkit.recipes`` (loaded like any recipe: by name, at run time)."""
    package = importlib.import_module("tlkit.recipes")
    return sorted(info.name for info in pkgutil.iter_modules(package.__path__) if not info.name.startswith("_"))


def bundled_recipes() -> dict[str, Recipe]:
    """Every recipe shipped in ``recipes/``, by module name."""
    return {name: load_recipe(name) for name in _bundled_names()}


def load_recipe(name_or_path: str) -> Recipe:
    """Load a bundled recipe by name, a recipe module by file path, or a run folder's resolved recipe.json.

    Any error in a recipe file is one line, ``FILE:LINE: message``."""
    path = Path(name_or_path)
    if path.suffix in (".json", ".py") and not path.is_file():
        raise TlkitError(f"recipe file not found: {path}")
    if path.suffix == ".json":
        try:
            tree = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            line = getattr(error, "lineno", 1)
            raise TlkitError(f"{path}:{line}: not a JSON recipe ({getattr(error, 'msg', error)}); write it with "
                             "`tlkit run` (its recipe.json) or as a .py recipe module") from None
        try:
            return Recipe.model_validate(tree)
        except ValidationError as error:
            raise TlkitError(f"recipe {path}: {validation_message(error)}") from None
    if path.suffix == ".py":
        spec = importlib.util.spec_from_file_location(f"tlkit_user_recipe_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as error:  # the recipe is the user's code: any error is theirs, reported on one line
            raise TlkitError(_code_error(path, error)) from None
    else:
        try:
            module = importlib.import_module(f"tlkit.recipes.{name_or_path}")
        except ModuleNotFoundError:
            raise TlkitError(f"unknown recipe {name_or_path!r}; bundled recipes: {', '.join(_bundled_names())} "
                             "(or pass a path to a .py recipe module)") from None
    recipe = getattr(module, "recipe", None)
    if not isinstance(recipe, Recipe):
        raise TlkitError(f"recipe module {name_or_path} must define `recipe = tlkit.Recipe(...)`")
    return recipe


def _code_error(path: Path, error: Exception) -> str:
    """``FILE:LINE: message`` for an error raised while running a recipe module: a syntax error where it is,
    anything else at the recipe's line that raised it."""
    if isinstance(error, SyntaxError):
        where = path if not error.filename or Path(error.filename).resolve() == path.resolve() else error.filename
        return f"{where}:{error.lineno}: {type(error).__name__}: {error.msg}"
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    line = frames[-1].lineno if frames else 1
    if isinstance(error, ValidationError):
        message = validation_message(error)
    else:
        text = str(error).strip().splitlines()
        message = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    return f"{path}:{line}: {message}"


def validation_message(error: ValidationError) -> str:
    """Pydantic's report squeezed onto one line: `field: problem (received: value)`."""
    parts = []
    for e in error.errors():
        where = dotted_key([p for p in e["loc"] if p not in ("feature_extraction", "fine_tune", "from_scratch")])
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            message = "unknown field"
        received = "" if e["type"] in ("value_error", "missing") else f" (received: {e.get('input')!r})"
        parts.append(f"{where + ': ' if where else ''}{message}{received}")
    return "; ".join(parts)


def dotted_key(path) -> str:
    """A field's path as ``--set`` spells it, stages counted from 1 as everywhere else: ``stage2.epochs``."""
    parts = []
    for part in path:
        if isinstance(part, int) and parts and parts[-1] == "stages":
            parts[-1] = f"stage{part + 1}"
        else:
            parts.append(str(part))
    return ".".join(parts)


def field_path(key: str) -> list:
    """The path into a recipe's JSON tree of a dotted key: ``stage2.epochs`` -> ``["stages", 1, "epochs"]``."""
    path = []
    for part in key.split("."):
        number = part.removeprefix("stage")
        path += ["stages", int(number) - 1] if part.startswith("stage") and number.isdigit() else [part]
    return path
