"""The backbone registry: each pretrained base with its preprocessing, default size, layer blocks and
weight files, kept together so that data, weights and model cannot disagree (as timm does)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

_KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class WeightFile:
    """A Keras ImageNet weights file: its cache name, where Keras downloads it from, its md5 if known."""

    name: str
    url: str
    md5: Optional[str] = None


@dataclass(frozen=True)
class Backbone:
    """A pretrained base from ``keras.applications`` and everything needed to use it correctly."""

    name: str
    application: str  # attribute of keras.applications
    preprocessing: str  # "tf": [-1, 1]; "caffe": BGR minus ImageNet mean
    default_size: int
    block_pattern: str  # regex whose first group names the block a layer belongs to
    weight_files: Callable[[Optional[float], int], list[WeightFile]]  # best first
    alphas: tuple[float, ...] = ()
    min_size: int = 32

    def check(self, alpha: Optional[float], size: Optional[int]) -> None:
        """Raise ValueError (for recipe validation) if alpha or size do not fit this base."""
        if self.alphas and alpha not in self.alphas:
            raise ValueError(f"base {self.name} needs alpha in {list(self.alphas)}; received: alpha={alpha}")
        if not self.alphas and alpha is not None:
            raise ValueError(f"base {self.name} takes no alpha; received: alpha={alpha}")
        if size is not None and size < self.min_size:
            raise ValueError(f"base {self.name} needs image_size >= {self.min_size}; received: {size}")

    def build(self, size: int, alpha: Optional[float] = None):
        """The base without its top and without weights; :mod:`tlkit.weights` loads them."""
        import keras
        kwargs = {"alpha": alpha} if self.alphas else {}
        return getattr(keras.applications, self.application)(
            include_top=False, weights=None, input_shape=(size, size, 3), **kwargs)

    def blocks(self, base) -> list[tuple[str, list[str]]]:
        """The base's layers grouped into named blocks, bottom to top: ``stem``, the blocks, ``top``."""
        pattern = re.compile(self.block_pattern)
        groups: list[tuple[str, list[str]]] = []
        for layer in base.layers[1:]:  # layers[0] is the InputLayer
            match = pattern.match(layer.name)
            if match:
                block = f"block_{match.group(1)}" if match.group(1).isdigit() else match.group(1)
            else:
                block = "stem" if not groups or groups[-1][0] == "stem" else "top"
            if not groups or groups[-1][0] != block:
                groups.append((block, []))
            groups[-1][1].append(layer.name)
        return groups


def _mobilenet_files(alpha, size):
    text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[alpha]
    sizes = [size, 224] if size in (128, 160, 192) else [224]  # no-top conv weights fit any size
    return [WeightFile(f"mobilenet_{text}_{s}_tf_no_top.h5",
                       f"{_KERAS_APPS}mobilenet/mobilenet_{text}_{s}_tf_no_top.h5") for s in sizes]


def _mobilenet_v2_files(alpha, size):
    sizes = [size, 224] if size in (96, 128, 160, 192) else [224]
    names = [f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{s}_no_top.h5" for s in sizes]
    return [WeightFile(n, f"{_KERAS_APPS}mobilenet_v2/{n}") for n in names]


BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    Backbone("mobilenet", "MobileNet", "tf", 224, r"^conv_(?:dw|pw|pad)_(\d+)",
             _mobilenet_files, alphas=(0.25, 0.5, 0.75, 1.0)),
    Backbone("mobilenet_v2", "MobileNetV2", "tf", 224, r"^(expanded_conv|block_\d+)",
             _mobilenet_v2_files, alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4)),
    Backbone("vgg16", "VGG16", "caffe", 224, r"^(block\d)_",
             lambda alpha, size: [WeightFile(
                 "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 f"{_KERAS_APPS}vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 "6d6bbae143d832006294945121d1f1fc")]),
    Backbone("resnet50", "ResNet50", "caffe", 224, r"^(conv\d_block\d+)_",
             lambda alpha, size: [WeightFile(
                 "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 f"{_KERAS_APPS}resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 "4d473c1dd8becc155b73f8504c6f6626")]),
)}
