"""Training controls of a stage: the optimizer with its learning-rate schedule, weight decay and
discriminative rates, the label-smoothed loss, and the callbacks (rate log, reduce-on-plateau, TensorBoard).

Everything here is a plain Keras optimizer, schedule, loss or callback, so it works under ``model.fit``
and under a training loop that calls ``optimizer.apply`` and drives a ``keras.callbacks.CallbackList``.
"""
from __future__ import annotations

import math
from pathlib import Path

import keras
import tensorflow as tf

from tlkit.recipe import FineTune

NO_DECAY = ("bias", "gamma", "beta")  # as timm: no weight decay on biases and BatchNorm scales and offsets


class _DiscriminativeRates:
    """Mixin for a Keras optimizer: variables named in ``rate_scales`` (by path) train at the learning
    rate times their scale, weight decay included, as if they had their own learning rate.

    It scales the update, not the gradient: Adam, AdamW and RMSprop divide the gradient by its own running
    magnitude, so a scaled gradient would give (almost) the same step.
    """

    def __init__(self, *args, rate_scales: dict[str, float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.rate_scales = dict(rate_scales or {})

    def build(self, variables):
        if self.weight_decay:  # Keras decays with the unscaled rate; scaled variables decay in update_step
            scaled = [v for v in variables if v.path in self.rate_scales]
            self.exclude_from_weight_decay(scaled, NO_DECAY)
        self._scales = [self.rate_scales.get(v.path, 1.0) for v in variables]
        self._decays = [bool(self.weight_decay) and self.rate_scales.get(v.path, 1.0) != 1.0
                        and not any(name in v.name for name in NO_DECAY) for v in variables]
        super().build(variables)

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        if self._scales[index] != 1.0:
            learning_rate = learning_rate * self._scales[index]
            if self._decays[index]:
                variable.assign_sub(variable * keras.ops.cast(self.weight_decay * learning_rate, variable.dtype))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "rate_scales": self.rate_scales}


def _discriminative(optimizer_class):
    name = f"Discriminative{optimizer_class.__name__}"
    cls = type(name, (_DiscriminativeRates, optimizer_class), {"__doc__": _DiscriminativeRates.__doc__})
    return keras.saving.register_keras_serializable(package="tlkit", name=name)(cls)


OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
}
DISCRIMINATIVE = {name: _discriminative(cls) for name, cls in OPTIMIZERS.items()}


def learning_rate_schedule(stage, steps_per_epoch: int):
    """The stage's learning rate: a float (constant, plateau) or a Keras schedule over optimizer steps."""
    rate, schedules = stage.learning_rate, keras.optimizers.schedules
    if stage.schedule == "cosine":
        warmup = round(stage.warmup_epochs * steps_per_epoch)
        decay = max(1, stage.epochs * steps_per_epoch - warmup)
        if not warmup:
            return schedules.CosineDecay(rate, decay)
        return schedules.CosineDecay(0.0, decay, warmup_target=rate, warmup_steps=warmup)
    if stage.schedule == "step":
        return schedules.ExponentialDecay(rate, stage.step_every * steps_per_epoch, stage.step_factor,
                                          staircase=True)
    return rate


def make_optimizer(stage, steps_per_epoch: int, base_variables=()) -> keras.optimizers.Optimizer:
    """The stage's optimizer: schedule, weight decay (none on biases and BatchNorm), and for a fine-tuning
    stage with ``base_learning_rate_ratio`` < 1 a lower rate for ``base_variables`` than for the head."""
    options = {"learning_rate": learning_rate_schedule(stage, steps_per_epoch)}
    if stage.optimizer == "sgd":
        options["momentum"] = 0.9
    if stage.weight_decay is not None:
        options["weight_decay"] = stage.weight_decay
    ratio = stage.base_learning_rate_ratio if isinstance(stage, FineTune) else 1.0
    scales = {v.path: ratio for v in base_variables} if ratio != 1.0 else {}
    if scales:
        optimizer = DISCRIMINATIVE[stage.optimizer](rate_scales=scales, **options)
    else:
        optimizer = OPTIMIZERS[stage.optimizer](**options)
        if optimizer.weight_decay:
            optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    return optimizer


def batches_per_epoch(examples: int, batch_size: int) -> int:
    return max(1, math.ceil(examples / batch_size))


# === Loss ===

@keras.saving.register_keras_serializable(package="tlkit")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels against ``(1 - s) * one_hot + s / classes``; Keras' sparse
    cross-entropy has no label smoothing."""

    def __init__(self, label_smoothing: float, name="smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        one_hot = keras.ops.one_hot(labels, keras.ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


# === Callbacks ===

def current_learning_rate(optimizer) -> float:
    """The rate the optimizer's next step uses (a schedule's value at its current step)."""
    return float(tf.convert_to_tensor(optimizer.learning_rate))


class LearningRateLog(keras.callbacks.Callback):
    """Puts the optimizer's learning rate at the end of each epoch into the epoch's logs (history, TensorBoard)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = current_learning_rate(self.model.optimizer)


def stage_callbacks(stage, log_dir: Path | None = None) -> list[keras.callbacks.Callback]:
    """Callbacks for a stage, in order: the rate into the logs, TensorBoard scalars per epoch under
    ``log_dir`` (when given), then reduce-on-plateau (so both record the rate the epoch trained with)."""
    callbacks = [LearningRateLog()]
    if log_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(str(log_dir), write_graph=False, profile_batch=0))
    if stage.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau("val_loss", factor=stage.plateau_factor,
                                                           patience=stage.plateau_patience))
    return callbacks
