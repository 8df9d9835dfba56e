"""Every base, on real photos with random init at small sizes: its preprocessing is Keras' own, its named blocks
select the intended layers, one fine-tuning step trains only the unfrozen layers and moves no frozen
normalisation statistic. One base per family also loads a weights file found offline by Keras' own name and then
computes what keras.applications' own ImageNet model computes, its cached features equal the full forward pass,
and one answers JPEG bytes through the SavedModel as Keras does. Also: LayerNorm under batchnorm="frozen",
registered bases, KerasHub presets, `tlkit bases` and int8 advice."""
import json
import logging
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from tlkit import FeatureExtraction, FineTune, Head, Recipe, TlkitError, load_recipe, override, register_backbone
from tlkit.backbones import BACKBONES, summarize_blocks
from tlkit.images import decode_image
from tlkit.model import Preprocess, build_classifier, set_trainable
from tlkit.recipe import get_backbone
from tlkit.runfolder import RunFolder
from tlkit.serving.signatures import Confidence
from tlkit.training.features import above_cut_model, feature_model
from tlkit.training.loop import loss_for
from tlkit.weights import ResolvedWeights, keras_models_dir, resolve_weights

RANDOM = ResolvedWeights("none", None)
# One base per family, the smallest: keras.applications application and module, the alpha it is tested at.
FAMILIES = {
    "mobilenet": ("MobileNet", "mobilenet", 0.25), "mobilenet_v2": ("MobileNetV2", "mobilenet_v2", 0.35),
    "mobilenet_v3_small": ("MobileNetV3Small", "mobilenet_v3", 0.75),
    "mobilenet_v3_large_minimalistic": ("MobileNetV3Large", "mobilenet_v3", None),
    "vgg16": ("VGG16", "vgg16", None), "resnet50": ("ResNet50", "resnet", None),
    "resnet50_v2": ("ResNet50V2", "resnet_v2", None), "inception_v3": ("InceptionV3", "inception_v3", None),
    "inception_resnet_v2": ("InceptionResNetV2", "inception_resnet_v2", None),
    "xception": ("Xception", "xception", None), "densenet121": ("DenseNet121", "densenet", None),
    "nasnet_mobile": ("NASNetMobile", "nasnet", None), "efficientnet_b0": ("EfficientNetB0", "efficientnet", None),
    "efficientnet_v2_b0": ("EfficientNetV2B0", "efficientnet_v2", None),
    "convnext_tiny": ("ConvNeXtTiny", "convnext", None)}
SERVED = {"convnext_tiny"}  # normalising inside, LayerNorm, custom layers and plain operations between layers


def _module(name: str) -> str:
    """The keras.applications module of a base's family."""
    for prefix, module in (("mobilenet_v3", "mobilenet_v3"), ("mobilenet_v2", "mobilenet_v2"),
                           ("mobilenet", "mobilenet"), ("efficientnet_v2", "efficientnet_v2"),
                           ("efficientnet", "efficientnet"), ("convnext", "convnext"), ("densenet", "densenet"),
                           ("nasnet", "nasnet"), ("inception_resnet", "inception_resnet_v2"),
                           ("inception", "inception_v3"), ("xception", "xception"), ("vgg", None)):
        if name.startswith(prefix):
            return module or name
    return "resnet_v2" if name.endswith("_v2") else "resnet"


@pytest.fixture(scope="module")
def photos(flowers_small):
    """Six real flower photos (two classes) at any size, decoded as training decodes them, float 0-255."""
    files = [f for folder in ("daisy", "rose") for f in sorted((flowers_small / folder).iterdir())[:3]]
    cache = {}

    def at(size: int) -> np.ndarray:
        if size not in cache:
            cache[size] = np.stack([decode_image(f, size) for f in files]).astype("float32")
        return cache[size]
    at.files = files
    return at


def _recipe(base, size, alpha=None, *sets):
    return override(load_recipe("quickstart"), [f"base={base}", f"alpha={alpha}", f"image_size={size}",
                                                "augment.flip=none", "head.dropout=0", *sets])


def _norm_variables(classifier, backbone) -> dict:
    norms = backbone.norm_layers()
    return {v.path: v.numpy() for layer in classifier.base._flatten_layers() if isinstance(layer, norms)
            for v in layer.weights}


