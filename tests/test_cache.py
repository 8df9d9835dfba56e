"""Cached features: the same model as a full forward pass, reused only when nothing they depend on changed."""
import json
from pathlib import Path

import numpy as np
import pytest

from tlkit import load_recipe, override, run


def _recipe(*sets):
    return override(load_recipe("quickstart"), [
        "weights=imagenet", "image_size=96", "augment.flip=none", "head.dropout=0", "batch_size=16",
        "stage1.epochs=2", "stage2.epochs=2", "stage2.learning_rate=1e-4", "stage2.unfreeze_blocks=3",
        "stage1.min_steps=40", "refit=true", *sets])  # 2 passes per head epoch in both modes, cheaply; both refit


def _final_weights(result):
    import keras
    return [w.numpy() for w in keras.saving.load_model(result.folder / "model.keras").weights]


@pytest.fixture(scope="module")
def cached_run(flowers_small, weights_dir, tmp_path_factory):
    return run(_recipe(), tmp_path_factory.mktemp("r") / "cached", data=str(flowers_small),
               weights_dir=str(weights_dir), cache_dir=str(tmp_path_factory.mktemp("cache")), export=False)


def test_cached_and_full_forward_training_give_the_same_model(cached_run, flowers_small, weights_dir, tmp_path):
    plain = run(_recipe("cache=false"), tmp_path / "plain", data=str(flowers_small), weights_dir=str(weights_dir),
                export=False)
    info = [json.loads((r.folder / "run.json").read_text()) for r in (cached_run, plain)]
    assert [s["mode"] for s in info[0]["stages"]] == ["cached", "cached"]
    assert [s["mode"] for s in info[1]["stages"]] == ["full forward", "full forward"]
    cached, full = _final_weights(cached_run), _final_weights(plain)
    assert [w.shape for w in cached] == [w.shape for w in full]
    worst = max(float(np.max(np.abs(c - f))) for c, f in zip(cached, full))
    print(f"largest weight difference cached vs full forward: {worst:.2e}")
    assert worst < 1e-3
    from tlkit.model import build_classifier
    from tlkit.weights import resolve_weights
    recipe = _recipe()
    start = build_classifier(recipe, 5, resolve_weights(recipe.base, recipe.alpha, recipe.size, "imagenet",
                                                        str(weights_dir))).model
    moved = [w.path for w, final in zip(start.weights, cached) if not np.allclose(w.numpy(), final)]
    assert any(p.startswith("head/") for p in moved) and any(p.startswith("block_16") for p in moved)
    history = [(r.folder / "history.csv").read_text().splitlines() for r in (cached_run, plain)]
    assert len(history[0]) == len(history[1]) == 5
    assert cached_run.metrics["val"]["accuracy"] == pytest.approx(plain.metrics["val"]["accuracy"], abs=0.03)


def test_cache_is_reused_only_when_nothing_changed(cached_run, flowers_small, weights_dir, tmp_path):
    cache_dir = json.loads((cached_run.folder / "run.json").read_text())["cache"][0]["folder"].rsplit("/", 1)[0]
    again = run(_recipe(), tmp_path / "again", data=str(flowers_small), weights_dir=str(weights_dir),
                cache_dir=cache_dir, export=False)
    events = json.loads((again.folder / "run.json").read_text())["cache"]
    assert [e["event"] for e in events] == ["reused"] * 2  # every image at the fine-tuning cut and the output
    moved = run(_recipe("stage2.unfreeze_blocks=2", "stage1.epochs=1", "stage2.epochs=1"),
                tmp_path / "moved", data=str(flowers_small), weights_dir=str(weights_dir), cache_dir=cache_dir,
                export=False)
    events = json.loads((moved.folder / "run.json").read_text())["cache"]
    assert [e["event"] for e in events] == ["computed", "reused"]  # new cut, same top


def test_features_stream_from_disk_beyond_the_memory_budget(flowers_small, weights_dir, tmp_path):
    result = run(_recipe("stage1.epochs=1", "stage2.epochs=1"), tmp_path / "disk", data=str(flowers_small),
                 weights_dir=str(weights_dir), cache_dir=str(tmp_path / "c"), cache_memory=0.0, export=False)
    events = json.loads((result.folder / "run.json").read_text())["cache"]
    assert {e["where"] for e in events} == {"disk (memory-mapped)"}
    assert result.metrics["val"]["accuracy"] > 0.4
    _cache_command_lists_and_clears(tmp_path / "c", events)


def _cache_command_lists_and_clears(cache_dir, events):
    import os
    import time

    from click.testing import CliRunner

    from tlkit.cli import cli

    (cache_dir / "0123.tmp").mkdir()  # a computation that never finished
    listed = CliRunner().invoke(cli, ["cache", "list", "--cache-dir", str(cache_dir)])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[-1].startswith("4 entries")
    for event in events:
        assert any(line.endswith(f"features {event['what']}  {event['folder']}") for line in lines)
    assert sum("decoded images, 96 px, of " in line for line in lines) == 1
    assert sum("features (incomplete)" in line for line in lines) == 1

    old = Path(events[0]["folder"]) / "meta.json"
    os.utime(old, (time.time() - 3 * 86400,) * 2)
    cleared = CliRunner().invoke(cli, ["cache", "clear", "--cache-dir", str(cache_dir), "--older-than", "2"])
    assert cleared.exit_code == 0 and cleared.output.startswith("removed 1 entries")
    assert not old.parent.exists() and Path(events[1]["folder"]).exists()
    cleared = CliRunner().invoke(cli, ["cache", "clear", "--cache-dir", str(cache_dir)])
    assert cleared.output.startswith("removed 3 entries")
    assert CliRunner().invoke(cli, ["cache", "list", "--cache-dir", str(cache_dir)]).output == "0 entries, 0.0 MB\n"


