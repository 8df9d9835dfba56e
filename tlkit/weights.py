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

from tlkit.backbones import BACKBONES
from tlkit.errors import TlkitError

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
    """Find the weights file for a recipe's base, downloading ImageNet files only as a last resort."""
    if weights_dir:
        check_weights_dir(weights_dir)
    if weights == "none":
        return ResolvedWeights(weights, None)
    if weights not in ("imagenet", "auto"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise TlkitError(f"weights file not found: {path} "
                             "(use --weights imagenet, none, auto or an existing .h5 file)")
        return ResolvedWeights(weights, path)
    files = BACKBONES[base].weight_files(alpha, size)
    dirs = search_dirs(weights_dir)
    for file in files:
        for folder in dirs:
            if (folder / file.name).is_file():
                return ResolvedWeights(weights, folder / file.name)
    try:
        path = _download(files[0])
        return ResolvedWeights(weights, path)
    except Exception as error:  # any download failure means: not obtainable here
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".strip()
    looked = ", ".join(str(d) for d in dirs)
    wanted = " or ".join(f.name for f in files)
    message = (f"ImageNet weights for {base} not found: looked for {wanted} in {looked}; download failed "
               f"({reason}). Fix: copy the file into one of those folders, pass --weights-dir DIR or set "
               "TLKIT_WEIGHTS_DIR, or use --weights none")
    if weights == "imagenet":
        raise TlkitError(message)
    warning = f"weights=auto fell back to RANDOM INIT: {message}"
    log.warning(warning)
    return ResolvedWeights(weights, None, warning)


def _download(file) -> Path:
    """Keras' download; its lines (the URL, progress) go to stderr: stdout carries only a command's answers."""
    import keras
    with contextlib.redirect_stdout(sys.stderr):
        return Path(keras.utils.get_file(file.name, file.url, cache_subdir="models", file_hash=file.md5))


def load_into(model, weights: ResolvedWeights) -> None:
    """Load resolved weights into a freshly built base, with a one-line error if they do not fit."""
    if weights.path is None:
        return
    try:
        model.load_weights(str(weights.path))
    except Exception as error:
        raise TlkitError(f"weights file {weights.path} does not fit base {model.name}: "
                         f"{str(error).splitlines()[0]}") from None
