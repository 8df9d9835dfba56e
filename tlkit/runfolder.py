"""The run folder: one place that knows its file names, and reads and writes them."""
from __future__ import annotations

import csv
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

from tlkit.errors import TlkitError
from tlkit.images import decode_all
from tlkit.recipe import Recipe
from tlkit.storage import write_json_atomic

log = logging.getLogger(__name__)

_HELD: set[Path] = set()  # run folders whose lock this process holds
CONFIDENCE_FILE = "confidence.json"  # in a run folder and beside every export


class RunFolder:
    """Files of one run: recipe, classes, split, skipped files, duplicates, history, metrics, model, exports,
    report."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.recipe_file = self.path / "recipe.json"
        self.classes_file = self.path / "classes.json"
        self.split_file = self.path / "split.csv"
        self.skipped_file = self.path / "skipped.csv"
        self.duplicates_file = self.path / "duplicates.csv"  # duplicate groups and the split each went to
        self.history_file = self.path / "history.csv"
        self.metrics_file = self.path / "metrics.json"
        self.run_file = self.path / "run.json"
        self.interruptions_file = self.path / "interruptions.json"
        self.model_file = self.path / "model.keras"
        self.stages_dir = self.path / "stages"  # per stage: parameters.txt and TensorBoard logs
        self.export_dir = self.path / "export"
        self.evaluation_file = self.path / "evaluation.json"
        self.report_file = self.path / "report.html"
        self.curves_file = self.path / "training_curves.png"
        self.confusion_file = self.path / "confusion_matrix.png"
        self.misclassified_file = self.path / "misclassified.png"
        self.checkpoint_dir = self.path / "checkpoint"
        self.evaluations_dir = self.path / "evaluations"
        self.lock_file = self.path / "run.lock"  # while a process writes the run: its pid, host and command
        self.confidence_file = self.path / CONFIDENCE_FILE  # calibration and threshold, fitted on validation
        self.reliability_file = self.path / "reliability.png"
        self.coverage_file = self.path / "accuracy_coverage.png"
        self.explanations_file = self.path / "explanations.png"  # Grad-CAM of the worst mistakes

    @classmethod
    def open(cls, path: str | Path) -> "RunFolder":
        folder = cls(path)
        if not folder.model_file.is_file():
            raise TlkitError(f"{folder.path} is not a finished tlkit run folder (no {folder.model_file.name}); "
                             "pass the --out folder of a completed `tlkit run`")
        return folder

    def recipe(self) -> Recipe:
        return Recipe.from_json(self.recipe_file.read_text(), run_folder=True)

    def refitted(self) -> bool:
        """Whether model.keras was refit on train + val after the stages (run.json says so)."""
        if not self.run_file.is_file():
            return False
        return bool(json.loads(self.run_file.read_text()).get("choices", {}).get("refit", {}).get("done"))

    def class_names(self) -> list[str]:
        return json.loads(self.classes_file.read_text())

    def load_model(self):
        """The trained Keras model, uncompiled (what predictions and exports need)."""
        import keras
        import tlkit.model  # noqa: F401  registers tlkit's preprocessing layer
        if self.recipe().base.startswith("keras_hub:"):
            from tlkit.hub import require_keras_hub
            require_keras_hub()  # registers KerasHub's layers
        return keras.saving.load_model(self.model_file, compile=False)

    def split_pixels(self, split: str, size: int, what: str, count: int | None = None, seed: int = 0) -> np.ndarray:
        """The images of one split (split.csv) as uint8 pixels, all or ``count`` drawn at random with ``seed``;
        unreadable ones are logged and left out."""
        paths = [Path(r["path"]) for r in self.read_csv(self.split_file) if r["split"] == split]
        if count is not None:
            paths = [paths[i] for i in np.random.default_rng(seed).permutation(len(paths))[:count]]
        pixels, failures, _ = decode_all(paths, size, what)
        for path, reason in failures:
            log.warning("%s skips %s: %s", what, path, reason)
        if not len(pixels):
            raise TlkitError(f"no readable {split} images in {self.split_file} ({len(paths)} listed); the {what} "
                             "needs them (restore the data folder the run was trained on)")
        return pixels

    def write_json(self, file: Path, value) -> None:
        write_json_atomic(file, value)

    @staticmethod
    def write_csv(file: Path, rows: list[dict], columns: list[str] | None = None) -> None:
        """A CSV in UTF-8; file names that are not valid UTF-8 keep their bytes, so they read back the same."""
        columns = columns or list(dict.fromkeys(k for row in rows for k in row))
        with open(file, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            writer = csv.DictWriter(f, columns, restval="")
            writer.writeheader()
            writer.writerows(rows)

    @staticmethod
    def read_csv(file: Path) -> list[dict]:
        with open(file, newline="", encoding="utf-8", errors="surrogateescape") as f:
            return list(csv.DictReader(f))

    # === One writer at a time ===

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run folder for this process: a second process stops at once with a one-line error naming
        the holder (pid, host, command). The lock is an advisory ``flock`` on ``run.lock``, which the system
        releases when its process dies, however it dies, so a killed run's leftover file is simply taken over.
        Nested use in one process is allowed."""
        key = self.path.absolute()
        if key in _HELD:
            yield
            return
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = self._acquire()
        except OSError as error:
            raise TlkitError(f"cannot write the run folder {self.path}: {error.strerror or error}; "
                             "pass --out with a writable folder") from None
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            self.lock_file.unlink(missing_ok=True)
            os.close(fd)
            if created and not any(self.path.iterdir()):
                self.path.rmdir()  # a run that stopped before writing anything leaves nothing behind

    def _acquire(self) -> int:
        while True:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            holder = _read_lock(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                # held; or the file system has no flock, and then a live process on this host is the test
                if error.errno in (errno.EAGAIN, errno.EACCES) or _alive(holder):
                    os.close(fd)
                    raise TlkitError(f"{self.path} is in use by another tlkit run ({_describe(holder)}); wait for "
                                     "it to finish, or pass another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_file).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # its holder removed the file between our open and flock: start again
                os.close(fd)
                continue
            if holder:
                log.warning("%s: taking over the lock of a run that is no longer running (%s): it was killed or "
                            "crashed", self.path, _describe(holder))
            me = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
            return fd

    def clear(self) -> None:
        """Delete what a run wrote into the folder (nothing else in it), for ``tlkit run --force``."""
        for path in (self.recipe_file, self.classes_file, self.split_file, self.skipped_file, self.history_file,
                     self.metrics_file, self.run_file, self.interruptions_file, self.model_file, self.evaluation_file,
                     self.report_file, self.curves_file, self.confusion_file, self.misclassified_file):
            path.unlink(missing_ok=True)
        for folder in (self.stages_dir, self.export_dir, self.checkpoint_dir, self.evaluations_dir):
            shutil.rmtree(folder, ignore_errors=True)


def _read_lock(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}


def _alive(holder: dict) -> bool:
    """Whether the process a lock names still runs (only knowable on this host; elsewhere, assume it does)."""
    if not holder.get("pid"):
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _describe(holder: dict) -> str:
    if not holder:
        return "pid unknown"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}: {holder.get('command')}"
