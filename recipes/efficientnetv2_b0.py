"""EfficientNetV2-B0: the most ImageNet accuracy per parameter among the Keras bases, for a float or GPU budget."""
from tlkit import FeatureExtraction, FineTune, Head, Recipe

recipe = Recipe(
    description="EfficientNetV2-B0 (224 px, 5.9 M parameters, 78.7 % ImageNet top-1): pick it over MobileNetV2 "
                "when you serve float (not int8) and can afford about 2x its compute; head, then the top 3 blocks "
                "at 1e-5",
    base="efficientnet_v2_b0", image_size=224, weights="imagenet",  # takes 0-255 pixels: it normalises inside
    head=Head(dropout=0.2),
    stages=(
        FeatureExtraction(epochs=10, learning_rate=1e-3),
        FineTune(epochs=10, learning_rate=1e-5, unfreeze_blocks=3),  # block6g, block6h, top
    ),
)
