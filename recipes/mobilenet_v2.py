"""MobileNetV2: the TF transfer-learning tutorial's recipe, head then the top of the base."""
from tlkit import FeatureExtraction, FineTune, Head, Recipe

recipe = Recipe(
    description="MobileNetV2 (alpha 1.0, 224 px): head 10 epochs, then fine-tune from block_13 at 1e-5",
    base="mobilenet_v2", alpha=1.0, image_size=224, weights="imagenet",
    head=Head(dropout=0.2),
    stages=(
        FeatureExtraction(epochs=10, learning_rate=1e-3),
        FineTune(epochs=10, learning_rate=1e-5, unfreeze_from="block_13_expand"),
    ),
)
