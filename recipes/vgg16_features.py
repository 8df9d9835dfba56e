"""VGG16 the classic Keras way: bottleneck features into Flatten -> Dense(128) -> softmax, then block5."""
from tlkit import FeatureExtraction, FineTune, Head, Recipe

recipe = Recipe(
    description="VGG16 features with a Flatten -> Dense(128, relu) -> softmax head, then fine-tune block5 (SGD)",
    base="vgg16", image_size=224, weights="imagenet",
    head=Head(pooling="flatten", hidden=(128,), dropout=0.5),
    stages=(
        FeatureExtraction(epochs=10, learning_rate=1e-3),
        FineTune(epochs=5, learning_rate=1e-4, optimizer="sgd", unfreeze_from="block5_conv1"),
    ),
)
