"""The per-stage parameter summary agrees with Keras' own counts, for two bases, both stages, both BN modes."""
import re

import keras
import pytest

from tlkit import load_recipe, override
from tlkit.model import build_classifier, set_trainable
from tlkit.training.summary import parameter_summary
from tlkit.weights import resolve_weights


def _keras_counts(model) -> dict:
    """Total, trainable and non-trainable parameters as printed by ``model.summary()``."""
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(lines))
    return {name: int(re.search(rf"{label} params: ([\d,]+)", text).group(1).replace(",", ""))
            for name, label in [("total", "Total"), ("trainable", " Trainable"), ("frozen", "Non-trainable")]}


@pytest.mark.parametrize("base,alpha,sets", [
    ("mobilenet_v2", 0.35, ["stage2.unfreeze_blocks=3"]),
    ("mobilenet", 0.25, ["stage2.unfreeze_blocks=2", "batchnorm=train"]),
])
def test_summary_matches_keras_counts_in_both_stages(base, alpha, sets, weights_dir):
    recipe = override(load_recipe("quickstart"), [f"base={base}", f"alpha={alpha}", "image_size=64",
                                                  "weights=imagenet", *sets])
    weights = resolve_weights(recipe.base, recipe.alpha, recipe.size, recipe.weights, str(weights_dir))
    classifier = build_classifier(recipe, 5, weights)
    model, base_model = classifier.model, classifier.base
    seen = []
    for index, stage in enumerate(recipe.stages):
        cut = set_trainable(classifier, recipe, stage)
        summary = parameter_summary(classifier, recipe.batchnorm, f"{index + 1}:{stage.kind}")
        assert summary.total == model.count_params()
        assert {"total": summary.total, "trainable": summary.trainable, "frozen": summary.frozen} == \
            _keras_counts(model)
        assert summary.trainable == sum(int(keras.ops.size(w)) for w in model.trainable_weights)
        expected = [layer.name for layer in base_model.layers[cut:] if layer.trainable_weights]
        assert summary.trainable_base_layers == expected
        assert all(base_model.get_layer(name).trainable for name in expected)
        assert f"batchnorm={recipe.batchnorm}" in summary.batchnorm
        bn = [n for n in expected if isinstance(base_model.get_layer(n), keras.layers.BatchNormalization)]
        assert bool(bn) == (recipe.batchnorm == "train" and index == 1)
        seen.append(summary)
        text = "\n".join(summary.lines())
        assert f"total {summary.total:,}, trainable {summary.trainable:,}, frozen {summary.frozen:,}" in text
    one, two = seen
    assert one.trainable_base_layers == [] and one.trainable == sum(
        int(keras.ops.size(w)) for w in classifier.head.trainable_weights)
    assert two.trainable > one.trainable and two.total == one.total and two.trainable_base_layers
