"""Every base: named blocks select the intended layers, and a fine-tuning step trains only those."""
import numpy as np
import pytest

from tlkit import FineTune, load_recipe, override
from tlkit.backbones import BACKBONES
from tlkit.model import build_classifier, set_trainable
from tlkit.training.optim import OPTIMIZERS
from tlkit.training.loop import loss_for
from tlkit.weights import ResolvedWeights

RANDOM = ResolvedWeights("none", None)

# base, size, alpha, unfreeze_blocks, expected first unfrozen layer, expected block names at the top
CASES = [
    ("vgg16", 32, None, 1, "block5_conv1", ["block4", "block5"]),
    ("resnet50", 32, None, 3, "conv5_block1_1_conv", ["conv5_block2", "conv5_block3"]),
    ("mobilenet", 32, 0.25, 2, "conv_pad_12", ["block_12", "block_13"]),
    ("mobilenet_v2", 32, 0.35, 2, "block_16_expand", ["block_16", "top"]),
]


@pytest.mark.parametrize("base,size,alpha,blocks,first,top_names", CASES)
def test_named_blocks_select_the_intended_layers(base, size, alpha, blocks, first, top_names):
    model = BACKBONES[base].build(size, alpha)
    groups = BACKBONES[base].blocks(model)
    assert groups[0][0] == ("block1" if base == "vgg16" else "stem")
    assert [name for name, _ in groups[-2:]] == top_names
    assert sum(len(layers) for _, layers in groups) == len(model.layers) - 1  # every layer, once
    recipe = override(load_recipe("quickstart"), [f"base={base}", f"alpha={alpha}", f"image_size={size}"])
    stage = FineTune(epochs=1, unfreeze_blocks=blocks)
    classifier = build_classifier(recipe, 3, RANDOM)
    cut = set_trainable(classifier, recipe, stage)
    assert classifier.base.layers[cut].name == first
    trainable = [layer.name for layer in classifier.base.layers if layer.trainable and layer.weights]
    expected = [name for _, layers in groups[-blocks:] for name in layers
                if classifier.base.get_layer(name).weights and "bn" not in name.lower()]
    assert trainable == expected


@pytest.mark.parametrize("base,size,alpha,blocks,first,top_names", CASES[:2])
def test_one_fine_tuning_step_changes_only_unfrozen_layers(base, size, alpha, blocks, first, top_names):
    recipe = override(load_recipe("quickstart"), [f"base={base}", f"alpha={alpha}", f"image_size={size}"])
    classifier = build_classifier(recipe, 3, RANDOM)
    set_trainable(classifier, recipe, FineTune(epochs=1, unfreeze_blocks=blocks))
    model = classifier.model
    model.compile(OPTIMIZERS["adam"](1e-3), loss_for(recipe))
    before = {w.path: w.numpy() for w in model.weights}
    rng = np.random.default_rng(0)
    model.train_on_batch(rng.uniform(0, 255, (4, size, size, 3)).astype("float32"), np.array([0, 1, 2, 0]))
    changed = {w.path for w in model.weights if not np.array_equal(before[w.path], w.numpy())}
    assert changed and changed <= {w.path for w in model.trainable_weights}
    first_layer = classifier.base.get_layer(first)
    assert {w.path for w in first_layer.weights} <= changed
    assert {w.path for w in classifier.head.weights} <= changed


def test_unknown_unfreeze_layer_lists_block_starts():
    from tlkit import TlkitError
    recipe = override(load_recipe("quickstart"), ["image_size=32", "stage2.unfreeze_blocks=null",
                                                  "stage2.unfreeze_from=block_99_expand"])
    classifier = build_classifier(recipe, 3, RANDOM)
    with pytest.raises(TlkitError, match="not a layer of mobilenet_v2; block starts: Conv1, expanded_conv"):
        set_trainable(classifier, recipe, recipe.stages[1])
