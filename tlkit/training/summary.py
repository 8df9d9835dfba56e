"""What a stage trains: parameter counts as Keras counts them, the trainable base layers, the BatchNorm mode."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tlkit.model import Classifier

log = logging.getLogger(__name__)

BATCHNORM_MODES = {
    "frozen": "inference mode (moving statistics fixed), gamma/beta frozen",
    "train": "batch statistics and gamma/beta train in unfrozen layers (moving statistics move)",
}


def count_params(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


@dataclass
class ParameterSummary:
    """Parameters of the whole classifier during one stage; trainable + frozen == total."""

    stage: str
    total: int
    trainable: int
    frozen: int  # Keras' "non-trainable": frozen weights and BatchNorm moving statistics
    base_layers: int  # base layers that have weights
    trainable_base_layers: list[str]
    batchnorm: str

    def lines(self) -> list[str]:
        layers = ", ".join(self.trainable_base_layers) or "none"
        return [f"stage {self.stage} parameters: total {self.total:,}, trainable {self.trainable:,}, "
                f"frozen {self.frozen:,}",
                f"  base layers training: {len(self.trainable_base_layers)} of {self.base_layers} with weights: "
                f"{layers}",
                f"  BatchNorm: {self.batchnorm}"]

    def report(self, folder: Path | None = None) -> "ParameterSummary":
        """Log the summary and, given a folder, write it there as parameters.txt."""
        for line in self.lines():
            log.info(line)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "parameters.txt").write_text("\n".join(self.lines()) + "\n")
        return self


def parameter_summary(classifier: Classifier, batchnorm: str, stage: str) -> ParameterSummary:
    """The summary of the classifier as it is frozen now (after :func:`tlkit.model.set_trainable`)."""
    model = classifier.model
    with_weights = [layer for layer in classifier.base.layers if layer.weights]
    return ParameterSummary(
        stage=stage, total=model.count_params(), trainable=count_params(model.trainable_weights),
        frozen=count_params(model.non_trainable_weights), base_layers=len(with_weights),
        trainable_base_layers=[layer.name for layer in with_weights if layer.trainable_weights],
        batchnorm=f"{BATCHNORM_MODES[batchnorm]} (batchnorm={batchnorm}); "
                  f"{sum(isinstance(layer, keras.layers.BatchNormalization) for layer in with_weights)} layers")
