"""tlkit: transfer learning for image folders with pretrained Keras bases.

>>> from tlkit import load_recipe, run
>>> result = run(load_recipe("quickstart"), out="runs/quickstart")  # doctest: +SKIP
>>> result.metrics["val"]["accuracy"]  # doctest: +SKIP
"""
import os

# NumPy asks the kernel for transparent huge pages for large arrays; where free memory must first be compacted
# into 2 MB blocks, the first touch of an array stalls (README, "Cached features"). tlkit's large arrays are
# written once and read in order, which 4 KB pages serve as fast. Set before NumPy is imported; a value the user
# set wins.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

from tlkit.backbones import register_backbone  # noqa: E402
from tlkit.errors import TlkitError  # noqa: E402
from tlkit.overrides import override  # noqa: E402
from tlkit.recipe import Augment, Data, FeatureExtraction, FineTune, Head, Recipe, Trust, load_recipe  # noqa: E402

__all__ = ["Augment", "Data", "FeatureExtraction", "FineTune", "Head", "Recipe", "TlkitError", "Trust", "load_recipe",
           "override", "register_backbone", "run"]


def run(recipe, out, **options):
    """Train a recipe and write its run folder; see :func:`tlkit.runner.run` for the options. Progress is logged
    as the CLI shows it (unless the program set up logging), without TensorFlow's start-up lines."""
    from tlkit.ui import start_tensorflow
    start_tensorflow()
    from tlkit.runner import run as _run
    return _run(recipe, out, **options)
