"""KerasHub image backbones as bases: ``base="keras_hub:PRESET"``, PRESET being a KerasHub preset name or handle
(``resnet_50_imagenet``, ``kaggle://keras/...``) or a local preset folder (air-gapped: one saved with
``save_to_preset``). Needs the ``hub`` extra (``pip install "tlkit[hub]"``). The preset's image converter gives
the preprocessing (x * scale + offset) and the default size; its ``model.weights.h5`` is the pretrained file."""
from __future__ import annotations

import functools
from pathlib import Path

from tlkit.backbones import Backbone, WeightFile
from tlkit.errors import TlkitError

WEIGHTS_FILE = "model.weights.h5"
# Block names of KerasHub's CNN backbones: ResNet/DenseNet stackN_blockM, CSPNet stage_N_block_M, MobileNet
# block_N_M, VGG/EfficientNet blockN(a); a transformer whose encoder is one layer (ViT, DINOv2) matches none, so
# each of its top-level layers is a block.
BLOCK_PATTERN = r"^(stack\d+_block\d+|stage_\d+_block_\d+|block_\d+_\d+|block\d+[a-z]?|transition\d+)(?:_|$)"
NORMS = ("BatchNormalization", "LayerNormalization", "GroupNormalization")


def require_keras_hub():
    """The keras_hub module, or a one-line error saying how to install it."""
    try:
        import keras_hub
    except ImportError:
        raise TlkitError('keras_hub bases need KerasHub: pip install "tlkit[hub]"') from None
    return keras_hub


@functools.lru_cache(maxsize=None)
def hub_backbone(preset: str) -> Backbone:
    """The record of a KerasHub preset (read once per process from its config and image converter)."""
    keras_hub = require_keras_hub()
    local = Path(preset).expanduser()
    handle = str(local.resolve()) if local.is_dir() else preset
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(handle)
    except Exception as error:
        raise TlkitError(f"KerasHub preset {preset!r} cannot be read ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}); pass an image backbone preset name, "
                         "a kaggle:// handle, or a local folder written by save_to_preset") from None
    size = (converter.image_size or (224, 224))[0]
    file = WeightFile(WEIGHTS_FILE, path=Path(handle) / WEIGHTS_FILE) if local.is_dir() else \
        WeightFile(WEIGHTS_FILE, url=handle)

    def build(image_size, alpha):
        return keras_hub.models.Backbone.from_preset(handle, load_weights=False,
                                                     image_shape=(image_size, image_size, 3))

    return Backbone(f"keras_hub:{preset}", build, "affine", size, BLOCK_PATTERN, lambda alpha, s: [file],
                    norms=NORMS, scale=_per_channel(converter.scale, 1.0),
                    offset=_per_channel(converter.offset, 0.0))


def _per_channel(value, default: float) -> tuple[float, float, float]:
    if value is None:
        return (default,) * 3
    values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    return tuple(values * 3) if len(values) == 1 else tuple(values)


def fetch(handle: str, name: str) -> Path:
    """A file of a KerasHub preset, from KerasHub's cache or downloaded into it."""
    from keras_hub.src.utils.preset_utils import get_file
    return Path(get_file(handle, name))
