"""The stages: freeze or unfreeze, then train on cached features or full images with :class:`Loop`, keep the
best weights, stop early, checkpoint and resume; then, if the run refits, the kept schedule again on train + val."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tlkit.data import ImageData, Split
from tlkit.model import Classifier, set_trainable
from tlkit.recipe import FeatureExtraction, Recipe
from tlkit.training.checkpoint import Checkpoints
from tlkit.training.datasets import as_dataset, epoch_order, feature_batches, image_dataset
from tlkit.training.distribute import Placement
from tlkit.training.features import POOLED_LABEL, CutFeatures, FeatureStore, above_cut_model, choose_replicas, \
    cut_label, feature_batch, outputs_from_cut, pooled_model
from tlkit.training.loop import Loop
from tlkit.training.optim import current_learning_rate, make_optimizer, stage_callbacks
from tlkit.training.refit import refit_choice, refit_order, refit_schedule
from tlkit.training.regularization import MAX_WEIGHTS, choose_l2, copies_weights
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
    start: list  # the optimizer's variables as built, to start it over (a refit reuses the traced loop)


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
        self.refits, self.refit_reason = refit_choice(recipe, self.plans)
        self.features: dict[int, tuple[CutFeatures, CutFeatures]] = {}  # cut index -> (train, val)
        self.catalogue, self.rows = data.catalogue()  # every image in one order, and each split's rows in it
        self.shared: dict[int, list] = {}  # cut index -> unaugmented tensors of every image (catalogue order)
        self.copies: dict[tuple[int, str], list] = {}  # (cut index, split) -> the split's augmented copies there
        self.setups: dict[int, StageSetup] = {}  # stage index -> what trained it
        self.initial: list | None = None  # the model's variables before any stage, where a refit starts
        self._outputs: dict = {}  # cut index -> outputs_from_cut (traced once: it reads the model's variables)
        self.feature_seconds = 0.0
        self.best_weights: list | None = None
        self.l2_choice: dict | None = None  # the head's L2 penalty and why (run.json choices["head_l2"])

    def run(self, resume: dict | None = None) -> Training:
        """Train every stage; with ``resume`` (a loaded checkpoint) continue where it stopped."""
        state = TrainState()
        if self.refits:
            self.initial = [v.numpy() for v in self.classifier.model.variables]
        if resume:
            state = TrainState.from_dict(resume["state"])
            for variable, value in zip(self.classifier.model.variables, resume["model"]):
                variable.assign(value)  # weights and the random generators' state (dropout, augmentation)
            self.best_weights = resume["best"]
            log.info("resuming at stage %d, epoch %d (%d epochs done)", state.stage + 1, state.stage_epoch + 1,
                     state.global_epoch)
        self.prepare_features()
        for plan in self.plans:
            if state.done_with(plan.index) or plan.spec.epochs == 0:
                continue
            resuming = resume is not None and plan.index == state.stage and state.stage_epoch > 0
            if not resuming:
                state.start_stage(plan.index)
            self._run_stage(plan, state, resume["optimizer"] if resuming else None)
        return Training(state.history, [StageReport(**s) for s in state.stages], state.best, self.feature_seconds,
                        self.l2_choice)

    # === Features ===

    def prepare_features(self) -> None:
        """Compute features at every cut a cached stage needs: the lowest cut from images, the rest from it;
        unaugmented for every image (one entry whatever the split), augmented copies for training images."""
        if self.replicas is None or not self.cached_cuts():
            return
        started = time.perf_counter()
        lower = None
        for cut in self.cached_cuts():
            model = self.feature_model(cut, lower)
            self.shared[cut] = shared = self._shared(model, cut_label(self.classifier, self.recipe, cut), lower)
            self.features[cut] = (CutFeatures(shared, self.rows["train"], self._augmented(model, cut, lower, "train")),
                                  CutFeatures(shared, self.rows["val"]))
            if not all([split.hold(self.store.arrays) for split in self.features[cut]]):
                log.info("features @ %s: a copy for the graph would exceed the memory budget; batches are read "
                         "through NumPy", cut_label(self.classifier, self.recipe, cut))
            lower = cut
        self.feature_seconds = time.perf_counter() - started
        log.info("features for %d cut(s) ready in %.1fs", len(self.features), self.feature_seconds)

    def cached_cuts(self) -> list[int]:
        """The cuts of the stages that train on cached features, lowest first."""
        return sorted({plan.cut for plan in self.plans if plan.spec.epochs and plan.cached})

    def pooled_features(self) -> np.ndarray:
        """Every image's base output, average-pooled, unaugmented, in catalogue order ``(images, channels)``:
        the head stage's own cache when its head average-pools (training then reuses it); otherwise computed
        from the highest cached cut below the output, or from the images."""
        lower = None
        for cut in self.cached_cuts():
            label = cut_label(self.classifier, self.recipe, cut)
            if label == POOLED_LABEL:
                return self._shared(self.feature_model(cut, lower), label, lower)[0]
            if cut < len(self.classifier.base.layers):  # a lower cut: computed now, reused by training
                self.shared[cut] = self._shared(self.feature_model(cut, lower), label, lower)
                lower = cut
        return self._shared(pooled_model(self.classifier, lower), POOLED_LABEL, lower)[0]

    def feature_model(self, cut: int, lower: int | None) -> keras.Model:
        """What computes a cut's cached tensors (from images, or from the ``lower`` cut's): the store's, built once
        for every trainer of the classifier, so its traced forward pass serves every split and replica."""
        return self.store.feature_model(self.classifier, cut, lower)

    def outputs(self) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
        """Each split's head logits ``(N, classes)`` and average-pooled base output ``(N, channels)``, in split order,
        from the cached tensors of the lowest cut a stage trained above, through only the layers above it: since no
        layer below that cut trained, these are the classifier's own outputs on the split's pixels. None when a
        stage ran the whole base or :func:`outputs_from_cut` cannot serve the cut."""
        trained = [plan for plan in self.plans if plan.spec.epochs]
        if not all(plan.cached for plan in trained):
            return None
        cut = min(plan.cut for plan in trained)
        if cut not in self._outputs:
            self._outputs[cut] = outputs_from_cut(self.classifier, cut)
        forward = self._outputs[cut]
        if forward is None:
            return None
        shared, size = self.shared[cut], self.recipe.batch_size
        parts = [forward(*[tf.convert_to_tensor(a[start:start + size]) for a in shared])
                 for start in range(0, len(self.catalogue), size)]
        logits, features = (np.concatenate([part[k].numpy() for part in parts]) for k in (0, 1))
        return {name: (logits[rows], features[rows]) for name, rows in self.rows.items()}

    def _shared(self, model, label: str, lower: int | None) -> list[np.ndarray]:
        """A cut's unaugmented tensors for every image, in catalogue order: from the images, or from the
        shared tensors of the ``lower`` cut (computed first)."""
        if lower is None:
            rows = self.data.rows()
            position = np.empty(len(rows), np.int64)  # catalogue row -> position in rows
            position[np.concatenate(list(self.rows.values()))] = np.arange(len(rows))

            def chunks(size):
                for start in range(0, len(rows), size):
                    pixels = np.stack([rows[p] for p in position[start:start + size]])
                    yield start, [[tf.convert_to_tensor(pixels, tf.float32)]]
        else:
            source = self.shared[lower]

            def chunks(size):
                for start in range(0, len(self.catalogue), size):
                    yield start, [[tf.convert_to_tensor(a[start:start + size]) for a in source]]
        parts = {**self.fingerprint, "images": self.catalogue, "cut": label, "replicas": "x1"}
        arrays = self.store.load_or_compute(parts, model, chunks, len(self.catalogue), 1, f"all images @ {label}",
                                            feature_batch(self.recipe.size))
        return [a[0] for a in arrays]

    def _augmented(self, model, cut: int, lower: int | None, name: str) -> list[np.ndarray]:
        """The other replicas of a split's images at a cut (none when there is one replica); kept in ``copies``
        for the cuts above."""
        copies = self.replicas.transforms[1:]
        if not copies:
            return []
        split, label = self.data.splits[name], cut_label(self.classifier, self.recipe, cut)
        parts = {**self.fingerprint, "files": split.ids, "cut": label, "replicas": f"{self.replicas.name} copies"}
        if not self.recipe.augment.only_flip:
            parts["augment"] = self.recipe.augment.model_dump()
        if lower is None:
            def chunks(size):
                for start in range(0, len(split), size):
                    pixels = tf.convert_to_tensor(split.images[start:start + size], tf.float32)
                    yield start, [[transform(pixels)] for transform in copies]
        else:
            source = self.copies[lower, name]

            def chunks(size):
                for start in range(0, len(split), size):
                    yield start, [[tf.convert_to_tensor(a[r, start:start + size]) for a in source]
                                  for r in range(len(copies))]
        self.copies[cut, name] = self.store.load_or_compute(parts, model, chunks, len(split), len(copies),
                                                           f"{name} @ {label}, {len(copies)} augmented copies",
                                                           feature_batch(self.recipe.size))
        return self.copies[cut, name]

    def train_batches(self, plan: StagePlan, epoch: int):
        """This epoch's training batches, of cached features or full images."""
        split = self.data.splits["train"]
        order = epoch_order(len(split), self.recipe.seed, epoch, plan.passes)
        drop = self.placement.replicas > 1  # every replica gets a non-empty batch
        if plan.cached:
            return feature_batches(self.features[plan.cut][0], split, self.recipe, order, epoch, drop)
        return image_dataset(split, self.recipe, order, drop)

    def val_dataset(self, plan: StagePlan):
        """The validation batches of a stage, of cached features or full images."""
        split = self.data.splits["val"]
        if plan.cached:
            return as_dataset(feature_batches(self.features[plan.cut][1], split, self.recipe))
        return image_dataset(split, self.recipe)

    # === A stage ===

    def setup(self, plan: StagePlan) -> StageSetup:
        """Freeze for the stage, then build what trains: model, optimizer (loss-scaled under mixed_float16)
        and loop, compiled (callbacks read ``model.optimizer``)."""
        classifier, strategy = self.classifier, self.placement.strategy
        set_trainable(classifier, self.recipe, plan.spec)
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
        self.setups[plan.index] = StageSetup(model, optimizer, loop, [v.numpy() for v in optimizer.variables])
        return self.setups[plan.index]

    def l2(self) -> float:
        """The head's L2 penalty on its kernels: ``head.l2``, or (auto) the one :meth:`choose_l2` chose."""
        if self.l2_choice is None:
            spec = self.recipe.head.l2
            self.l2_choice = self.choose_l2() if spec == "auto" else {"rule": f"head.l2={spec}", "l2": float(spec)}
        return self.l2_choice["l2"]

    def choose_l2(self) -> dict:
        """head.l2=auto: when a linear head on average-pooled features trains first, with Adam, the strength
        cross-validated on the training images' pooled features (:func:`~tlkit.training.regularization.choose_l2`;
        cached or not, the same); otherwise 1 / (2 x training images), scikit-learn's default (C=1). Returns the
        choice and why."""
        images, plan = len(self.data.splits["train"]), next((p for p in self.plans if p.spec.epochs), None)
        why = self._no_cross_validation(plan)
        if why is None:
            weights = self.data.class_weight_by_id()
            log.info("head L2: cross-validating the head on %d training images' pooled features", images)
            choice = choose_l2(self.pooled_features()[self.rows["train"]], self.data.splits["train"].labels,
                               len(self.data.class_names), sigmoid=self.recipe.head.activation == "sigmoid",
                               dropout=self.recipe.head.dropout, steps=plan.steps_per_epoch * plan.spec.epochs,
                               batch_size=self.recipe.batch_size * self.placement.replicas,
                               learning_rate=plan.spec.learning_rate, seed=self.recipe.seed,
                               class_weight=None if weights is None else [weights[i] for i in range(len(weights))])
            if choice is not None:
                log.info("head L2: C=%g (held-out accuracy %.3f; C=1 %.3f), L2 %.2g, in %.1fs", choice.c,
                         choice.heldout_accuracy[choice.c], choice.heldout_accuracy[1.0], choice.l2(images),
                         choice.seconds)
                return choice.record(images)
            why = "a class has fewer than 2 training images, too few to hold any out"
        log.info("head L2: 1 / (2 x %d training images): %s", images, why)
        return {"rule": "1 / (2 x training images), scikit-learn's default strength (C=1)", "c": 1.0,
                "l2": 1 / (2 * images), "images": images, "why": f"not cross-validated: {why}"}

    def _no_cross_validation(self, plan: StagePlan | None) -> str | None:
        """Why the head's L2 cannot be cross-validated on pooled features (None: it can)."""
        head = self.recipe.head
        if head.hidden:
            return "the head has hidden layers"
        if head.pooling != "avg":
            return f"the head pools with {head.pooling}; the cross-validation takes average-pooled features"
        if plan is None or not isinstance(plan.spec, FeatureExtraction):
            return "the first stage to train is not a head stage"
        if plan.spec.optimizer != "adam":
            return f"the head stage's optimizer is {plan.spec.optimizer}, and the cross-validation trains with adam"
        channels, classes = self.classifier.base.output.shape[-1], len(self.data.class_names)
        weights = copies_weights(channels, 1 if head.activation == "sigmoid" else classes)
        if weights > MAX_WEIGHTS:
            return (f"its copies of the head ({classes} classes x {channels} channels) would hold {weights:,} "
                    f"weights, over {MAX_WEIGHTS:,}")
        return None

    def _run_stage(self, plan: StagePlan, state: TrainState, optimizer_values: list | None) -> None:
        setup = self.setup(plan)
        for variable, value in zip(setup.optimizer.variables, optimizer_values or []):
            variable.assign(value)
        log.info("stage %s: %s (%s)", plan.id, plan.mode, plan.reason)
        log.info("stage %s: %d epochs of %d steps (%d pass(es) over %d training images); head L2 %.2g", plan.id,
                 plan.spec.epochs, plan.steps_per_epoch, plan.passes, len(self.data.splits["train"]), self.l2())
        if plan.passes > 1 and not plan.cached:
            log.warning("stage %s: min_steps=%d makes each epoch %d passes, each running the whole base; set "
                        "stage%d.min_steps=0 to trade accuracy for time", plan.id, plan.spec.min_steps,
                        plan.passes, plan.index + 1)
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
        val = self.val_dataset(plan)
        for stage_epoch in range(state.stage_epoch, plan.spec.epochs):
            self._epoch(plan, setup, callbacks, state, val)
            stopped = state.patience_ran_out(plan.spec.patience)
            done = stopped or stage_epoch + 1 == plan.spec.epochs
            report.epochs_run = stage_epoch + 1
            if done:
                self._finish(plan, state, report, stopped)
            state.stage_epoch, state.stage_done = stage_epoch + 1, done
            state.plateau = plateau and [plateau.wait, float(plateau.best), plateau.cooldown_counter]
            if self.checkpoints is not None and self.checkpoints.due(done):
                self.checkpoints.save(state, [v.numpy() for v in self.classifier.model.variables],
                                      [v.numpy() for v in setup.optimizer.variables], self.best_weights)
            if done:
                callbacks.on_train_end()
                break

    def _epoch(self, plan: StagePlan, setup: StageSetup, callbacks, state: TrainState, val) -> None:
        """Train and validate one epoch and record it; if it is the epoch kept so far, its weights are kept."""
        started = time.perf_counter()
        callbacks.on_epoch_begin(state.global_epoch)
        logs = setup.loop.train_epoch(self.train_batches(plan, state.global_epoch))
        logs.update({f"val_{k}": v for k, v in setup.loop.evaluate(val).items()})
        logs["learning_rate"] = current_learning_rate(setup.optimizer)
        callbacks.on_epoch_end(state.global_epoch, logs)  # TensorBoard, reduce-on-plateau
        seconds = time.perf_counter() - started
        best_changed = state.record_epoch(plan.id, logs, seconds)
        log.info("%s epoch %d/%d  %s  (%.1fs)", plan.id, state.stage_epoch + 1, plan.spec.epochs,
                 "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "learning_rate"), seconds)
        if best_changed:
            self.best_weights = self.classifier.model.get_weights()

    def _finish(self, plan: StagePlan, state: TrainState, report: StageReport, stopped: bool) -> None:
        """End a stage with the kept weights of any stage, so it never leaves a clearly worse model."""
        if stopped:
            log.info("%s: early stop, no epoch within one standard error of the lowest validation loss for %d "
                     "epochs", plan.id, state.wait)
        if self.best_weights is not None:
            self.classifier.model.set_weights(self.best_weights)
        report.seconds, report.kept = state.stage_seconds(plan.id), dict(state.best) if state.best else None
        log.info("%s: kept epoch %d of the run (%s, val_loss %.4f, val_accuracy %.4f)", plan.id, state.best["epoch"],
                 state.best["stage"], state.best["val_loss"], state.best["val_accuracy"])
        state.stages.append(asdict(report))

    # === Refit ===

    def refit(self, training: Training) -> dict:
        """Train again from the starting weights on train + val: each stage the epochs :func:`refit_schedule`
        gives it, each epoch the optimizer steps of the validated one (and its learning rate under a plateau
        schedule), nothing validated. Returns what it did (run.json's ``choices["refit"]``)."""
        started = time.perf_counter()
        train, val = self.data.splits["train"], self.data.splits["val"]
        schedule, plans = refit_schedule(training.stages), {plan.id: plan for plan in self.plans}
        full_images = any(epochs and not plans[name].cached for name, epochs in schedule)
        both = Split([*train.paths, *val.paths], np.concatenate([train.labels, val.labels]),
                     np.concatenate([train.images, val.images]) if full_images else None)
        log.info("refit on train + val (%d images, %s): %s", len(both), self.refit_reason,
                 ", ".join(f"{name} {epochs} epoch(s)" for name, epochs in schedule))
        for variable, value in zip(self.classifier.model.variables, self.initial):
            variable.assign(value)
        features = self._refit_features()
        epoch, logs = 0, {}
        for name, epochs in schedule:
            plan = plans[name]
            setup = self._start_over(plan) if epochs else None
            rates = [row["learning_rate"] for row in training.history if row["stage"] == name]
            examples, drop = plan.passes * len(train), self.placement.replicas > 1
            for stage_epoch in range(epochs):
                epoch_started = time.perf_counter()
                if plan.spec.schedule == "plateau":
                    setup.optimizer.learning_rate = rates[stage_epoch]
                order = refit_order(len(both), examples, self.recipe.seed, epoch)
                dataset = (feature_batches(features[plan.cut], both, self.recipe, order, epoch, drop) if plan.cached
                           else image_dataset(both, self.recipe, order, drop))
                logs = setup.loop.train_epoch(dataset)
                epoch += 1
                log.info("refit %s epoch %d/%d  loss %.4f  accuracy %.4f  (%.1fs)", name, stage_epoch + 1, epochs,
                         logs["loss"], logs["accuracy"], time.perf_counter() - epoch_started)
        return {"done": True, "why": self.refit_reason, "train_images": len(both),
                "epochs": [{"stage": name, "epochs": epochs} for name, epochs in schedule],
                "final_loss": logs.get("loss"), "final_accuracy": logs.get("accuracy"),
                "seconds": round(time.perf_counter() - started, 2)}

    def _refit_features(self) -> dict[int, CutFeatures]:
        """Each cached cut's features of train + val: the rows of both in the shared tensors, the training
        images' augmented copies and the validation images' (computed now)."""
        features, lower = {}, None
        for cut in self.cached_cuts():
            train = self.features[cut][0]
            copies = self._augmented(self.feature_model(cut, lower), cut, lower, "val")
            features[cut] = CutFeatures(train.shared, np.concatenate([train.rows, self.rows["val"]]),
                                        [np.concatenate(pair, axis=1) for pair in zip(train.extra, copies)])
            features[cut].hold(self.store.arrays)
            lower = cut
        return features

    def _start_over(self, plan: StagePlan) -> StageSetup:
        """The stage's setup with its optimizer as built and the stage's layers trainable: the validated run's
        (its traced loop serves batches of the same shapes), or a new one after a resume."""
        setup = self.setups.get(plan.index)
        if setup is None:
            return self.setup(plan)
        set_trainable(self.classifier, self.recipe, plan.spec)
        for variable, value in zip(setup.optimizer.variables, setup.start):
            variable.assign(value)
        return setup
