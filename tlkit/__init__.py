"""tlkit: transfer learning for image folders with pretrained Keras bases.

>>> from tlkit import load_recipe, run
>>> result = run(load_recipe("quickstart"), out="runs/quickstart")  # doctest: +SKIP
>>> result.metrics["val"]["accuracy"]  # doctest: +SKIP
"""
from tlkit.backbones import register_backbone
from tlkit.errors import TlkitError
from tlkit.overrides import override
from tlkit.recipe import Augment, Data, FeatureExtraction, FineTune, Head, Recipe, Trust, load_recipe

__all__ = ["Augment", "Data", "FeatureExtraction", "FineTune", "Head", "Recipe", "TlkitError", "Trust", "load_recipe",
           "override", "register_backbone", "run"]


def run(recipe, out, **options):
    """Train a recipe and write its run folder; see :func:`tlkit.runner.run` for the options. Progress is logged
    as the CLI shows it (unless the program set up logging), without TensorFlow's start-up lines."""
    from tlkit.ui import start_tensorflow
    start_tensorflow()
    from tlkit.runner import run as _run
    return _run(recipe, out, **options)
