"""Augmentation declared in the recipe runs inside the model in training only; inference and the exported
SavedModel give the same answer every time, equal to the same model built without augmentation."""
import numpy as np
import tensorflow as tf

from tlkit import Augment, Head, Recipe
from tlkit.data import load_data
from tlkit.serving.savedmodel import write_savedmodel
from tlkit.serving.signatures import Confidence
from tlkit.model import build_classifier
from tlkit.weights import ResolvedWeights

EVERY_KIND = Augment(flip="horizontal_and_vertical", rotation=0.2, zoom=0.2, translation=0.1, contrast=0.3,
                     brightness=0.2)


def test_augmentation_is_active_only_in_training_and_absent_from_export(shapes, tmp_path, weights_dir):
    recipe = Recipe(description="augmented", base="mobilenet_v2", alpha=0.35, image_size=64,
                    head=Head(dropout=0.0), augment=EVERY_KIND)  # no dropout: augmentation is the only randomness
    imagenet = ResolvedWeights("imagenet",
                               weights_dir / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5")
    augmented = build_classifier(recipe, 3, imagenet)
    plain = build_classifier(recipe.model_copy(update={"augment": Augment()}), 3, imagenet)
    plain.base.set_weights(augmented.base.get_weights())
    plain.head.set_weights(augmented.head.get_weights())
    pixels = load_data(shapes, 64).splits["val"].images[:8]
    x = tf.constant(pixels, tf.float32)

    assert not np.allclose(augmented.augment(x, training=True), x)
    assert np.array_equal(augmented.augment(x, training=False), x)
    inference = augmented.model(x, training=False).numpy()
    assert np.array_equal(inference, augmented.model(x, training=False).numpy())
    np.testing.assert_allclose(inference, plain.model(x, training=False).numpy(), atol=1e-6)
    trained = [augmented.model(x, training=True).numpy() for _ in range(2)]
    assert not np.allclose(trained[0], inference, atol=1e-4) and not np.allclose(trained[0], trained[1], atol=1e-4)

    path = tmp_path / "model"
    write_savedmodel(augmented.model, ["circle", "square", "triangle"], 64, path, Confidence())
    serve = tf.saved_model.load(str(path)).signatures["serving_pixels"]
    answers = [serve(pixels=tf.constant(pixels))["probabilities"].numpy() for _ in range(3)]
    assert np.array_equal(answers[0], answers[1]) and np.array_equal(answers[0], answers[2])
    np.testing.assert_allclose(answers[0], inference, atol=1e-5)
