"""The stages: freeze or unfreeze, then train on cached features or full images with :class:`Loop`, keep the
best weights, stop early, checkpoint every epoch and resume; then the refit: the same stages again from the
initial weights on train + val, for the epochs the validated run kept."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tlkit.data import ImageData, Split
from tlkit.model import Classifier, set_trainable
from tlkit.recipe import Recipe
from tlkit.training.checkpoint import Checkpoints
from tlkit.training.datasets import Joined, epoch_order, feature_dataset, image_dataset
from tlkit.training.distribute import Placement
from tlkit.training.features import FeatureStore, above_cut_model, choose_replicas, feature_batch, feature_model, \
    pools_at_output
from tlkit.training.loop import Loop
from tlkit.training.optim import current_learning_rate, make_optimizer, stage_callbacks
from tlkit.training.stage import StagePlan, plan_stages
from tlkit.training.state import StageReport, Training, TrainState
from tlkit.training.summary import parameter_summary

log = logging.getLogger(__name__)


@dataclass
class StageSetup:
    """What trains in a stage: the model (the classifier, or the part above the cut), its optimizer and loop."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    loop: Loop
    fresh: list  # the optimizer's variables as built, to start it again (the refit reuses the traced loop)


class Trainer:
    """Runs a recipe's stages on a classifier, reusing the frozen part's output where that is exact."""

    def __init__(self, classifier: Classifier, recipe: Recipe, data: ImageData, features: FeatureStore,
                 fingerprint: dict, placement: Placement, checkpoints: Checkpoints | None = None,
                 log_dir: Path | None = None):
        self.classifier, self.recipe, self.data, self.store = classifier, recipe, data, features
        self.fingerprint = fingerprint  # what the cached features depend on besides the cut
        self.placement, self.checkpoints = placement, checkpoints
        self.log_dir = log_dir  # per stage: parameter summary and TensorBoard logs; None: neither
        self.replicas = choose_replicas(recipe, classifier.augment)
        self.plans = plan_stages(recipe, classifier.base, self.replicas, len(data.splits["train"]))
        self.features: dict[int, tuple[list, list]] = {}  # cut index -> (train arrays, val arrays)
        self.feature_seconds = 0.0
        self.best_weights: list | None = None
        self.initial_weights = classifier.model.get_weights()  # where the refit starts again
        self._setups: dict[int, StageSetup] = {}  # by stage index

    def run(self, resume: dict | None = None) -> Training:
        """Train every stage, then (``recipe.refit``) refit on train + val; with ``resume`` (a loaded checkpoint)
        continue where it stopped."""
        state = TrainState()
        if resume:
            state = TrainState.from_dict(resume["state"])
            for variable, value in zip(self.classifier.model.variables, resume["model"]):
                variable.assign(value)  # weights and the random generators' state (dropout, augmentation)
            self.best_weights = resume["best"]
            log.info("resuming %sat stage %d, epoch %d (%d epochs done)", "the refit " if state.refit else "",
                     state.stage + 1, state.stage_epoch + 1, state.global_epoch)
        self.prepare_features()
        for plan in [] if state.refit else self.plans:
            if state.done_with(plan.index) or plan.spec.epochs == 0:
                continue
            resuming = resume is not None and plan.index == state.stage and state.stage_epoch > 0
            if not resuming:
                state.start_stage(plan.index)
            self._run_stage(plan, state, resume["optimizer"] if resuming else None)
        refit = self._refit(state, resume) if self.recipe.refit else None
        return Training(state.history, [StageReport(**s) for s in state.stages], state.best, self.feature_seconds,
                        refit, self.best_weights if refit else None)

    # === Features ===

    def prepare_features(self) -> None:
        """Compute features at every cut a cached stage needs: the lowest cut from images, the rest from it."""
        if self.replicas is None:
            return
        cuts = sorted({plan.cut for plan in self.plans if plan.spec.epochs})
        started = time.perf_counter()
        lower = None
        for cut in cuts:
            model = feature_model(self.classifier, cut, lower)
            self.features[cut] = tuple(self._features(model, cut, lower, split) for split in ("train", "val"))
            lower = cut
        # the refit trains on the val images too, so they get every training replica (evaluation reads the first)
        self.feature_seconds = time.perf_counter() - started
        log.info("features for %d cut(s) ready in %.1fs", len(cuts), self.feature_seconds)

    def _features(self, model, cut, lower, split_name):
        split = self.data.splits[split_name]
        replicas = self.replicas if split_name == "train" or self.recipe.refit else self.replicas.first()
        base = self.classifier.base
        layer = base.layers[cut].name if cut < len(base.layers) else "(output)"
        if pools_at_output(self.classifier, cut):
            layer += f" {self.recipe.head.pooling}-pooled"
        parts = {**self.fingerprint, "split": split_name, "cut": layer, "replicas": replicas.name,
                 "files": self.fingerprint["files"][split_name]}
        if len(replicas) > 1 and not self.recipe.augment.only_flip:
            parts["augment"] = self.recipe.augment.model_dump()

        if lower is None:
            def chunks(size):
                for start in range(0, len(split), size):
                    pixels = tf.convert_to_tensor(split.images[start:start + size], tf.float32)
                    yield start, [[transform(pixels)] for transform in replicas.transforms]
        else:
            source = self.features[lower][0 if split_name == "train" else 1]

            def chunks(size):
                for start in range(0, len(split), size):
                    yield start, [[tf.convert_to_tensor(a[r, start:start + size]) for a in source]
                                  for r in range(len(replicas))]
        return self.store.load_or_compute(parts, model, chunks, len(split), len(replicas),
                                          f"{split_name} @ {layer}", feature_batch(self.recipe.size))

    def datasets(self, plan: StagePlan, epoch: int):
        """This epoch's training batches and the validation batches, of cached features or full images."""
        train_split, val_split = self.data.splits["train"], self.data.splits["val"]
        order = epoch_order(len(train_split), self.recipe.seed, epoch, plan.passes)
        order = order[:plan.steps_per_epoch * self.recipe.batch_size]  # the refit: the validated run's steps
        drop = self.placement.replicas > 1  # every replica gets a non-empty batch
        if plan.cached:
            train_arrays, val_arrays = self.features[plan.cut]
            return (feature_dataset(train_arrays, train_split, self.recipe, order, epoch, drop),
                    feature_dataset(val_arrays, val_split, self.recipe))
        return (image_dataset(train_split, self.recipe, order, drop), image_dataset(val_split, self.recipe))

    # === A stage ===

    def setup(self, plan: StagePlan) -> StageSetup:
        """Freeze for the stage, then build what trains: model, optimizer (loss-scaled under mixed_float16)
        and loop, compiled (callbacks read ``model.optimizer``). A stage set up before (the refit) gets the
        same ones back, the optimizer started again, so nothing is traced twice."""
        classifier, strategy = self.classifier, self.placement.strategy
        set_trainable(classifier, self.recipe, plan.spec)
        if plan.index in self._setups:
            setup = self._setups[plan.index]
            for variable, value in zip(setup.optimizer.variables, setup.fresh):
                variable.assign(value)
            setup.loop.l2.assign(self.l2())
            return setup
        with strategy.scope():
            model = above_cut_model(classifier, plan.cut) if plan.cached else classifier.model
            optimizer = make_optimizer(plan.spec, plan.steps_per_epoch, classifier.base.trainable_variables)
            if self.placement.precision == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(model.trainable_variables)
        kernels = [layer.kernel for layer in classifier.head.layers if isinstance(layer, keras.layers.Dense)]
        loop = Loop(strategy, model, optimizer, self.recipe, self.data.class_weight_by_id(), plan.spec.label_smoothing,
                    self.l2(), kernels)
        with strategy.scope():
            model.compile(optimizer, loop.per_example_loss)
        self._setups[plan.index] = StageSetup(model, optimizer, loop, [v.numpy() for v in optimizer.variables])
        return self._setups[plan.index]

    def l2(self) -> float:
        """The head's L2 penalty for the data trained on now: ``head.l2``, or 1 / (2 x training images)."""
        spec = self.recipe.head.l2
        return 1 / (2 * len(self.data.splits["train"])) if spec == "auto" else float(spec)

    def _run_stage(self, plan: StagePlan, state: TrainState, optimizer_values: list | None) -> None:
        setup = self.setup(plan)
        for variable, value in zip(setup.optimizer.variables, optimizer_values or []):
            variable.assign(value)
        log.info("stage %s: %s (%s)", plan.id, plan.mode, plan.reason)
        log.info("stage %s: %d epochs of %d steps (%d pass(es) over %d training images); head L2 %.2g", plan.id,
                 plan.spec.epochs, plan.steps_per_epoch, plan.passes, len(self.data.splits["train"]), self.l2())
        if plan.passes > 1 and not plan.cached:
            log.warning("stage %s: min_steps=%d makes each epoch %d passes, each running the whole base; set "
                        "stages.%d.min_steps=0 to trade accuracy for time", plan.id, plan.spec.min_steps,
                        plan.passes, plan.index)
        stage_dir = self.log_dir / plan.folder_name if self.log_dir else None
        summary = parameter_summary(self.classifier, self.recipe.batchnorm, plan.id).report(stage_dir)
        report = StageReport(plan.id, plan.mode, plan.reason, plan.first_trainable_layer, summary.trainable,
                             summary.total, asdict(summary), steps_per_epoch=plan.steps_per_epoch,
                             passes_per_epoch=plan.passes, l2=self.l2())
        hooks = stage_callbacks(plan.spec, stage_dir)
        plateau = next((c for c in hooks if isinstance(c, keras.callbacks.ReduceLROnPlateau)), None)
        callbacks = keras.callbacks.CallbackList(hooks, model=setup.model)
        callbacks.on_train_begin()  # resets reduce-on-plateau, whose counters a resumed stage then restores
        if plateau is not None and state.plateau:
            plateau.wait, plateau.best, plateau.cooldown_counter = state.plateau
        for stage_epoch in range(state.stage_epoch, plan.spec.epochs):
            best_changed = self._epoch(plan, setup, callbacks, state)
            stopped = state.patience_ran_out(plan.spec.patience)
            done = stopped or stage_epoch + 1 == plan.spec.epochs
            report.epochs_run = stage_epoch + 1
            if done:
                self._finish(plan, state, report, stopped)
            state.stage_epoch, state.stage_done = stage_epoch + 1, done
            state.plateau = plateau and [plateau.wait, float(plateau.best), plateau.cooldown_counter]
            if self.checkpoints is not None:
                self.checkpoints.save(state, [v.numpy() for v in self.classifier.model.variables],
                                      [v.numpy() for v in setup.optimizer.variables], self.best_weights, best_changed)
            if done:
                callbacks.on_train_end()
                break

    def _epoch(self, plan: StagePlan, setup: StageSetup, callbacks, state: TrainState) -> bool:
        """Train and validate one epoch, record it; return whether it is the best epoch so far (then its
        weights are kept)."""
        started = time.perf_counter()
        callbacks.on_epoch_begin(state.global_epoch)
        train, val = self.datasets(plan, state.global_epoch)
        logs = setup.loop.train_epoch(train)
        logs.update({f"val_{k}": v for k, v in setup.loop.evaluate(val).items()})
        logs["learning_rate"] = current_learning_rate(setup.optimizer)
        callbacks.on_epoch_end(state.global_epoch, logs)  # TensorBoard, reduce-on-plateau
        seconds = time.perf_counter() - started
        best_changed = state.record_epoch(plan.id, logs, seconds)
        log.info("%s epoch %d/%d  %s  (%.1fs)", plan.id, state.stage_epoch + 1, plan.spec.epochs,
                 "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "learning_rate"), seconds)
        if best_changed:
            self.best_weights = self.classifier.model.get_weights()
        return best_changed

    def _finish(self, plan: StagePlan, state: TrainState, report: StageReport, stopped: bool) -> None:
        """End a stage with the kept weights of any stage, so it never leaves a clearly worse model."""
        if stopped:
            log.info("%s: early stop, no epoch within one standard error of the lowest validation loss for %d "
                     "epochs", plan.id, state.wait)
        if self.best_weights is not None:
            self.classifier.model.set_weights(self.best_weights)
        report.seconds = state.stage_seconds(plan.id)
        report.kept_epochs = state.best["stage_epoch"] if state.best and state.best["stage"] == plan.id else 0
        log.info("%s: kept epoch %d of the run (%s, val_loss %.4f, val_accuracy %.4f)", plan.id, state.best["epoch"],
                 state.best["stage"], state.best["val_loss"], state.best["val_accuracy"])
        state.stages.append(asdict(report))

    # === The refit ===

    def _refit(self, state: TrainState, resume: dict | None) -> dict:
        """Train the stages again from the initial weights on train + val, each for the epochs it kept, with
        the validated run's steps and learning rates and no validation; return what it did. The validated
        run's kept weights stay in ``best_weights`` (and in every checkpoint) for its validation figures."""
        epochs = state.refit_epochs([plan.id for plan in self.plans])
        self._use_train_and_val()
        if not state.refit:
            state.refit = True
            state.start_stage(0)
            self.classifier.model.set_weights(self.initial_weights)
            log.info("refit on train + val (%d images): epochs per stage %s, as the validated run kept them",
                     len(self.data.splits["train"]), epochs)
        for plan in self.plans:
            if state.done_with(plan.index) or epochs[plan.index] == 0:
                continue
            resuming = resume is not None and plan.index == state.stage and state.stage_epoch > 0
            if not resuming:
                state.start_stage(plan.index)
            self._refit_stage(plan, epochs[plan.index], state, resume["optimizer"] if resuming else None)
        seconds = round(sum(row["seconds"] for row in state.refit_history), 3)
        return {"train_images": len(self.data.splits["train"]), "epochs": epochs, "seconds": seconds,
                "rule": "each stage for the epochs the validated run kept of it (0: it kept an earlier stage's "
                        "weights), from the initial weights, on train + val",
                "history": state.refit_history}

    def _use_train_and_val(self) -> None:
        """Train from now on on train + val (rows joined, not copied): each epoch takes the validated run's
        steps, drawn from passes over the larger set."""
        train, val = self.data.splits["train"], self.data.splits["val"]
        joined = Split(train.paths + val.paths, np.concatenate([train.labels, val.labels]),
                       Joined([train.images, val.images]), train.ids + val.ids)
        self.data = replace(self.data, splits={**self.data.splits, "train": joined})
        self.features = {cut: ([Joined([t, v], axis=1) for t, v in zip(*arrays)], arrays[1])
                         for cut, arrays in self.features.items()}
        self.plans = [replace(plan, passes=math.ceil(plan.steps_per_epoch * self.recipe.batch_size / len(joined)))
                      for plan in self.plans]

    def _refit_stage(self, plan: StagePlan, epochs: int, state: TrainState, optimizer_values: list | None) -> None:
        setup = self.setup(plan)
        for variable, value in zip(setup.optimizer.variables, optimizer_values or []):
            variable.assign(value)
        rates = [row["learning_rate"] for row in state.history if row["stage"] == plan.id]
        log.info("refit %s: %d epochs of %d steps (from %d pass(es) over %d images); head L2 %.2g", plan.id,
                 epochs, plan.steps_per_epoch, plan.passes, len(self.data.splits["train"]), self.l2())
        for stage_epoch in range(state.stage_epoch, epochs):
            started = time.perf_counter()
            if plan.spec.schedule == "plateau":
                setup.optimizer.learning_rate = rates[stage_epoch]
            train, _ = self.datasets(plan, state.global_epoch)
            logs = setup.loop.train_epoch(train)
            seconds = time.perf_counter() - started
            state.global_epoch += 1
            state.refit_history.append({"stage": plan.id, "epoch": stage_epoch + 1, **logs,
                                        "learning_rate": current_learning_rate(setup.optimizer),
                                        "seconds": round(seconds, 3)})
            log.info("refit %s epoch %d/%d  loss %.4f  accuracy %.4f  (%.1fs)", plan.id, stage_epoch + 1, epochs,
                     logs["loss"], logs["accuracy"], seconds)
            state.stage_epoch, state.stage_done = stage_epoch + 1, stage_epoch + 1 == epochs
            if self.checkpoints is not None:
                self.checkpoints.save(state, [v.numpy() for v in self.classifier.model.variables],
                                      [v.numpy() for v in setup.optimizer.variables], self.best_weights, False)
