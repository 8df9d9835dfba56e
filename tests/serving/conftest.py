"""One small run trained on real flower photos with real ImageNet weights, exported in every format once
per session and shared by the serving tests."""
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ONNX = all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnxruntime"))


@dataclass
class Served:
    folder: object  # tlkit.runfolder.RunFolder
    model: object  # the trained Keras model
    savedmodel: Path  # exported at the end of the run
    exports: dict  # format -> tlkit.serving.layout.Export, exported afterwards with check=True
    val_paths: list[Path]
    val_pixels: np.ndarray  # uint8 (N, size, size, 3), decoded as training decodes

    @property
    def size(self) -> int:
        return self.val_pixels.shape[1]

    def keras_probabilities(self, pixels):
        """The Keras model's calibrated probabilities: what every export returns."""
        return self.keras_answers(pixels)["probabilities"]

    def keras_answers(self, pixels) -> dict:
        """Calibrated probabilities, scores, and the class name or unknown label each image gets."""
        from tlkit.evaluation.evaluate import keras_answers
        from tlkit.serving.signatures import Confidence

        confidence = Confidence.read(self.folder.path)
        answers = keras_answers(self.model, np.asarray(pixels), confidence)
        names = self.folder.class_names()
        answered = confidence.answered(answers["scores"][confidence.score])
        answers["classes"] = [names[i] if known else confidence.unknown_label
                              for i, known in zip(answers["probabilities"].argmax(1), answered)]
        return answers


@pytest.fixture(scope="session")
def served(flowers_small, weights_dir, tmp_path_factory):
    from tlkit import load_recipe, override, run
    from tlkit.images import decode_all
    from tlkit.serving.export import export_run
    from tlkit.runfolder import RunFolder

    root = tmp_path_factory.mktemp("served")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_HOME", str(root / "keras_home"))
        # MobileNetV2 0.35, 96 px, 8+4 epochs; not refit, so the validation photos the checks use are unseen
        recipe = override(load_recipe("quickstart"), ["weights=imagenet", "refit=false"])
        result = run(recipe, root / "run", data=str(flowers_small), weights_dir=str(weights_dir),
                     cache_dir=str(root / "cache"))
        folder = RunFolder.open(result.folder)
        model = folder.load_model()
        formats = ("tflite", "onnx") if ONNX else ("tflite",)
        exports = {e.format: e for e in export_run(folder, formats, check=True, model=model)}
    val_paths = [Path(r["path"]) for r in folder.read_csv(folder.split_file) if r["split"] == "val"]
    val_pixels, failures, _ = decode_all(val_paths, recipe.size, "val")
    assert not failures
    return Served(folder, model, result.export, exports, val_paths, val_pixels)
