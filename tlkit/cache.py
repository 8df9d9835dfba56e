"""Compute the frozen part once: cut the base where training starts, cache the tensors that cross the
cut (in RAM within a memory budget, else memory-mapped from disk), and train only what is above it."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from tlkit.progress import progress
from tlkit.recipe import Augment, Recipe

if TYPE_CHECKING:
    from tlkit.data import ImageData
    from tlkit.weights import ResolvedWeights

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    root = os.environ.get("TLKIT_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tlkit"
    return Path(root).expanduser() / "features"


def feature_batch(size: int) -> int:
    """Images per forward pass while computing features: 128 up to 160 px (faster than Keras' default 32 on
    CPUs), fewer at larger sizes so activations stay small."""
    return int(np.clip(2 ** int(np.log2(128 * 160 * 160 / size ** 2)), 16, 128))


def memory_budget(fraction: float = 0.5) -> int:
    """Bytes of RAM the caches may hold: a fraction of the memory available now."""
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return int(available * fraction)


def feature_fingerprint(recipe: Recipe, weights: ResolvedWeights, data: ImageData) -> dict:
    """What cached features depend on apart from the cut: files, base, weights, image size."""
    if weights.path:
        stat = weights.path.stat()
        weight_id = [str(weights.path.resolve()), stat.st_size, stat.st_mtime_ns]
    else:
        weight_id = f"random init, seed {recipe.seed}"
    return {**data.fingerprint(), "base": recipe.base, "alpha": recipe.alpha, "size": recipe.size,
            "weights": weight_id}


# === Where to cut ===

def frontier(base: keras.Model, cut: int) -> list:
    """The tensors made by frozen layers (``base.layers[:cut]``) that trainable layers or the output use."""
    index = {id(layer): i for i, layer in enumerate(base.layers)}
    found, seen = [], set()

    def add(tensor):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            found.append(tensor)

    for layer in base.layers[cut:]:
        for node in layer._inbound_nodes[:1]:
            for tensor in node.input_tensors:
                if index.get(id(tensor._keras_history.operation), cut) < cut:
                    add(tensor)
    for tensor in base.outputs:
        if index[id(tensor._keras_history.operation)] < cut:
            add(tensor)
    return found


# === Replicas: how augmentation maps onto cached copies ===

@dataclass(frozen=True)
class Replicas:
    """The cached copies of each training image, and the reason this mode was chosen."""

    transforms: tuple[Callable, ...]
    name: str
    reason: str

    def __len__(self):
        return len(self.transforms)


def _identity(x):
    return x


def _flip_lr(x):
    return tf.reverse(x, axis=[2])


def _flip_ud(x):
    return tf.reverse(x, axis=[1])


def choose_replicas(recipe: Recipe, augment_layer) -> Optional[Replicas]:
    """Cached replicas for the recipe's augmentation, or None when every step must run the base."""
    spec: Augment = recipe.augment
    if not recipe.cache:
        return None
    if not spec.active:
        return Replicas((_identity,), "cached", "exact: no augmentation")
    if spec.only_flip:
        flips = {"horizontal": (_identity, _flip_lr), "vertical": (_identity, _flip_ud),
                 "horizontal_and_vertical": (_identity, _flip_lr, _flip_ud, lambda x: _flip_ud(_flip_lr(x)))}
        transforms = flips[spec.flip]
        return Replicas(transforms, f"cached x{len(transforms)}",
                        f"exact: {spec.flip} flip has {len(transforms)} outcomes, each cached, one drawn per epoch")
    if recipe.augment_replicas:
        def augmented(x):
            return augment_layer(x, training=True)
        return Replicas((_identity,) + (augmented,) * recipe.augment_replicas,
                        f"cached x{recipe.augment_replicas + 1}",
                        f"approximate: {recipe.augment_replicas} augmented replicas per image (augment_replicas)")
    return None


# === The store ===

