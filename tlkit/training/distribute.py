"""Devices, tf.distribute strategy and numeric precision: chosen automatically, overridable, recorded."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tlkit.errors import TlkitError

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "multiworker")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


@dataclass
class Placement:
    """The strategy in use and what to record about it."""

    strategy: tf.distribute.Strategy
    name: str
    replicas: int
    is_chief: bool
    worker_index: int
    precision: str

    def describe(self) -> dict:
        return {"strategy": self.name, "replicas": self.replicas, "worker": self.worker_index,
                "chief": self.is_chief, "precision": self.precision}


def _gpus():
    import tensorflow as tf
    return tf.config.list_physical_devices("GPU")


def _tf_config() -> dict | None:
    text = os.environ.get("TF_CONFIG")
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise TlkitError(f"TF_CONFIG is not valid JSON: {text[:80]!r}") from None


def choose_strategy(name: str = "auto") -> tuple[tf.distribute.Strategy, str]:
    """``auto``: TF_CONFIG -> multi-worker; several GPUs -> mirrored; one GPU -> that GPU; else the CPU."""
    import tensorflow as tf
    if name not in STRATEGIES:
        raise TlkitError(f"unknown strategy {name!r}; valid choices: {', '.join(STRATEGIES)}")
    gpus = _gpus()
    for gpu in gpus:  # before any GPU is initialised
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already initialised by an earlier run in this process
    if name == "auto":
        name = "multiworker" if _tf_config() else "mirrored" if len(gpus) > 1 else "gpu" if gpus else "cpu"
    if name == "multiworker":
        config = _tf_config()
        if not config or "cluster" not in config:
            raise TlkitError("--strategy multiworker needs TF_CONFIG with a cluster spec (set by Kubeflow, "
                             "Slurm launchers or Vertex AI; see the tf.distribute docs)")
        return tf.distribute.MultiWorkerMirroredStrategy(), "multiworker"
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
                  [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices), "mirrored"
    if name == "gpu":
        if not gpus:
            raise TlkitError("--strategy gpu but TensorFlow sees no GPU "
                             "(check drivers and CUDA, or use --strategy cpu)")
        return tf.distribute.OneDeviceStrategy("/gpu:0"), "gpu"
    return tf.distribute.OneDeviceStrategy("/cpu:0"), "cpu"


def _gpu_supports_float16() -> bool:
    import tensorflow as tf
    for gpu in _gpus():
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        if capability >= (7, 0):
            return True
    return False


def choose_precision(name: str = "auto") -> str:
    """``auto``: mixed_float16 on GPUs with tensor cores (compute capability >= 7.0), else float32."""
    if name not in PRECISIONS:
        raise TlkitError(f"unknown precision {name!r}; valid choices: {', '.join(PRECISIONS)}")
    if name == "auto":
        name = "mixed_float16" if _gpu_supports_float16() else "float32"
    return name


def place(strategy: str = "auto", precision: str = "auto") -> Placement:
    """Pick and set up the strategy and global dtype policy for a run."""
    import keras
    chosen, label = choose_strategy(strategy)
    policy = choose_precision(precision)
    keras.mixed_precision.set_global_policy(policy)
    resolver = getattr(chosen, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    task_id = getattr(resolver, "task_id", 0) or 0
    is_chief = task_type in (None, "chief") or (task_type == "worker" and task_id == 0)
    placement = Placement(chosen, label, chosen.num_replicas_in_sync, is_chief, task_id, policy)
    log.info("strategy %s with %d replica(s)%s; precision %s", label, placement.replicas,
             f", worker {task_id}" if label == "multiworker" else "", policy)
    return placement


def current_placement() -> Placement:
    """The strategy in scope now (the default one outside any scope), for library calls outside `run`."""
    import keras
    import tensorflow as tf
    strategy = tf.distribute.get_strategy()
    return Placement(strategy, "default", strategy.num_replicas_in_sync, True, 0,
                     keras.mixed_precision.global_policy().name)
