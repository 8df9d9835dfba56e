"""The check that every export answers as the Keras model does, on the run's validation images."""
from __future__ import annotations

import logging

import numpy as np

from tlkit.backbones import BACKBONES
from tlkit.runfolder import RunFolder
from tlkit.serving.layout import Export
from tlkit.serving.predictors import BATCH, load_predictor
from tlkit.serving.signatures import Confidence, pixel_function

log = logging.getLogger(__name__)

LOW_AGREEMENT = 0.95  # below this top-1 agreement with Keras, `export --check` warns


def agreement(reference: np.ndarray, probs: np.ndarray) -> dict:
    """Top-1 agreement and the largest probability difference between two sets of answers."""
    return {"images": len(reference), "top1_agreement": float(np.mean(reference.argmax(1) == probs.argmax(1))),
            "max_probability_difference": float(np.abs(reference - probs).max())}


def check_exports(folder: RunFolder, exports: list[Export], model) -> None:
    """Fill each export's ``check`` with its agreement with the Keras model, calibrated as the exports are, on the
    validation split; warn where the base's record advises against full-integer int8."""
    recipe, confidence = folder.recipe(), Confidence.read(folder.path)
    backbone = BACKBONES.get(recipe.base)
    if backbone and backbone.int8 and any("int8" in export.files for export in exports):
        log.warning("int8 is not advised for base %s: %s; serve the float16 or dynamic variant", recipe.base,
                    backbone.int8)
    pixels = folder.split_pixels("val", recipe.size, "check")
    predict = pixel_function(model, recipe.size, confidence)
    reference = np.concatenate([predict(pixels[i:i + BATCH].astype(np.float32))["probabilities"].numpy()
                                for i in range(0, len(pixels), BATCH)])
    for export in exports:
        for variant, entry in export.files.items():
            result = export.check[variant] = agreement(reference, load_predictor(folder.path / entry["path"])
                                                       .probabilities(pixels))
            log.info("check %s %s: top-1 agreement %.4f, max probability difference %.2g on %d validation "
                     "images", export.format, variant, result["top1_agreement"],
                     result["max_probability_difference"], len(pixels))
            if result["top1_agreement"] < LOW_AGREEMENT:
                log.warning("%s %s changes %.1f %% of the Keras answers on the validation images; serve a float "
                            "variant where answers must match the trained model", export.format, variant,
                            100 * (1 - result["top1_agreement"]))
