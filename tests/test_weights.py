"""Weights: Keras cache, then TLKIT_WEIGHTS_DIR / --weights-dir, then download; clear failures offline."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tlkit import TlkitError, load_recipe, override, run
from tlkit.backbones import BACKBONES
from tlkit.cli import cli
from tlkit.weights import keras_models_dir, load_into, resolve_weights

V2_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


def test_keras_cache_is_searched_first_and_the_224_file_serves_other_sizes(weights_dir, tmp_path, monkeypatch):
    models = keras_models_dir()
    models.mkdir(parents=True)
    (models / V2_FILE).symlink_to(weights_dir / V2_FILE)
    monkeypatch.setenv("TLKIT_WEIGHTS_DIR", str(weights_dir))
    resolved = resolve_weights("mobilenet_v2", 0.35, 96, "imagenet")
    assert resolved.path == models / V2_FILE


def test_weights_dir_option_and_environment(weights_dir, monkeypatch):
    assert resolve_weights("mobilenet", 0.25, 128, "imagenet", str(weights_dir)).path == \
        weights_dir / "mobilenet_2_5_224_tf_no_top.h5"
    monkeypatch.setenv("TLKIT_WEIGHTS_DIR", str(weights_dir))
    assert resolve_weights("mobilenet_v2", 0.35, 160, "auto").path == weights_dir / V2_FILE


def test_real_weights_load_into_any_size(weights_dir):
    resolved = resolve_weights("mobilenet_v2", 0.35, 96, "imagenet", str(weights_dir))
    base = BACKBONES["mobilenet_v2"].build(96, 0.35)
    random_kernel = base.get_layer("Conv1").kernel.numpy()
    load_into(base, resolved)
    kernel = base.get_layer("Conv1").kernel.numpy()
    assert kernel.shape == (3, 3, 3, 16) and not np.allclose(kernel, random_kernel)
    bigger = BACKBONES["mobilenet_v2"].build(160, 0.35)
    load_into(bigger, resolved)
    np.testing.assert_array_equal(bigger.get_layer("Conv1").kernel.numpy(), kernel)


def test_imagenet_offline_without_the_file_fails_before_data_work():
    result = CliRunner().invoke(cli, ["run", "quickstart", "--weights", "imagenet", "--data", "/no/such/folder",
                                      "--out", "/tmp/tlkit-never-written"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("tlkit: error:")]
    assert len(errors) == 1 and result.output.endswith(errors[0] + "\n") and "Traceback" not in result.output
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5" in result.output
    assert "--weights-dir" in result.output and "TLKIT_WEIGHTS_DIR" in result.output
    assert "data folder" not in result.output  # weights are checked first


def test_missing_weights_file_is_one_line():
    with pytest.raises(TlkitError, match="weights file not found: /nope.h5"):
        resolve_weights("mobilenet", 0.25, 128, "/nope.h5")


def test_auto_falls_back_to_random_init_and_records_it(shapes, tmp_path):
    recipe = override(load_recipe("quickstart"), ["weights=auto", "random_init=as_recipe", "image_size=48",
                                                  "stage1.epochs=1", "stage2.epochs=1"])
    result = run(recipe, tmp_path / "run", data=str(shapes), export=False)
    info = json.loads((result.folder / "run.json").read_text())
    assert info["weights"]["loaded"] == "random init"
    assert any("RANDOM INIT" in w for w in info["warnings"])
