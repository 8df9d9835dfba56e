"""Checkpoints for resume, taken at the end of an epoch: each written to a private folder, published by rename,
then made current by an atomic rename of a pointer file, so a run killed at any instant leaves the previous or the
new one, whole."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from tlkit.storage import atomic_dir, write_text_atomic
from tlkit.training.state import TrainState


def _save_arrays(path: Path, arrays) -> None:
    np.savez(path, *[np.asarray(a) for a in arrays])


def _load_arrays(path: Path) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


CHECKPOINT_SECONDS = 10.0  # default --checkpoint-every: a kill loses at most this much training, plus an epoch


class Checkpoints:
    """``RUN/checkpoint/``: ``latest`` names the current ``epoch-N`` folder (state, weights, optimizer, best).
    One is due at the end of every stage and of any epoch that ends ``every`` seconds or more after the last one
    (0: every epoch): a checkpoint reads and writes every variable, which costs more than an epoch on cached
    features."""

    def __init__(self, run_dir: Path, every: float = CHECKPOINT_SECONDS):
        self.folder = Path(run_dir) / "checkpoint"
        self.pointer = self.folder / "latest"
        self.every = every
        self._saved_at = time.monotonic()
        self._saved_best = None  # the kept weights the last checkpoint wrote (a new list each time they change)

    def exists(self) -> bool:
        return self.pointer.is_file()

    def due(self, stage_done: bool) -> bool:
        """Whether the epoch just ended gets a checkpoint."""
        return stage_done or time.monotonic() - self._saved_at >= self.every

    def save(self, state: TrainState, model_weights, optimizer_variables, best_weights) -> None:
        name, best_changed = f"epoch-{state.global_epoch}", best_weights is not self._saved_best
        previous = self._current()
        with atomic_dir(self.folder / name, replace=True) as tmp:
            _save_arrays(tmp / "model.npz", model_weights)
            _save_arrays(tmp / "optimizer.npz", optimizer_variables)
            if best_weights is not None:
                if not best_changed and previous and (previous / "best.npz").is_file():
                    os.link(previous / "best.npz", tmp / "best.npz")  # unchanged: share the file
                else:
                    _save_arrays(tmp / "best.npz", best_weights)
            (tmp / "state.json").write_text(json.dumps(state.to_dict(), indent=2))
        write_text_atomic(self.pointer, name)  # the commit point
        self._saved_at, self._saved_best = time.monotonic(), best_weights
        for old in self.folder.glob("epoch-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def _current(self) -> Path | None:
        if not self.exists():
            return None
        return self.folder / self.pointer.read_text().strip()

    def load(self) -> dict | None:
        """The latest checkpoint as a dict: state (a dict of TrainState fields), model, optimizer, best (arrays
        or None)."""
        folder = self._current()
        if folder is None:
            return None
        best = folder / "best.npz"
        return {"state": json.loads((folder / "state.json").read_text()),
                "model": _load_arrays(folder / "model.npz"),
                "optimizer": _load_arrays(folder / "optimizer.npz"),
                "best": _load_arrays(best) if best.is_file() else None}

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
