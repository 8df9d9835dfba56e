"""Two-stage training on real photos with real ImageNet weights: what moves, what must not, and whether
pretrained features pay off."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tlkit import load_recipe, override, run
from tlkit.model import cut_index, feature_map, head_logits, pooled
from tlkit.session import prepare
from tlkit.training.distribute import place
from tlkit.training.refit import refit_choice, refit_order, refit_schedule
from tlkit.training.stage import FULL_FORWARD, StagePlan
from tlkit.training.state import StageReport


def _recipe(*sets):
    return override(load_recipe("quickstart"), ["image_size=128", "stage1.epochs=10", "stage2.epochs=2",
                                                "stage2.learning_rate=1e-4", *sets])


def _weights(model):
    return {w.path: w.numpy() for w in model.weights}


@pytest.mark.parametrize("base,alpha,unfreeze", [("mobilenet_v2", 0.35, "stage2.unfreeze_blocks=3"),
                                                 ("mobilenet", 0.25, "stage2.unfreeze_blocks=2")])
def test_stages_move_only_what_they_unfreeze(base, alpha, unfreeze, flowers_small, weights_dir, tmp_path,
                                             monkeypatch):
    monkeypatch.setenv("TLKIT_WEIGHTS_DIR", str(weights_dir))
    recipe = _recipe(f"base={base}", f"alpha={alpha}", "weights=imagenet", unfreeze)
    session = prepare(recipe, flowers_small, cache_dir=tmp_path / "cache", placement=place("cpu", "float32"))
    base_model = session.classifier.base
    start = _weights(base_model)

    session.trainer(override(recipe, ["stage2.epochs=0"])).run()
    after_one = _weights(base_model)
    assert all(np.array_equal(start[k], after_one[k]) for k in start), "stage 1 changed the frozen base"

    trainer = session.trainer(override(recipe, ["stage1.epochs=0"]))
    trainer.run()
    after_two = _weights(base_model)
    cut = cut_index(recipe, base_model, recipe.stages[1])
    frozen = {w.path for layer in base_model.layers[:cut] for w in layer.weights}
    bn_stats = {w.path for layer in base_model.layers if isinstance(layer, keras.layers.BatchNormalization)
                for w in (layer.moving_mean, layer.moving_variance)}
    unfrozen_kernels = {w.path for layer in base_model.layers[cut:] if layer.trainable for w in layer.trainable_weights}
    changed = {k for k in start if not np.array_equal(after_one[k], after_two[k])}
    assert frozen and not changed & frozen, "stage 2 changed layers below the cut"
    assert bn_stats and not changed & bn_stats, "BatchNorm moving statistics moved"
    assert changed and changed <= unfrozen_kernels
    assert len(changed) >= len(unfrozen_kernels) // 2

    # the evaluation's logits and pooled features, read from the cache through the trained top, are the model's own
    model, val = session.classifier.model, session.data.splits["val"]
    maps = feature_map(model, val.images[:8].astype(np.float32))
    logits, features = (a[:8] for a in trainer.outputs()["val"])
    np.testing.assert_allclose(logits, head_logits(model, maps), atol=1e-4)
    np.testing.assert_allclose(features, pooled(maps), atol=1e-4)


@pytest.fixture(scope="module")
def pretrained_run(flowers_small, weights_dir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLKIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return run(_recipe("weights=imagenet"), tmp_path_factory.mktemp("runs") / "pretrained",
                   data=str(flowers_small), weights_dir=str(weights_dir))


def test_pretrained_beats_random_init_by_15_points(pretrained_run, flowers_small, tmp_path):
    scratch = run(_recipe("weights=none", "random_init=as_recipe"), tmp_path / "scratch", data=str(flowers_small),
                  export=False)
    pretrained, random_init = pretrained_run.metrics["val"]["accuracy"], scratch.metrics["val"]["accuracy"]
    print(f"pretrained {pretrained:.3f} vs random init {random_init:.3f}")
    assert pretrained >= random_init + 0.15
    assert pretrained >= 0.5  # five classes: chance is 0.2


def test_run_folder_holds_everything(pretrained_run):
    folder = pretrained_run.folder
    for name in ("recipe.json", "classes.json", "split.csv", "skipped.csv", "history.csv", "metrics.json",
                 "run.json", "model.keras"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "classes.json").read_text()) == ["daisy", "dandelion", "rose", "sunflower", "tulip"]
    history = (folder / "history.csv").read_text().splitlines()
    assert history[0].startswith("stage,epoch,") and any(row.startswith("2:fine_tune") for row in history[1:])
    info = json.loads((folder / "run.json").read_text())
    assert [s["mode"] for s in info["stages"]] == ["cached", "cached"]  # one copy per image: no flip
    assert info["weights"]["loaded"].endswith("0.35_224_no_top.h5")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["accuracy"] == pretrained_run.metrics["val"]["accuracy"]
    # the kept epoch is the latest within one standard error of the lowest validation loss; the val figures are
    # of its weights, whose temperature (fitted on validation) can only lower that loss
    column = history[0].split(",")
    rows = [dict(zip(column, row.split(","))) for row in history[1:]]
    loss, se = [float(r["val_loss"]) for r in rows], [float(r["val_loss_se"]) for r in rows]
    lowest = int(np.argmin(loss))
    assert info["best"]["epoch"] == max(i + 1 for i, v in enumerate(loss) if v <= loss[lowest] + se[lowest])
    assert metrics["val"]["loss"] <= info["best"]["val_loss"] * (1 + 1e-3)
    choices = info["choices"]
    assert choices["stages"][0]["steps_per_epoch"] * 10 >= 3000  # the head's min_steps


def test_a_run_refits_the_kept_schedule_on_train_and_val_and_says_what_its_figures_are_of(pretrained_run):
    from tlkit.evaluation.evaluate import evaluate
    from tlkit.evaluation.report import text_report
    folder = pretrained_run.folder
    info = json.loads((folder / "run.json").read_text())
    refit, counts = info["choices"]["refit"], info["data"]["counts"]
    assert refit["done"] and refit["why"].startswith("auto: every stage trained on cached features")
    assert refit["train_images"] == counts["train"] + counts["val"]
    kept = info["best"]
    replayed = [(e["stage"], e["epochs"]) for e in refit["epochs"]]
    assert replayed == refit_schedule([StageReport(**stage) for stage in info["stages"]])
    assert dict(replayed)[kept["stage"]] == kept["stage_epoch"] > 0  # up to the kept epoch, in its stage
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["refit"] is True
    assert metrics["val"]["loss"] <= kept["val_loss"] * (1 + 1e-3)  # held out: the validated model's figures
    confidence = json.loads((folder / "confidence.json").read_text())
    assert confidence["fit"]["fitted_on"].startswith("the validated model's predictions")

    again = evaluate(folder, "val")  # the saved model trained on val: the figures say so
    assert again.caveat.startswith("model.keras was refit on train + val")
    assert "NOTE: model.keras was refit" in text_report(again.to_dict())
    assert "before the refit on train + val" in (folder / "report.html").read_text()  # the run's: validated


def test_refit_replays_the_epochs_that_led_to_the_kept_weights():
    def stage(name, kept_stage, kept_epoch):
        return StageReport(name, "cached", "", None, 0, 0, kept={"stage": kept_stage, "stage_epoch": kept_epoch})

    head, tune, again = "1:feature_extraction", "2:fine_tune", "3:fine_tune"
    # kept in the last stage: each stage up to the epoch the next one started from
    assert refit_schedule([stage(head, head, 7), stage(tune, tune, 4)]) == [(head, 7), (tune, 4)]
    # the fine-tune never came within a standard error of the head's best: its epochs are dropped
    assert refit_schedule([stage(head, head, 7), stage(tune, head, 7)]) == [(head, 7), (tune, 0)]
    # stage 3 started from the head's weights (stage 2 dropped) and kept its own second epoch
    assert refit_schedule([stage(head, head, 5), stage(tune, head, 5), stage(again, again, 2)]) == [
        (head, 5), (tune, 0), (again, 2)]

    order = refit_order(40, 96, seed=1, epoch=3)  # the validated epoch's 96 examples, drawn from 40 images
    assert len(order) == 96 and set(np.bincount(order, minlength=40)) <= {2, 3}
    assert np.array_equal(order, refit_order(40, 96, seed=1, epoch=3))


def test_refit_is_automatic_where_every_stage_trains_on_cached_features():
    recipe = load_recipe("mobilenet_v2")

    def plans(*modes):
        return [StagePlan(k, spec, 0, None, mode, "") for k, (spec, mode) in enumerate(zip(recipe.stages, modes))]

    assert refit_choice(recipe, plans("cached x2", "cached x2"))[0]
    refits, why = refit_choice(recipe, plans("cached x2", FULL_FORWARD))
    assert not refits and "refit=true refits anyway" in why
    assert refit_choice(override(recipe, ["refit=true"]), plans("cached x2", FULL_FORWARD)) == (True, "refit=true")
    assert refit_choice(override(recipe, ["refit=false"]), plans("cached x2", "cached x2")) == (False, "refit=false")


def test_saved_model_answers_raw_images_like_the_keras_model(pretrained_run, shared):
    loaded = tf.saved_model.load(str(pretrained_run.export))
    model = keras.saving.load_model(pretrained_run.folder / "model.keras")
    from tlkit.images import decode_image
    photos = sorted((shared / "data" / "imagenet_samples").glob("*.jpg"))
    answer = loaded.signatures["serving_default"](images=tf.constant([p.read_bytes() for p in photos]))
    probabilities = answer["probabilities"].numpy()
    assert probabilities.shape == (len(photos), 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    pixels = np.stack([decode_image(p, 128) for p in photos])
    from tlkit.evaluation.evaluate import keras_answers
    from tlkit.serving.signatures import Confidence
    calibrated = keras_answers(model, pixels, Confidence.read(pretrained_run.folder))["probabilities"]
    np.testing.assert_allclose(calibrated, probabilities, atol=2e-2)
