"""Training controls: schedules read back from the optimizer, reduce-on-plateau, discriminative rates, weight
decay, label smoothing, TensorBoard logs and same-seed reproducibility, on real photos and real weights."""
import csv
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tlkit import FeatureExtraction, FineTune, TlkitError, load_recipe, override, run
from tlkit.training.optim import SmoothedSparseCrossentropy, make_optimizer, stage_callbacks


def _rates_at(optimizer, steps):
    """The optimizer's own learning rate after each number of (zero-gradient) update steps in `steps`."""
    variable = keras.Variable(np.zeros(3, "float32"), name="w")
    rates = {}
    for step in sorted(steps):
        while int(optimizer.iterations) < step:
            optimizer.apply([keras.ops.zeros(3)], [variable])
        rates[step] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    return rates


@pytest.mark.parametrize("stage,expected", [
    (FeatureExtraction(epochs=10, learning_rate=0.01), {0: 0.01, 55: 0.01, 100: 0.01}),
    # 10 epochs x 10 steps, 2 warmup epochs: 0 -> 0.01 over 20 steps, then half a cosine to 0 over 80
    (FeatureExtraction(epochs=10, learning_rate=0.01, schedule="cosine", warmup_epochs=2),
     {0: 0.0, 10: 0.005, 20: 0.01, 60: 0.005, 100: 0.0}),
    (FeatureExtraction(epochs=10, learning_rate=0.01, schedule="cosine"), {0: 0.01, 50: 0.005, 100: 0.0}),
    (FeatureExtraction(epochs=10, learning_rate=0.01, schedule="step", step_every=3, step_factor=0.5),
     {0: 0.01, 29: 0.01, 30: 0.005, 59: 0.005, 60: 0.0025, 90: 0.00125}),
])
def test_schedules_give_the_expected_rate_at_chosen_steps(stage, expected):
    for optimizer_name in ("adam", "sgd"):
        optimizer = make_optimizer(stage.model_copy(update={"optimizer": optimizer_name}), steps_per_epoch=10)
        assert _rates_at(optimizer, expected) == pytest.approx(expected, abs=1e-9), optimizer_name


def test_recipe_accepts_controls_by_set_and_rejects_contradictions():
    recipe = override(load_recipe("quickstart"), [
        "stage2.schedule=cosine", "stage2.warmup_epochs=1", "stage2.optimizer=sgd",
        "stage2.weight_decay=1e-4", "stage2.label_smoothing=0.1", "stage2.base_learning_rate_ratio=0.1"])
    stage = recipe.stages[1]
    assert (stage.schedule, stage.warmup_epochs, stage.optimizer) == ("cosine", 1.0, "sgd")
    assert (stage.weight_decay, stage.label_smoothing, stage.base_learning_rate_ratio) == (1e-4, 0.1, 0.1)
    optimizer = make_optimizer(stage, 10)
    assert (type(optimizer).__name__, optimizer.momentum, optimizer.weight_decay) == ("SGD", 0.9, 1e-4)
    assert isinstance(optimizer._learning_rate, keras.optimizers.schedules.CosineDecay)
    # defaults keep the old behaviour: constant rate, Keras' own optimizer defaults
    default = load_recipe("quickstart").stages[0]
    assert default.schedule == "constant" and make_optimizer(default, 10).weight_decay is None
    assert make_optimizer(default.model_copy(update={"optimizer": "adamw"}), 10).weight_decay == 0.004
    for sets, message in [
        (["stage1.schedule=linear"], "'constant', 'plateau', 'cosine' or 'step'"),
        (["stage1.warmup_epochs=1"], "warmup_epochs applies to schedule=cosine"),
        (["stage1.schedule=plateau", "stage1.plateau_patience=3"], "must be below patience"),
        (["stage1.base_learning_rate_ratio=0.1"], "unknown recipe key"),
        (["stage2.base_learning_rate_ratio=2"], "less than or equal to 1"),
        (["stage2.label_smoothing=1"], "less than 1"),
    ]:
        with pytest.raises(TlkitError, match=message) as error:
            override(load_recipe("quickstart"), sets)
        assert "\n" not in str(error.value)