def _one_step(classifier, recipe, pixels, labels):
    """One gradient step on the trainable weights (what the training loop takes), eagerly."""
    model = classifier.model
    variables = model.trainable_variables
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch([v.value for v in variables])  # only these: the frozen part needs no backward pass
        loss = loss_for(recipe)(tf.constant(labels), model(tf.constant(pixels), training=True))
    keras.optimizers.SGD(0.5).apply(tape.gradient(loss, variables), variables)


def _check_blocks_and_one_step(name, classifier, recipe, pixels) -> int:
    """Named blocks cover every layer once, as the record summarises them; unfreezing the top two trains exactly
    their layers, normalisation layers left frozen; one step changes nothing else and no normalisation weight
    or statistic. Returns the cut."""
    record, base, model = get_backbone(name), classifier.base, classifier.model
    groups = record.blocks(base)
    names = [block for block, _ in groups]
    if record.blocks_summary:
        assert summarize_blocks(groups) == record.blocks_summary
    assert len(set(names)) == len(names)
    assert [layer for _, layers in groups for layer in layers] == [layer.name for layer in base.layers[1:]]

    cut = set_trainable(classifier, recipe, FineTune(epochs=1, unfreeze_blocks=2))
    assert base.layers[cut].name == groups[-2][1][0]
    norms = record.norm_layers()
    expected = [n for _, layers in groups[-2:] for n in layers
                if base.get_layer(n).weights and not isinstance(base.get_layer(n), norms)]
    assert [layer.name for layer in base.layers if layer.trainable_weights] == expected
    assert not any(layer.trainable_weights for layer in base._flatten_layers() if isinstance(layer, norms))

    before = {v.path: v.numpy() for v in model.weights}
    norm_before = _norm_variables(classifier, record)
    _one_step(classifier, recipe, pixels, [0, 0, 0, 1, 1, 1])
    changed = {v.path for v in model.weights if not np.array_equal(before[v.path], v.numpy())}
    assert changed and changed <= {v.path for v in model.trainable_weights}
    assert all(np.array_equal(value, before[path]) for path, value in norm_before.items())
    return cut