class FeatureStore:
    """Feature arrays on disk under a key; loaded into RAM when they fit the budget, else memory-mapped."""

    def __init__(self, root: Path | None = None, budget_bytes: int | None = None):
        self.root = Path(root) if root else default_cache_dir()
        self.budget = memory_budget() if budget_bytes is None else budget_bytes
        self.used = 0
        self.events: list[dict] = []
        self._traced: dict[int, tuple[keras.Model, Callable]] = {}  # id(model) -> (model, its traced forward)

    @staticmethod
    def key(parts: dict) -> str:
        return hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True,
                                         default=str).encode()).hexdigest()[:24]

    def load_or_compute(self, parts: dict, model: keras.Model, chunks: Callable, n: int, replicas: int,
                        what: str, batch_size: int = 64) -> list[np.ndarray]:
        """Arrays ``(replicas, n, *shape)``, one per model output; computed only if not cached already.

        ``chunks(k)`` yields ``(start, inputs)`` for images ``start:start + k``, ``inputs[r]`` being the model's
        inputs for replica ``r``; all replicas of a chunk go through the model as one batch of ``batch_size``.
        """
        key = self.key(parts)
        folder = self.root / key
        outputs = model.outputs
        event = {"event": "reused"}
        if (folder / "meta.json").is_file():
            with contextlib.suppress(OSError):  # a read-only cache is still reused
                (folder / "meta.json").touch()  # last used now, for `tlkit cache clear --older-than`
        else:
            started = time.perf_counter()
            self._compute(folder, model, chunks, n, replicas, what, batch_size)
            seconds = time.perf_counter() - started
            event = {"event": "computed", "seconds": round(seconds, 2),
                     "images_per_second": round(n * replicas / seconds, 1)}
        arrays = [np.load(folder / f"{i}.npy", mmap_mode="r") for i in range(len(outputs))]
        size = sum(a.nbytes for a in arrays)
        where = "disk (memory-mapped)"
        if self.used + size <= self.budget:
            arrays = [np.array(a) for a in arrays]
            self.used += size
            where = "RAM"
        self.events.append({"what": what, "key": key, **event, "bytes": size, "where": where, "folder": str(folder)})
        rate = f" in {event['seconds']:.1f}s ({event['images_per_second']:.0f} img/s)" if "seconds" in event else ""
        log.info("features %s: %s%s, %.1f MB in %s", what, event["event"], rate, size / 1e6, where)
        return arrays

    def _forward(self, model: keras.Model) -> Callable:
        """One traced inference function per model, shared by the splits it computes."""
        from tlkit.model import inference
        if id(model) not in self._traced:
            self._traced[id(model)] = (model, inference(model))
        return self._traced[id(model)][1]

    def _compute(self, folder, model, chunks, n, replicas, what, batch_size):
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shapes = [tuple(t.shape[1:]) for t in model.outputs]
        files = [np.lib.format.open_memmap(tmp / f"{i}.npy", "w+", np.float32, (replicas, n, *s))
                 for i, s in enumerate(shapes)]
        forward = self._forward(model)
        bar = progress(total=n * replicas, desc=f"features {what}", unit="img")
        for start, inputs in chunks(max(1, batch_size // replicas)):
            batch = [tf.concat(column, axis=0) for column in zip(*inputs)]
            out = forward(batch if len(batch) > 1 else batch[0])
            out = out if isinstance(out, (list, tuple)) else [out]
            for array, value in zip(files, out):
                value = value.numpy()
                array[:, start:start + len(value) // replicas] = value.reshape(replicas, -1, *value.shape[1:])
            bar.update(len(out[0]))
        bar.close()
        for array in files:
            array.flush()
        (tmp / "meta.json").write_text(json.dumps({"what": f"features {what}", "shapes": shapes, "n": n,
                                                   "replicas": replicas}))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)


# === Looking after the cache folder ===

def cache_entries(root: Path | None = None) -> list[dict]:
    """Every entry under a cache folder (features and decoded images), least recently used first; an entry
    whose computation never finished is listed as ``incomplete``."""
    root = Path(root) if root else default_cache_dir()
    entries = []
    for folder in [*root.glob("*"), *root.glob("images/*")]:
        if not folder.is_dir() or folder.name == "images":
            continue
        meta = folder / "meta.json"
        complete = meta.is_file() and not folder.name.endswith(".tmp")
        kind = "decoded images" if folder.parent.name == "images" else "features"
        what = json.loads(meta.read_text()).get("what", kind) if complete else f"{kind} (incomplete)"
        files = [f for f in folder.rglob("*") if f.is_file()]
        used = (meta if complete else folder).stat().st_mtime
        entries.append({"folder": str(folder), "what": what, "bytes": sum(f.stat().st_size for f in files),
                        "last_used": used})
    return sorted(entries, key=lambda e: e["last_used"])


def clear_cache(root: Path | None = None, older_than_days: float | None = None) -> list[dict]:
    """Delete cache entries (all, or those not used for ``older_than_days``); returns what was deleted."""
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    removed = [e for e in cache_entries(root) if cutoff is None or e["last_used"] < cutoff]
    for entry in removed:
        shutil.rmtree(entry["folder"], ignore_errors=True)
    return removed
