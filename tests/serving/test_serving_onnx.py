"""ONNX export (the optional `onnx` extra: tf2onnx + onnxruntime) answers as the Keras model does."""
import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from tlkit.cli import cli
from tlkit.errors import TlkitError
from tlkit.serving.export import export_run


def test_onnx_agrees_with_keras_on_validation_photos(served):
    if "onnx" not in served.exports:
        pytest.skip("the onnx extra (tf2onnx, onnxruntime) is not installed: pip install 'tlkit[onnx]'")
    export = served.exports["onnx"]
    check = export.check["onnx"]
    assert check["images"] == len(served.val_paths)
    assert check["top1_agreement"] == 1.0 and check["max_probability_difference"] < 1e-4
    path = served.folder.path / export.files["onnx"]["path"]
    assert (path.parent / "labels.txt").read_text().split() == served.folder.class_names()

    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs, score = session.run(["probabilities", "score"], {"pixels": served.val_pixels[:8].astype(np.float32)})
    np.testing.assert_allclose(score, served.keras_answers(served.val_pixels[:8])["scores"][
        json.loads((path.parent / "confidence.json").read_text())["score"]], atol=1e-4)
    np.testing.assert_allclose(probs, served.keras_probabilities(served.val_pixels[:8]), atol=1e-4)

    result = CliRunner().invoke(cli, ["predict", str(path), str(served.val_paths[0]), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["class"] == served.keras_answers(served.val_pixels[:1])["classes"][0]


def test_onnx_without_the_extra_is_a_one_line_error(served, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if not installed
    with pytest.raises(TlkitError, match=r"ONNX export needs tf2onnx and onnxruntime .*pip install 'tlkit\[onnx\]'"):
        export_run(served.folder, ("onnx",), model=served.model)