def _check_cached_features(classifier, cut, pixels):
    """The cut's cached tensors through the layers above it give the full forward pass."""
    cached = feature_model(classifier, cut)(pixels, training=False)
    np.testing.assert_allclose(np.asarray(above_cut_model(classifier, cut)(cached, training=False)),
                               np.asarray(classifier.model(pixels, training=False)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_preprocessing_is_keras_own_on_real_pixels(name, photos):
    record = BACKBONES[name]
    pixels = photos(64)
    expected = np.asarray(getattr(keras.applications, _module(name)).preprocess_input(pixels.copy()))
    got = np.asarray(Preprocess.for_base(record)(pixels))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
    if record.preprocessing == "raw":  # the model normalises inside; Keras' own preprocess_input passes through
        np.testing.assert_array_equal(got, pixels)


@pytest.mark.parametrize("name", sorted(set(BACKBONES) - set(FAMILIES)))
def test_every_other_base_builds_with_its_blocks_and_takes_one_step(name, photos):
    """The larger members of each family: build, blocks and one fine-tuning step (their family's smallest member
    carries the other checks)."""
    record = BACKBONES[name]
    size = max(32, record.min_size)
    recipe = _recipe(name, size, 1.0 if record.alphas else None)
    classifier = build_classifier(recipe, 2, RANDOM)
    assert classifier.base.count_params() == record.params
    _check_blocks_and_one_step(name, classifier, recipe, photos(size))


def _save_keras_weights_file(model, path: Path) -> None:
    """The weights in the format of Keras' application files (legacy HDF5, matched by layer order)."""
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        save_weights_to_hdf5_group(f, model)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_base_loads_keras_file_computes_as_keras_caches_and_serves(name, photos, monkeypatch, tmp_path):
    """A weights file under Keras' own name in $KERAS_HOME/models is found offline and loaded; the base on tlkit's
    preprocessing then computes what keras.applications' own ImageNet model (asking for that very file, URL and
    hash) computes on Keras' preprocess_input: preprocessing never twice, normalisation inside kept, and for
    EfficientNet the layer Keras adds for its files' variance. Then blocks, one step, cached features, serving."""
    from keras.src.utils import file_utils

    record, (application, module, alpha) = BACKBONES[name], FAMILIES[name]
    size = max(32, record.min_size)
    fetched = []

    def get_file(fname, origin, file_hash=None, **_):
        fetched.append((fname, origin, file_hash))
        return str(keras_models_dir() / fname)

    def write_instead_of_loading(model, path, *args, **kwargs):  # the file Keras asks for: its own random weights
        if name == "efficientnet_b0":  # as in Keras' file: the ImageNet mean, and the std where the variance goes
            norm = next(layer for layer in model.layers if type(layer).__name__ == "Normalization")
            norm.set_weights([np.array([0.485, 0.456, 0.406], "float32"),
                              np.array([0.229, 0.224, 0.225], "float32"), norm.get_weights()[2]])
            norm.finalize_state()
        _save_keras_weights_file(model, Path(path))

    options = {"alpha": alpha} if alpha else {}
    if name.startswith("mobilenet_v3"):
        options["minimalistic"] = name.endswith("minimalistic")
    with monkeypatch.context() as patch:
        patch.setattr(file_utils, "get_file", get_file)
        patch.setattr(keras.Model, "load_weights", write_instead_of_loading)
        own = getattr(keras.applications, application)(include_top=False, weights="imagenet",
                                                       input_shape=(size, size, 3), **options)
    file = record.weight_files(alpha, size)[0]
    assert fetched == [(file.name, file.url, file.hash)]
    recipe = _recipe(name, size, alpha, "weights=imagenet")
    weights = resolve_weights(name, alpha, size, "imagenet")
    assert weights.path == keras_models_dir() / file.name
    classifier = build_classifier(recipe, 2, weights)

    pixels = photos(size)
    expected = np.asarray(own(getattr(keras.applications, module).preprocess_input(pixels.copy()), training=False))
    got = np.asarray(classifier.base(classifier.preprocess(pixels), training=False))
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())

    cut = _check_blocks_and_one_step(name, classifier, recipe, pixels)
    _check_cached_features(classifier, cut, pixels)
    if name in SERVED:
        from tlkit.serving.savedmodel import write_savedmodel
        write_savedmodel(classifier.model, ["daisy", "rose"], size, tmp_path / "1", Confidence())
        served = tf.saved_model.load(str(tmp_path / "1"))
        answer = served.signatures["serving_default"](images=tf.constant([f.read_bytes() for f in photos.files]))
        expected = np.asarray(classifier.model(pixels, training=False))
        np.testing.assert_allclose(answer["probabilities"].numpy(), expected, atol=1e-5)
        assert answer["top_k_class_ids"].numpy()[:, 0].tolist() == expected.argmax(1).tolist()


def test_layernorm_under_batchnorm_frozen_and_train(photos):
    """ConvNeXt has LayerNorm, which has no statistics: batchnorm="frozen" keeps its scale and offset fixed (the
    norm stays the function ImageNet trained), batchnorm="train" trains them in the unfrozen blocks."""
    record, size = BACKBONES["convnext_tiny"], 32
    for mode in ("frozen", "train"):
        recipe = _recipe("convnext_tiny", size, None, f"batchnorm={mode}")
        classifier = build_classifier(recipe, 2, RANDOM)
        set_trainable(classifier, recipe, FineTune(epochs=1, unfreeze_blocks=2))
        top_norms = [layer for layer in classifier.base.layers[-12:]
                     if isinstance(layer, keras.layers.LayerNormalization)]
        assert len(top_norms) == 2  # stage_3_block_2's and the final one
        before = _norm_variables(classifier, record)
        _one_step(classifier, recipe, photos(size), [0, 0, 0, 1, 1, 1])
        moved = {v.path for layer in top_norms for v in layer.weights
                 if not np.array_equal(before[v.path], v.numpy())}
        assert bool(moved) == (mode == "train")


def _run_folder(path: Path, recipe: Recipe, val_files) -> RunFolder:
    folder = RunFolder(path)
    path.mkdir(parents=True)
    folder.recipe_file.write_text(recipe.to_json())
    folder.write_csv(folder.split_file, [{"path": str(f), "label": f.parent.name, "split": "val"} for f in val_files])
    return folder


@pytest.mark.parametrize("name,advised", [("mobilenet_v3_small", False), ("mobilenet_v3_small_minimalistic", True)])
def test_export_check_warns_where_int8_is_not_advised(name, advised, photos, tmp_path, caplog):
    from tlkit.serving.check import check_exports
    from tlkit.serving.layout import Export
    from tlkit.serving.signatures import write_labels
    from tlkit.serving.tflite import convert

    recipe = _recipe(name, 32, 1.0 if BACKBONES[name].alphas else None, "weights=none")
    folder = _run_folder(tmp_path / "run", recipe, photos.files)
    Confidence().write(folder.path)  # uncalibrated, no threshold
    model = build_classifier(recipe, 2, RANDOM).model
    target = folder.path / "export" / "tflite" / "model" / "1"
    target.mkdir(parents=True)
    (target / "model_int8.tflite").write_bytes(convert(model, 32, "int8", Confidence(), photos(32).astype(np.uint8)))
    write_labels(target, ["daisy", "rose"])
    Confidence().write(target)
    export = Export("model", 1, "tflite", "export/tflite/model/1",
                    {"int8": {"path": "export/tflite/model/1/model_int8.tflite", "bytes": 0}})
    with caplog.at_level(logging.WARNING, logger="tlkit.serving.check"):
        check_exports(folder, [export], model)
    assert export.check["int8"]["images"] == len(photos.files)
    advice = [r.getMessage() for r in caplog.records if "int8 is not advised" in r.getMessage()]
    assert advice == ([] if advised else [f"int8 is not advised for base {name}: {BACKBONES[name].int8}; serve the "
                                          "float16 or dynamic variant"])


def test_int8_advice_follows_the_architecture():
    advised = {name for name, record in BACKBONES.items() if not record.int8}
    assert {"mobilenet", "mobilenet_v2", "vgg16", "resnet50", "inception_v3", "densenet121",
            "mobilenet_v3_small_minimalistic"} <= advised
    assert not advised & {n for n in BACKBONES if n.startswith(("efficientnet", "convnext"))}
    assert "mobilenet_v3_small" not in advised and "mobilenet_v3_large" not in advised


def test_bases_command_lists_every_base(weights_dir):
    from tlkit.cli import cli

    result = CliRunner().invoke(cli, ["bases", "--json", "--weights-dir", str(weights_dir)])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert set(rows) == set(BACKBONES) and len(rows) == 42
    assert rows["mobilenet_v2"]["weights_offline"] == "alpha 0.35"
    assert rows["mobilenet"]["weights_offline"] == "alpha 0.25"
    assert rows["vgg16"]["weights_offline"] == "no" and rows["convnext_tiny"]["weights_offline"] == "no"
    assert rows["efficientnet_v2_b0"] == {
        "name": "efficientnet_v2_b0", "parameters": 5919312, "default_size": 224, "min_size": 32, "alphas": [],
        "preprocessing": "raw", "weights_offline": "no", "imagenet_top1": 0.787,
        "blocks": "stem, block1a, ..., block6h, top (23)", "norms": ["BatchNormalization"],
        "int8": BACKBONES["efficientnet_v2_b0"].int8}
    table = CliRunner().invoke(cli, ["bases"]).output.splitlines()
    assert table[0].split()[:3] == ["base", "params", "size"] and len(table) == 43
    assert any(line.split()[:5] == ["nasnet_large", "84.9M", "331", "tf", "no"] and "82.5%" in line for line in table)


def test_registered_base_from_a_keras_file(photos, tmp_path):
    """A network of one's own, saved as .keras: registered from a recipe module, rebuilt at another size with its
    own weights as the pretrained ones, blocks by its layer names; a run folder of it still reads elsewhere."""
    inputs = keras.Input((40, 40, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="stem_scale")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, name="stem_conv")(x)
    for stage in (1, 2):
        x = keras.layers.Conv2D(8 * stage, 3, padding="same", name=f"stage{stage}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"stage{stage}_bn")(x)
        x = keras.layers.ReLU(name=f"stage{stage}_relu")(x)
    keras.Model(inputs, x, name="my_net").save(tmp_path / "my_net.keras")
    recipe_file = tmp_path / "my_recipe.py"
    recipe_file.write_text(f'''from tlkit import FeatureExtraction, FineTune, Recipe, register_backbone
register_backbone("my_net", {str(tmp_path / "my_net.keras")!r}, preprocessing="raw", block_pattern=r"^(stage\\d)_")
recipe = Recipe(description="mine", base="my_net", image_size=48,
                stages=(FeatureExtraction(epochs=1), FineTune(epochs=1, unfreeze_blocks=1)))
''')
    try:
        recipe = load_recipe(str(recipe_file))
        assert load_recipe(str(recipe_file)) == recipe  # importing the module again re-registers the same base
        record = get_backbone("my_net")
        assert record.default_size == 40 and recipe.size == 48
        weights = resolve_weights("my_net", None, 48, "imagenet")
        assert weights.path == tmp_path / "my_net.keras"
        classifier = build_classifier(recipe, 2, weights)
        saved = keras.saving.load_model(tmp_path / "my_net.keras")
        assert classifier.base.input.shape[1:3] == (48, 48)
        for layer in saved.layers[1:]:  # after the input layer
            for mine, theirs in zip(classifier.base.get_layer(layer.name).get_weights(), layer.get_weights()):
                np.testing.assert_array_equal(mine, theirs)
        assert [b for b, _ in record.blocks(classifier.base)] == ["stem", "stage1", "stage2"]
        cut = set_trainable(classifier, recipe, recipe.stages[1])
        assert classifier.base.layers[cut].name == "stage2_conv"
        random_init = build_classifier(override(recipe, ["weights=none"]), 2, RANDOM)
        assert not np.array_equal(random_init.base.get_layer("stage1_conv").kernel,
                                  saved.get_layer("stage1_conv").kernel)
        register_backbone("my_function_net", lambda size: keras.Sequential([keras.Input((size, size, 3))]),
                          preprocessing="tf", block_pattern=r"^(stage\d)_", default_size=64)
        with pytest.raises(TlkitError, match=r"pretrained weights of my_function_net not found \(FileNotFoundError: "
                                             r"none registered\)\. Fix: register it with an existing weights file"):
            resolve_weights("my_function_net", None, 64, "imagenet")
        assert "RANDOM INIT" in resolve_weights("my_function_net", None, 64, "auto").warning
        with pytest.raises(ValueError, match="'vgg16' is built in"):
            register_backbone("vgg16", tmp_path / "my_net.keras", preprocessing="tf", block_pattern="x")
        folder = _run_folder(tmp_path / "run", recipe, photos.files)
    finally:
        BACKBONES.pop("my_net", None)
        BACKBONES.pop("my_function_net", None)
    assert RunFolder(folder.path).recipe().size == 48  # export, evaluate and predict need no registration
    with pytest.raises(TlkitError, match="unknown base 'my_net'.*known once its module is imported"):
        override(recipe, [])


@pytest.fixture(scope="module")
def hub_preset(tmp_path_factory):
    """A tiny KerasHub ResNet saved as a local preset folder, as an air-gapped user has one."""
    keras_hub = pytest.importorskip("keras_hub")
    folder = tmp_path_factory.mktemp("hub") / "tiny_resnet"
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[2, 2], stackwise_num_strides=[1, 2], block_type="basic_block")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    converter = keras_hub.layers.ResNetImageConverter(image_size=(48, 48), scale=[1 / (255 * s) for s in std],
                                                      offset=[-m / s for m, s in zip(mean, std)])
    backbone.save_to_preset(str(folder))
    converter.save_to_preset(str(folder))
    return folder, converter


@pytest.fixture(scope="module")
def hub_vit_preset(tmp_path_factory):
    """A tiny KerasHub ViT (its encoder one layer, its output a sequence of tokens) as a local preset folder."""
    keras_hub = pytest.importorskip("keras_hub")
    folder = tmp_path_factory.mktemp("hub") / "tiny_vit"
    keras.utils.set_random_seed(0)
    keras_hub.models.ViTBackbone(image_shape=(48, 48, 3), patch_size=16, num_layers=2, num_heads=2, hidden_dim=16,
                                 mlp_dim=32).save_to_preset(str(folder))
    keras_hub.layers.ViTImageConverter(image_size=(48, 48), scale=1 / 127.5, offset=-1.0).save_to_preset(str(folder))
    return folder, None


def test_keras_hub_preset_folder_trains_caches_and_serves(hub_preset, flowers_small, photos, tmp_path):
    from tlkit import run

    folder, converter = hub_preset
    base = f"keras_hub:{folder}"
    record = get_backbone(base)
    assert record.default_size == 48 and record.weight_files(None, 48)[0].path == folder / "model.weights.h5"
    pixels = photos(48)
    np.testing.assert_allclose(np.asarray(Preprocess.for_base(record)(pixels)), np.asarray(converter(pixels)),
                               rtol=1e-5, atol=1e-5)
    assert summarize_blocks(record.blocks(record.build(48, None))) == \
        "stem, stack0_block0, stack0_block1, stack1_block0, stack1_block1 (5)"

    recipe = Recipe(description="tiny hub", base=base, head=Head(dropout=0.0), batch_size=16,
                    stages=(FeatureExtraction(epochs=2), FineTune(epochs=2, learning_rate=1e-4, unfreeze_blocks=2)))
    result = run(recipe, tmp_path / "run", data=str(flowers_small), cache_dir=str(tmp_path / "cache"))
    info = json.loads((result.folder / "run.json").read_text())
    assert info["weights"]["loaded"] == str(folder / "model.weights.h5")
    assert [s["mode"] for s in info["stages"]] == ["cached", "cached"]
    assert [s["first_trainable_layer"] for s in info["stages"]] == [None, "stack1_block0_1_pad"]
    assert len((result.folder / "history.csv").read_text().splitlines()) == 1 + 4

    model = RunFolder.open(result.folder).load_model()
    hub_base = next(layer for layer in model.layers if type(layer).__name__ == "ResNetBackbone")
    import keras_hub
    pretrained = keras_hub.models.Backbone.from_preset(str(folder))
    for name in ("conv1_conv", "stack0_block0_1_conv", "stack0_block1_2_bn"):  # frozen in both stages
        for mine, theirs in zip(hub_base.get_layer(name).get_weights(), pretrained.get_layer(name).get_weights()):
            np.testing.assert_array_equal(mine, theirs)

    from tlkit.evaluation.evaluate import keras_answers
    served = tf.saved_model.load(str(result.export))
    answer = served.signatures["serving_default"](images=tf.constant([f.read_bytes() for f in photos.files]))
    expected = keras_answers(model, pixels, Confidence.read(result.folder))["probabilities"]  # calibrated, as served
    np.testing.assert_allclose(answer["probabilities"].numpy(), expected, atol=1e-5)
    assert answer["top_k_class_ids"].numpy()[:, 0].tolist() == expected.argmax(1).tolist()  # class_ids: -1 if unknown


@pytest.mark.parametrize("preset,first", [("hub_preset", "stack1_block0_1_pad"),
                                          ("hub_vit_preset", "vit_patching_and_embedding")])
def test_keras_hub_preset_in_the_per_base_checks(preset, first, photos, request):
    """The block, freezing, one-step and cache checks of every built-in base, on the preset's own weights; a ViT
    pools over its tokens and unfreezes by top-level layer."""
    folder, _ = request.getfixturevalue(preset)
    base = f"keras_hub:{folder}"
    recipe = Recipe(description="tiny hub", base=base, head=Head(dropout=0.0), stages=(FeatureExtraction(epochs=1),))
    classifier = build_classifier(recipe, 2, resolve_weights(base, None, 48, "imagenet"))
    cut = _check_blocks_and_one_step(base, classifier, recipe, photos(48))
    assert classifier.base.layers[cut].name == first
    _check_cached_features(classifier, cut, photos(48))


def test_keras_hub_errors_are_one_line(hub_preset, tmp_path):
    import shutil

    folder = tmp_path / "no_weights"
    shutil.copytree(hub_preset[0], folder, ignore=shutil.ignore_patterns("model.weights.h5"))
    with pytest.raises(TlkitError, match=r"weights of keras_hub:.*no_weights not found \(FileNotFoundError: "
                                         r".*no_weights/model.weights.h5 missing\)\. Fix: .*--weights none"):
        resolve_weights(f"keras_hub:{folder}", None, 48, "imagenet")
    assert resolve_weights(f"keras_hub:{folder}", None, 48, "none").path is None
    with pytest.raises(TlkitError, match=r"KerasHub preset '.*not_a_preset' cannot be read .*save_to_preset"):
        get_backbone(f"keras_hub:{tmp_path / 'not_a_preset'}")
    with pytest.raises(TlkitError, match="takes no alpha"):
        override(load_recipe("quickstart"), ["base=keras_hub:resnet_50_imagenet"])


@pytest.mark.parametrize("recipe_name,first,norm", [("efficientnetv2_b0", "block6g_expand_conv", "frozen"),
                                                    ("convnext_tiny", "convnext_tiny_stage_3_block_0_depthwise_conv",
                                                     "train")])
def test_bundled_recipes_for_the_new_bases_unfreeze_what_they_say(recipe_name, first, norm):
    recipe = override(load_recipe(recipe_name), ["image_size=32", "weights=none"])
    assert recipe.batchnorm == norm and load_recipe(recipe_name).size == 224
    classifier = build_classifier(recipe, 2, RANDOM)
    cut = set_trainable(classifier, recipe, recipe.stages[1])
    assert classifier.base.layers[cut].name == first
