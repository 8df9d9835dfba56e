"""ConvNeXt-Tiny: the most accurate base here below 30 M parameters, for a GPU when accuracy comes first."""
from tlkit import FeatureExtraction, FineTune, Head, Recipe

recipe = Recipe(
    description="ConvNeXt-Tiny (224 px, 28 M parameters, 82.1 % ImageNet top-1): pick it when accuracy matters more "
                "than speed and a GPU trains it; float serving only (LayerNorm loses under int8); head, then the "
                "last stage with AdamW at 5e-5, LayerNorm training",
    base="convnext_tiny", image_size=224, weights="imagenet",  # takes 0-255 pixels: it normalises inside
    batchnorm="train",  # ConvNeXt has LayerNorm only: no batch statistics, so its scale and offset can train
    head=Head(dropout=0.2),
    stages=(
        FeatureExtraction(epochs=10, learning_rate=1e-3),
        FineTune(epochs=10, learning_rate=5e-5, optimizer="adamw", unfreeze_blocks=4),  # stage 3 and the last norm
    ),
)