def _layers():
    base, head = keras.layers.Dense(4, name="base_dense"), keras.layers.Dense(2, name="head_dense")
    base.build((None, 3)), head.build((None, 4))
    return base, head


def test_weight_decay_scales_with_the_rate_and_skips_biases():
    base, head = _layers()
    for layer in (base, head):
        layer.kernel.assign(np.ones(layer.kernel.shape, "float32"))
        layer.bias.assign(np.ones(layer.bias.shape, "float32"))
    stage = FineTune(epochs=1, learning_rate=0.1, unfreeze_blocks=1, optimizer="adamw", weight_decay=0.5,
                     base_learning_rate_ratio=0.2)
    optimizer = make_optimizer(stage, 10, base.trainable_variables)
    variables = base.trainable_variables + head.trainable_variables
    optimizer.apply([keras.ops.zeros(v.shape) for v in variables], variables)  # zero gradient: decay only
    np.testing.assert_allclose(head.kernel.numpy(), 1 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(base.kernel.numpy(), 1 - 0.1 * 0.2 * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(head.bias.numpy(), 1.0)
    np.testing.assert_array_equal(base.bias.numpy(), 1.0)


@pytest.mark.parametrize("optimizer_name", ["adam", "rmsprop", "sgd"])
def test_discriminative_rates_scale_the_base_update_not_the_head(optimizer_name):
    """Adam and RMSprop normalise the gradient, so scaling gradients would not lower their step: the update is."""
    base, head = _layers()
    start = [v.numpy() for v in base.trainable_variables + head.trainable_variables]
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=v.shape).astype("float32") for v in start]

    def moves(ratio):
        for variable, value in zip(base.trainable_variables + head.trainable_variables, start):
            variable.assign(value)
        stage = FineTune(epochs=1, learning_rate=0.01, unfreeze_blocks=1, optimizer=optimizer_name,
                         base_learning_rate_ratio=ratio)
        optimizer = make_optimizer(stage, 10, base.trainable_variables)
        variables = base.trainable_variables + head.trainable_variables
        for _ in range(3):
            optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
        return [v.numpy() - s for v, s in zip(variables, start)]

    full, scaled = moves(1.0), moves(0.1)
    for i, (a, b) in enumerate(zip(full, scaled)):
        expected = a * 0.1 if i < 2 else a  # base kernel and bias, then head kernel and bias
        np.testing.assert_allclose(b, expected, rtol=1e-4, atol=2e-7)  # float32 rounding of weights ~1
    assert np.abs(full[0]).max() > 1e-3


def test_label_smoothing_matches_smoothed_one_hot_cross_entropy():
    probabilities = np.array([[0.7, 0.1, 0.1, 0.05, 0.05], [0.2, 0.2, 0.2, 0.2, 0.2]], "float32")
    labels = np.array([0, 3])
    loss = float(SmoothedSparseCrossentropy(0.1)(labels, probabilities))
    targets = np.full((2, 5), 0.1 / 5) + 0.9 * np.eye(5)[labels]
    assert loss == pytest.approx(float(np.mean(-(targets * np.log(probabilities)).sum(axis=1))), rel=1e-5)
    assert float(SmoothedSparseCrossentropy(0.0)(labels, probabilities)) == pytest.approx(
        float(keras.losses.SparseCategoricalCrossentropy()(labels, probabilities)), rel=1e-6)


def test_discriminative_optimizer_and_smoothed_loss_survive_save_and_load(tmp_path):
    import tlkit.training.optim  # noqa: F401  (registers the classes)
    inputs = keras.Input((3,))
    base, head = keras.layers.Dense(4, name="base_dense"), keras.layers.Dense(2, activation="softmax", name="head")
    model = keras.Model(inputs, head(base(inputs)))
    stage = FineTune(epochs=2, learning_rate=0.01, unfreeze_blocks=1, schedule="cosine", label_smoothing=0.2,
                     base_learning_rate_ratio=0.1)
    model.compile(make_optimizer(stage, 5, base.trainable_variables), SmoothedSparseCrossentropy(0.2))
    model.fit(np.ones((4, 3), "float32"), np.array([0, 1, 0, 1]), verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer).__name__ == "DiscriminativeAdam"
    assert loaded.optimizer.rate_scales == {"base_dense/kernel": 0.1, "base_dense/bias": 0.1}
    assert loaded.loss.label_smoothing == 0.2


