"""MobileNet v1: small and fast; fine-tunes the last two depthwise-separable blocks."""
from tlkit import FeatureExtraction, FineTune, Head, Recipe

recipe = Recipe(
    description="MobileNet v1 (alpha 1.0, 224 px): head, then the top 2 blocks at 1e-5",
    base="mobilenet", alpha=1.0, image_size=224, weights="imagenet",
    head=Head(dropout=0.2),
    stages=(
        FeatureExtraction(epochs=10, learning_rate=1e-3),
        FineTune(epochs=10, learning_rate=1e-5, unfreeze_blocks=2),
    ),
)
