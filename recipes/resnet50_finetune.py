"""ResNet50: head first, then fine-tune the conv5 stage (its last three residual blocks)."""
from tlkit import FeatureExtraction, FineTune, Head, Recipe

recipe = Recipe(
    description="ResNet50 (224 px): head 5 epochs, then fine-tune conv5 (3 blocks) at 1e-5",
    base="resnet50", image_size=224, weights="imagenet",
    head=Head(dropout=0.3),
    stages=(
        FeatureExtraction(epochs=5, learning_rate=1e-3),
        FineTune(epochs=10, learning_rate=1e-5, unfreeze_blocks=3),
    ),
)
