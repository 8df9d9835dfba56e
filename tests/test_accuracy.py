"""The bundled recipe's defaults against a linear probe of the same frozen features, on a small folder of
full-size photos: a head trained to convergence, with an L2 strength cross-validated on the training photos,
then refit on every photo as the probe is, must score at least what the probe does."""
import json

import numpy as np
import pytest

from tlkit import load_recipe, override, run
from tlkit.images import decode_all

SIZE = 160


def _photos(root):
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    files = [sorted(c.iterdir()) for c in classes]
    labels = np.concatenate([np.full(len(f), k) for k, f in enumerate(files)])
    pixels, _, ok = decode_all([p for f in files for p in f], SIZE, root.name)
    return pixels, labels[ok]


def _probe_accuracy(train, test, weights_dir):
    """scikit-learn's LogisticRegression (defaults) on the frozen base's average-pooled features."""
    import keras
    from sklearn.linear_model import LogisticRegression
    base = keras.applications.MobileNetV2(include_top=False, alpha=0.35, weights=None, pooling="avg",
                                          input_shape=(SIZE, SIZE, 3))
    base.load_weights(weights_dir / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5")
    (x, y), (tx, ty) = [(base.predict(p.astype(np.float32) / 127.5 - 1, batch_size=64, verbose=0), labels)
                        for p, labels in (train, test)]
    return LogisticRegression(max_iter=5000).fit(x, y).score(tx, ty)


def test_defaults_score_at_least_a_linear_probe_on_25_photos_per_class(catsdogs, weights_dir, tmp_path):
    """Measured: the defaults before issue 14 scored 0.840 against the probe's 0.896 (5.6 points below); a head
    to convergence with the probe's L2 0.884 (1.2 below: the probe trains on all 50 photos, tlkit on the 40
    outside validation); with the refit on all 50, 0.890; with the L2 cross-validated, 0.900."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "test").symlink_to(catsdogs / "test", target_is_directory=True)
    for name in ("cats", "dogs"):  # the first 25 photos of each class by name
        (data / "train" / name).mkdir(parents=True)
        for photo in sorted((catsdogs / "train" / name).iterdir())[:25]:
            (data / "train" / name / photo.name).symlink_to(photo)
    recipe = override(load_recipe("mobilenet_v2"), ["alpha=0.35", f"image_size={SIZE}"])
    result = run(recipe, tmp_path / "run", data=str(data), weights_dir=str(weights_dir), export=False)
    tlkit = result.metrics["test"]["accuracy"]
    probe = _probe_accuracy(_photos(data / "train"), _photos(data / "test"), weights_dir)
    print(f"test accuracy on {result.metrics['test']['images']} photos: tlkit {tlkit:.3f}, linear probe {probe:.3f}")
    assert tlkit >= probe, f"test accuracy: tlkit {tlkit:.3f}, linear probe {probe:.3f}"

    choices = json.loads((result.folder / "run.json").read_text())["choices"]
    assert choices["refit"]["done"] and choices["refit"]["train_images"] == 50
    stages = choices["stages"]
    chosen = choices["head_l2"]
    assert chosen["rule"].startswith("5-fold cross-validation") and chosen["images"] == stages[0]["train_images"]
    assert chosen["c"] in chosen["heldout_accuracy"] or str(chosen["c"]) in chosen["heldout_accuracy"]
    assert stages[0]["head_l2"] == stages[1]["head_l2"] == pytest.approx(1 / (2 * chosen["c"] * chosen["images"]))
    assert stages[0]["steps_per_epoch"] * stages[0]["epochs_run"] >= 3000  # the head to convergence
