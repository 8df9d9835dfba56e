"""Where a base's weights come from: ImageNet files (Keras cache, a weights folder, then download),
random init, or a file the user names. Resolved before any data work, so a missing file fails fast."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tlkit.backbones import Backbone, WeightFile
from tlkit.errors import TlkitError
from tlkit.recipe import get_backbone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedWeights:
    """What the run will load: ``path`` is None for random init; ``warning`` says why, for ``auto``."""

    requested: str
    path: Optional[Path]
    warning: Optional[str] = None

    def describe(self) -> str:
        return str(self.path) if self.path else "random init"


def keras_models_dir() -> Path:
    """Keras' own cache folder for application weights (``$KERAS_HOME/models``)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "models"


def search_dirs(weights_dir: Optional[str] = None) -> list[Path]:
    """The folders searched for ImageNet files, in order; a folder named that does not exist is an error."""
    dirs = [keras_models_dir()]
    for extra, name in ((weights_dir, "--weights-dir"), (os.environ.get("TLKIT_WEIGHTS_DIR"), "TLKIT_WEIGHTS_DIR")):
        if extra:
            check_weights_dir(extra, name)
            dirs.append(Path(extra).expanduser())
    return dirs


def check_weights_dir(folder: str, name: str = "--weights-dir") -> None:
    if not Path(folder).expanduser().is_dir():
        raise TlkitError(f"{name} {folder}: no such folder; name the folder that holds the Keras ImageNet .h5 "
                         f"files (or leave {name} out)")


def resolve_weights(base: str, alpha: Optional[float], size: int, weights: str,
                    weights_dir: Optional[str] = None) -> ResolvedWeights:
    """Find the weights file for a recipe's base, downloading pretrained files only as a last resort."""
    if weights_dir:
        check_weights_dir(weights_dir)
    if weights == "none":
        return ResolvedWeights(weights, None)
    if weights not in ("imagenet", "auto"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise TlkitError(f"weights file not found: {path} (use --weights imagenet, none, auto or an existing "
                             ".h5 or .keras file)")
        return ResolvedWeights(weights, path)
    backbone = get_backbone(base)
    found = backbone.find_file(alpha, size, search_dirs(weights_dir))
    if found is not None:
        return ResolvedWeights(weights, found)
    known = backbone.weight_files(alpha, size)
    files = [f for f in known if f.url]
    try:
        if not files:  # a local file, not there (or none registered)
            raise FileNotFoundError(" or ".join(f"{f.path} missing" for f in known) or "none registered")
        return ResolvedWeights(weights, _download(files[0]))
    except Exception as error:  # any download failure means: not obtainable here
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".strip()
    message = _not_found(base, files, reason, weights_dir)
    if weights == "imagenet":
        raise TlkitError(message)
    warning = f"weights=auto fell back to RANDOM INIT: {message}"
    log.warning(warning)
    return ResolvedWeights(weights, None, warning)


def _not_found(base: str, files: list[WeightFile], reason: str, weights_dir: Optional[str]) -> str:
    """The one line saying which pretrained file is missing and how to provide it."""
    if base.startswith("keras_hub:"):
        return (f"weights of {base} not found ({reason}). Fix: load the preset once where you are online, pass a "
                "local preset folder with its model.weights.h5 (keras_hub:DIR), or use --weights none")
    if not files:
        return (f"pretrained weights of {base} not found ({reason}). Fix: register it with an existing weights "
                "file (register_backbone(..., weights=FILE)), or use --weights none")
    looked = ", ".join(str(d) for d in search_dirs(weights_dir))
    return (f"ImageNet weights for {base} not found: looked for {' or '.join(f.name for f in files)} in {looked}; "
            f"download failed ({reason}). Fix: copy the file into one of those folders, pass --weights-dir DIR or "
            "set TLKIT_WEIGHTS_DIR, or use --weights none")


def _download(file: WeightFile) -> Path:
    """Keras' (or KerasHub's) download; its lines (the URL, progress) go to stderr: stdout carries only a
    command's answers."""
    with contextlib.redirect_stdout(sys.stderr):
        if not file.url.startswith(("https://", "http://")):  # a KerasHub preset handle
            from tlkit.hub import fetch
            return fetch(file.url, file.name)
        import keras
        log.info("downloading %s", file.url)
        return Path(keras.utils.get_file(file.name, file.url, cache_subdir="models", file_hash=file.hash))


def load_into(model, weights: ResolvedWeights, backbone: Optional[Backbone] = None) -> None:
    """Load resolved weights into a freshly built base, with a one-line error if they do not fit; then let
    the base's record adjust what its files need (``Backbone.after_load``)."""
    if weights.path is None:
        return
    try:
        model.load_weights(str(weights.path))
    except Exception as error:
        raise TlkitError(f"weights file {weights.path} does not fit base {model.name}: "
                         f"{str(error).splitlines()[0]}") from None
    if backbone is not None and backbone.after_load is not None:
        backbone.after_load(model)