def test_each_flip_replica_holds_the_base_output_of_that_flip_at_every_cut(flowers_small, weights_dir, tmp_path):
    import keras
    import tensorflow as tf

    from tlkit.session import prepare
    from tlkit.training.features import frontier

    recipe = _recipe("augment.flip=horizontal", "stage2.unfreeze_blocks=2")
    session = prepare(recipe, flowers_small, weights_dir=str(weights_dir), cache_dir=tmp_path)
    classifier, data = session.classifier, session.data
    trainer = session.trainer()
    trainer.prepare_features()
    base, images = classifier.base, data.splits["train"].images[:37].astype("float32")
    (low, high) = sorted(trainer.features)
    assert high == len(base.layers)
    below = keras.Model(base.input, frontier(base, low)[0])
    for replica, pixels in enumerate((images, images[:, :, ::-1])):
        x = classifier.preprocess(tf.constant(pixels))
        maps = base(x, training=False).numpy()
        expected = {low: below(x, training=False).numpy(), high: maps.mean(axis=(1, 2))}  # the head's avg pool
        for cut, want in expected.items():
            got = trainer.features[cut][0].take(replica, np.arange(37))[0]
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
    train, val = trainer.features[high]
    assert (train.replicas, val.replicas) == (2, 1)  # validation images: the unaugmented copy only
    assert train.shared is val.shared and len(train.shared[0]) == sum(data.counts().values())  # one entry, all images
    # every trainer of the session (duplicate search, training, lr-find) computes features with the same traced models
    assert session.trainer().feature_model(low, None) is trainer.feature_model(low, None)
    assert session.trainer().feature_model(high, low) is trainer.feature_model(high, low)


def test_inference_takes_models_of_several_inputs():
    """A cut between layers can leave several tensors (NASNet's cells take two): the traced forward of the
    model above it takes them as a list, batches of any size."""
    import keras

    from tlkit.model import inference
    a, b = keras.Input((4, 4, 3)), keras.Input((4, 4, 2))
    model = keras.Model([a, b], keras.layers.Concatenate()([a, b * 2.0]))
    x = [np.random.default_rng(0).random((n, 4, 4, c), np.float32) for n, c in ((5, 3), (5, 2))]
    np.testing.assert_allclose(inference(model)(x).numpy(), np.asarray(model(x)), rtol=1e-6)


def test_features_held_in_the_graph_give_the_batches_numpy_reads(tmp_path):
    """Within the memory budget a split's features are gathered inside the graph, beyond it through NumPy: the
    same batches either way (order, each image's replica, labels), several tensors per image included."""
    from tlkit.data import Split
    from tlkit.storage import ArrayStore
    from tlkit.training.datasets import as_dataset, epoch_order, feature_batches
    from tlkit.training.features import CutFeatures

    rng = np.random.default_rng(0)
    shapes = [(2, 3), (5,)]  # two tensors cross the cut
    shared = [rng.random((9, *s), np.float32) for s in shapes]  # every image of the dataset
    extra = [rng.random((3, 7, *s), np.float32) for s in shapes]  # three augmented replicas of the split's 7
    rows = np.array([8, 1, 4, 6, 2, 0, 7])
    split = Split([f"{i}.png" for i in range(7)], np.arange(7) % 3)
    recipe = override(load_recipe("quickstart"), ["batch_size=3"])
    held, read = CutFeatures(shared, rows, extra), CutFeatures(shared, rows, extra)
    assert held.hold(ArrayStore(tmp_path, budget_bytes=10**6))
    assert not read.hold(ArrayStore(tmp_path, budget_bytes=100)) and not read.tables
    order = epoch_order(len(split), recipe.seed, 3, passes=2)
    for kwargs in ({"order": order, "epoch": 3}, {}):  # training (a replica drawn per image) and validation
        got, want = (list(as_dataset(feature_batches(f, split, recipe, **kwargs)).as_numpy_iterator())
                     for f in (held, read))
        assert len(got) == len(want) == -(-len(kwargs.get("order", rows)) // 3)
        for (inputs, labels), (expected_inputs, expected_labels) in zip(got, want):
            for a, b in zip(inputs, expected_inputs):
                np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(labels, expected_labels)
        vectors = np.concatenate([inputs[1] for inputs, _ in got])
        if kwargs:
            assert not np.array_equal(vectors, shared[1][rows[order]])  # augmented replicas are read too
        else:
            np.testing.assert_array_equal(vectors, shared[1][rows])  # each image once, unaugmented, in order
