"""Quickstart: MobileNetV2 (alpha 0.35) on the bundled shapes images, both stages, in about a minute."""
from importlib.resources import files

from tlkit import Data, FeatureExtraction, FineTune, Head, Recipe

recipe = Recipe(
    description="MobileNetV2 0.35 at 96 px on the bundled shapes sample: head, then the top 3 blocks",
    base="mobilenet_v2", alpha=0.35, image_size=96,
    weights="auto",  # ImageNet if the file is cached or in TLKIT_WEIGHTS_DIR, else random init (recorded)
    head=Head(dropout=0.2),
    data=Data(path=str(files("tlkit.sample_data") / "shapes"), val_fraction=0.25),  # installed with tlkit
    stages=(
        FeatureExtraction(epochs=5, learning_rate=1e-3),
        FineTune(epochs=3, learning_rate=1e-4, unfreeze_blocks=3),  # without weights: 16 epochs from scratch
    ),
    batch_size=16,
)