def test_reduce_on_plateau_lowers_the_rate_read_back_from_the_optimizer():
    inputs = keras.Input((1,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    stage = FeatureExtraction(epochs=8, learning_rate=0.01, schedule="plateau", plateau_patience=2,
                              plateau_factor=0.5, patience=None)
    model.compile(make_optimizer(stage, 10), "mse")
    callbacks = keras.callbacks.CallbackList(stage_callbacks(stage), model=model)
    rates = []  # the rate each epoch trains with, read from the optimizer
    for epoch, val_loss in enumerate([1.0, 0.8, 0.9, 0.85, 0.7, 0.75, 0.8, 0.9]):
        rates.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
        callbacks.on_epoch_end(epoch, {"loss": 0.0, "val_loss": val_loss})
    # no lower val_loss after epochs 3 and 4 -> halved for epoch 5; again after epochs 6 and 7 -> epoch 8
    assert rates == pytest.approx([0.01, 0.01, 0.01, 0.01, 0.005, 0.005, 0.005, 0.0025])


# === Real runs: history, TensorBoard, parameter summaries, same seed same history ===

CONTROLS = ["weights=imagenet", "image_size=64", "stage1.epochs=4", "stage1.schedule=cosine",
            "stage1.warmup_epochs=1", "stage2.epochs=6", "stage2.learning_rate=1e-3",
            "stage2.schedule=plateau", "stage2.plateau_patience=1", "stage2.patience=none",
            "stage2.optimizer=adamw", "stage2.weight_decay=1e-4", "stage2.label_smoothing=0.1",
            "stage2.base_learning_rate_ratio=0.1",
            "stage1.min_steps=0", "head.l2=0"]  # plain epochs: the plateau below needs the fine-tuning to stall


def _run(out, flowers, weights_dir, cache_dir, *sets):
    recipe = override(load_recipe("quickstart"), CONTROLS + list(sets))
    return run(recipe, out, data=str(flowers), weights_dir=str(weights_dir), cache_dir=str(cache_dir), export=False,
               checkpoint_every=0)


def _history(result):
    with open(result.folder / "history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def controlled_run(flowers_small, weights_dir, tmp_path_factory):
    return _run(tmp_path_factory.mktemp("runs") / "a", flowers_small, weights_dir, tmp_path_factory.mktemp("cache"))


def test_history_records_the_rate_each_epoch_trained_with(controlled_run):
    rows = _history(controlled_run)
    rates = [float(r["learning_rate"]) for r in rows]
    # stage 1, cosine over 4 epochs (10 steps each: 156 images, batch 16) after 1 warmup epoch
    assert rates[:4] == pytest.approx([1e-3, 1e-3 * (1 + math.cos(math.pi / 3)) / 2,
                                       1e-3 * (1 + math.cos(2 * math.pi / 3)) / 2, 0.0], abs=1e-9)
    _assert_plateau_rates(rows[4:])


def _assert_plateau_rates(fine):
    """Stage 2, plateau: the rate drops tenfold after each epoch whose val_loss is not a new stage minimum."""
    expected, best, rate = [], math.inf, 1e-3  # 6 epochs at 1e-3 on 156 photos: val_loss stalls
    for row in fine:
        expected.append(rate)
        if float(row["val_loss"]) < best - 1e-4:
            best = float(row["val_loss"])
        else:
            rate *= 0.1
    assert [float(r["learning_rate"]) for r in fine] == pytest.approx(expected, rel=1e-5)
    assert expected[-1] < 1e-3, "no plateau happened, so the test proved nothing"
    return expected


def test_reduce_on_plateau_counts_on_across_a_resume(flowers_small, weights_dir, tmp_path, monkeypatch):
    from tlkit.errors import RunInterrupted
    from tlkit.training.loop import Loop

    train_epoch, calls = Loop.train_epoch, []

    def interrupted_in_stage_2(self, dataset):  # Ctrl-C after three plateau epochs are checkpointed
        calls.append(1)
        if len(calls) == 4 + 4:
            raise KeyboardInterrupt
        return train_epoch(self, dataset)

    monkeypatch.setattr(Loop, "train_epoch", interrupted_in_stage_2)
    with pytest.raises(RunInterrupted):
        _run(tmp_path / "run", flowers_small, weights_dir, tmp_path / "cache")
    monkeypatch.setattr(Loop, "train_epoch", train_epoch)
    resumed = _run(tmp_path / "run", flowers_small, weights_dir, tmp_path / "cache")
    rows = _history(resumed)
    assert len(rows) == 10
    _assert_plateau_rates(rows[4:])
    losses = [float(r["val_loss"]) for r in rows[4:]]
    assert losses[3] > min(losses[:3]), "the first resumed epoch set a new best: the counters were not needed"


def _scalars(folder):
    events = list(folder.glob("events.out.tfevents.*"))
    assert len(events) == 1, events
    found = {}
    for event in tf.compat.v1.train.summary_iterator(str(events[0])):
        for value in event.summary.value:
            found.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return found


def test_tensorboard_logs_per_stage_hold_the_epoch_scalars(controlled_run):
    rows = _history(controlled_run)
    stages = controlled_run.folder / "stages"
    assert sorted(p.name for p in stages.iterdir()) == ["1-feature_extraction", "2-fine_tune"]
    for name in ("1:feature_extraction", "2:fine_tune"):
        folder = stages / name.replace(":", "-")
        train, val = _scalars(folder / "train"), _scalars(folder / "validation")
        mine = [r for r in rows if r["stage"] == name]
        steps = [int(r["epoch"]) - 1 for r in mine]
        for tag, column, scalars in [("epoch_loss", "loss", train), ("epoch_accuracy", "accuracy", train),
                                     ("epoch_learning_rate", "learning_rate", train),
                                     ("epoch_loss", "val_loss", val), ("epoch_accuracy", "val_accuracy", val)]:
            assert sorted(scalars[tag]) == steps, (name, tag)
            assert [scalars[tag][s] for s in steps] == pytest.approx([float(r[column]) for r in mine], rel=1e-6)


def test_stage_summaries_are_logged_to_the_run_folder(controlled_run):
    info = json.loads((controlled_run.folder / "run.json").read_text())
    one, two = [s["parameters"] for s in info["stages"]]
    assert one["trainable_base_layers"] == [] and two["trainable_base_layers"][-1] == "Conv_1"
    assert one["total"] == two["total"] == one["trainable"] + one["frozen"] == two["trainable"] + two["frozen"]
    assert two["trainable"] > one["trainable"]
    text = (controlled_run.folder / "stages" / "2-fine_tune" / "parameters.txt").read_text()
    assert f"trainable {two['trainable']:,}" in text and "block_16_project" in text and "batchnorm=frozen" in text


def test_same_seed_gives_identical_history_and_records_the_environment(controlled_run, flowers_small, weights_dir,
                                                                       tmp_path):
    cache = json.loads((controlled_run.folder / "run.json").read_text())["cache"][0]["folder"].rsplit("/", 1)[0]
    again = _run(tmp_path / "b", flowers_small, weights_dir, cache)
    assert _history(again) == _history(controlled_run)
    assert again.metrics == controlled_run.metrics
    other = _run(tmp_path / "c", flowers_small, weights_dir, cache, "seed=7")
    assert [r["loss"] for r in _history(other)] != [r["loss"] for r in _history(controlled_run)]

    info = json.loads((again.folder / "run.json").read_text())
    assert info["seed"] == 1337 == json.loads((again.folder / "recipe.json").read_text())["seed"]
    assert set(info["versions"]) >= {"python", "tensorflow", "keras", "tlkit"}
    assert info["versions"]["tensorflow"] == tf.__version__ and info["versions"]["keras"] == keras.__version__
    machine = info["machine"]
    assert machine["cpu_cores"] >= 1 and machine["cpu"] and machine["memory_gb"] > 0
    assert "/device:CPU:0" in machine["devices"] and isinstance(machine["gpus"], list)
