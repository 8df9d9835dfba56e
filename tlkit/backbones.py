"""The backbone registry: each pretrained base with its preprocessing, sizes, layer blocks, weight files,
normalisation layers and int8 advice, kept together so that data, weights and model cannot disagree (as timm
does). Every image classifier of ``keras.applications`` is built in and :func:`register_backbone` adds your own;
:func:`tlkit.recipe.get_backbone` also finds ``keras_hub:PRESET`` bases (:mod:`tlkit.hub`)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

_KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications/"
PREPROCESSING = ("tf", "caffe", "torch", "raw", "affine")


@dataclass(frozen=True)
class WeightFile:
    """A pretrained weights file: the name looked for in the weights folders and where it comes from otherwise."""

    name: str
    url: Optional[str] = None  # Keras' download URL, or a KerasHub preset handle; None: local only
    hash: Optional[str] = None  # md5 or sha256, as Keras checks it after a download
    path: Optional[Path] = None  # a known local file (a registered .keras model, a local preset folder)


@dataclass(frozen=True)
class Backbone:
    """A pretrained base and everything needed to use it correctly."""

    name: str
    build_model: Callable[[int, Optional[float]], object]  # (size, alpha) -> the base without top, random init
    preprocessing: str  # "tf": [-1, 1]; "caffe": BGR minus the ImageNet mean; "torch": ImageNet mean/std;
    # "raw": 0-255 as they are (the model normalises inside); "affine": x * scale + offset (KerasHub presets)
    default_size: int
    block_pattern: str  # regex over layer names; its first group that matched names the layer's block
    weight_files: Callable[[Optional[float], int], list[WeightFile]]  # pretrained files, best first
    alphas: tuple[float, ...] = ()  # width multipliers with pretrained weights (empty: the base takes none)
    min_size: int = 32
    block_ends: bool = False  # a match names the last layer of its block (Inception, NASNet), not the first
    norms: tuple[str, ...] = ("BatchNormalization",)  # keras.layers classes that batchnorm="frozen" freezes
    int8: str = ""  # why full-integer TFLite loses more on this base; "" when int8 is fine
    top1: Optional[float] = None  # ImageNet top-1 (Keras' figure; the paper's for ConvNeXt), alpha 1.0
    params: Optional[int] = None  # parameters of the base without its top, alpha 1.0
    blocks_summary: str = ""  # what :func:`summarize_blocks` says of the built base, for `tlkit bases`
    scale: tuple[float, ...] = ()  # "affine" preprocessing, per channel
    offset: tuple[float, ...] = ()
    after_load: Optional[Callable[[object], None]] = None  # fixes a base after a weights file is loaded

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
        return self.build_model(size, alpha)

    def find_file(self, alpha: Optional[float], size: int, folders: list[Path]) -> Optional[Path]:
        """The pretrained file on this machine, if any: one the record knows by path, or one of Keras' files by
        name in ``folders`` (a KerasHub preset's file lives in KerasHub's own cache instead)."""
        for file in self.weight_files(alpha, size):
            if file.path is not None:
                candidates = [file.path]
            elif file.url and file.url.startswith(("https://", "http://")):
                candidates = [folder / file.name for folder in folders]
            else:
                continue
            found = next((c for c in candidates if c.is_file()), None)
            if found is not None:
                return found
        return None

    def norm_layers(self) -> tuple[type, ...]:
        """The normalisation layer classes of this base (what ``batchnorm="frozen"`` freezes)."""
        import keras
        return tuple(getattr(keras.layers, name) for name in self.norms)

    def blocks(self, base) -> list[tuple[str, list[str]]]:
        """The base's layers grouped into named blocks, bottom to top: ``stem``, the blocks, ``top``.

        A layer the pattern does not name joins the block of the layer before it (``stem`` before the first
        block), or with ``block_ends`` the block of the layer after it; layers after the last named one are
        ``top``. When the pattern names no layer, every layer is its own block."""
        layers = base.layers[1:]  # layers[0] is the InputLayer
        pattern = re.compile(self.block_pattern)
        names = [_block_name(pattern.match(layer.name)) for layer in layers]
        named = [i for i, n in enumerate(names) if n]
        if not named:
            return [(layer.name, [layer.name]) for layer in layers]
        last = named[-1]
        order = range(last, -1, -1) if self.block_ends else range(last + 1)
        fill = "stem"
        for i in order:
            fill = names[i] = names[i] or fill
        names[last + 1:] = ["top"] * (len(names) - last - 1)
        groups: list[tuple[str, list[str]]] = []
        for layer, block in zip(layers, names):
            if not groups or groups[-1][0] != block:
                groups.append((block, []))
            groups[-1][1].append(layer.name)
        return groups


def _block_name(match) -> Optional[str]:
    group = next((g for g in match.groups() if g), None) if match else None
    return f"block_{group}" if group and group.isdigit() else group


def summarize_blocks(groups: list[tuple[str, list[str]]]) -> str:
    """Block names in one short line: all of them up to five, else the first two and the last two."""
    names = [name for name, _ in groups]
    shown = names if len(names) <= 5 else names[:2] + ["..."] + names[-2:]
    return f"{', '.join(shown)} ({len(names)})"


# === The registry ===

BACKBONES: dict[str, Backbone] = {}


def register_backbone(name: str, model: Union[str, Path, Callable[[int], object]], *, preprocessing: str,
                      block_pattern: str, default_size: Optional[int] = None, weights: Union[str, Path, None] = None,
                      **options) -> Backbone:
    """Add a base under ``name`` (for ``base=name`` in recipes) and return its record; registering the same
    name again (a recipe module imported twice) replaces it. Bad arguments raise ValueError.

    ``model`` is a ``.keras`` file of your network without its classifier (its own weights are the base's
    pretrained weights, and it is rebuilt for other image sizes) or a function ``size -> keras.Model`` building
    it with random init (``weights`` then names its pretrained ``.h5``/``.keras``/``.weights.h5`` file).
    ``preprocessing`` is one of "tf", "caffe", "torch" or "raw" (your model normalises 0-255 pixels itself);
    ``block_pattern`` groups layers into blocks as for the built-in bases. Other keywords are
    :class:`Backbone` fields (``min_size``, ``block_ends``, ``norms``, ``int8``, ``top1``).
    """
    if name in _BUILTIN:
        raise ValueError(f"base {name!r} is built in; register yours under another name")
    if preprocessing not in ("tf", "caffe", "torch", "raw"):
        raise ValueError(f"preprocessing must be tf, caffe, torch or raw; received: {preprocessing!r}")
    re.compile(block_pattern)
    if callable(model):
        build, size = (lambda s, alpha: model(s)), default_size
        files = [] if weights is None else [_local_file(weights)]
    else:
        file = _local_file(model)
        build, size = _keras_file_builder(file.path), default_size or _saved_size(file.path)
        files = [file if weights is None else _local_file(weights)]
    if not size:
        raise ValueError(f"register_backbone({name!r}): pass default_size (the model has no fixed input size)")
    record = Backbone(name, build, preprocessing, size, block_pattern, lambda alpha, s: files, **options)
    BACKBONES[name] = record
    return record


def _local_file(path) -> WeightFile:
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return WeightFile(path.name, path=path)


def _saved_size(path: Path) -> Optional[int]:
    import keras
    return keras.saving.load_model(path, compile=False).inputs[0].shape[1]


def _keras_file_builder(path: Path):
    def build(size, alpha):
        import keras
        saved = keras.saving.load_model(path, compile=False)  # cloned: the same layers, new weights, any size
        return keras.models.clone_model(saved, input_tensors=keras.Input((size, size, saved.inputs[0].shape[-1])))
    return build


# === keras.applications ===

def _application(app: str, **kwargs):
    def build(size, alpha):
        import keras
        extra = {"alpha": alpha} if alpha is not None else {}
        return getattr(keras.applications, app)(include_top=False, weights=None, input_shape=(size, size, 3),
                                                **kwargs, **extra)
    return build


def _file(name: str, folder: str, hash: Optional[str] = None, url_name: str = "", root: str = _KERAS_APPS):
    file = WeightFile(name, f"{root}{folder}{url_name or name}", hash)
    return lambda alpha, size: [file]


def _mobilenet_files(alpha, size):
    text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[alpha]
    sizes = [size, 224] if size in (128, 160, 192) else [224]  # no-top conv weights fit any size
    return [WeightFile(f"mobilenet_{text}_{s}_tf_no_top.h5",
                       f"{_KERAS_APPS}mobilenet/mobilenet_{text}_{s}_tf_no_top.h5") for s in sizes]


def _mobilenet_v2_files(alpha, size):
    sizes = [size, 224] if size in (96, 128, 160, 192) else [224]
    names = [f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{s}_no_top.h5" for s in sizes]
    return [WeightFile(n, f"{_KERAS_APPS}mobilenet_v2/{n}") for n in names]


def _mobilenet_v3_files(kind: str, hashes: dict[float, str]):
    def files(alpha, size):
        name = f"weights_mobilenet_v3_{kind}_224_{alpha or 1.0}_float_no_top_v2.h5"
        return [WeightFile(name, f"{_KERAS_APPS}mobilenet_v3/{name}", hashes[alpha or 1.0])]
    return files


_IMAGENET_STD = (0.229, 0.224, 0.225)


def _efficientnet_variance(base) -> None:
    """Keras' EfficientNet files hold the ImageNet std where the Normalization layer wants the variance;
    ``EfficientNetB*(weights="imagenet")`` adds a rescaling by 1/sqrt(std) for it (tensorflow#49930). A base
    built without weights has no such layer, so the loaded variance is scaled by std instead: the same function."""
    import numpy as np
    norm = next(layer for layer in base.layers if type(layer).__name__ == "Normalization")
    mean, variance, count = norm.get_weights()
    norm.set_weights([mean, variance * np.asarray(_IMAGENET_STD, variance.dtype), count])
    norm.finalize_state()  # the layer computes with tensors made from its weights


_SWISH_SE = "swish and squeeze-excite lose more under full-integer quantization (EfficientNet-Lite drops both)"
_HARD_SWISH_SE = "hard-swish and squeeze-excite lose more under full-integer quantization (minimalistic has neither)"
_LAYERNORM = "LayerNorm and GELU lose more under full-integer quantization"
_EFFICIENTNET_V1 = "https://storage.googleapis.com/keras-applications/"

# Per base: Keras application, default size, ImageNet top-1 as Keras documents it (ConvNeXt: the paper's, for
# the weights Keras ships: tiny/small ImageNet-1k, the others 21k then 1k), parameters without the top (alpha
# 1.0), its blocks (summarize_blocks of the built base; a test rebuilds each and compares), its weights file
# (name and md5/sha256 as keras.applications fetches them).
_TABLE = {
    "vgg16": ("VGG16", 224, 0.713, 14714688, "block1, block2, block3, block4, block5 (5)",
              "6d6bbae143d832006294945121d1f1fc"),
    "vgg19": ("VGG19", 224, 0.713, 20024384, "block1, block2, block3, block4, block5 (5)",
              "253f8cb515780f3b799900260a226db6"),
    "resnet50": ("ResNet50", 224, 0.749, 23587712, "stem, conv2_block1, ..., conv5_block2, conv5_block3 (17)",
                 "4d473c1dd8becc155b73f8504c6f6626"),
    "resnet101": ("ResNet101", 224, 0.764, 42658176, "stem, conv2_block1, ..., conv5_block2, conv5_block3 (34)",
                  "88cf7a10940856eca736dc7b7e228a21"),
    "resnet152": ("ResNet152", 224, 0.766, 58370944, "stem, conv2_block1, ..., conv5_block2, conv5_block3 (51)",
                  "ee4c566cf9a93f14d82f913c2dc6dd0c"),
    "resnet50_v2": ("ResNet50V2", 224, 0.760, 23564800, "stem, conv2_block1, ..., conv5_block3, top (18)",
                    "fac2f116257151a9d068a22e544a4917"),
    "resnet101_v2": ("ResNet101V2", 224, 0.772, 42626560, "stem, conv2_block1, ..., conv5_block3, top (35)",
                     "c0ed64b8031c3730f411d2eb4eea35b5"),
    "resnet152_v2": ("ResNet152V2", 224, 0.780, 58331648, "stem, conv2_block1, ..., conv5_block3, top (52)",
                     "ed17cf2e0169df9d443503ef94b23b33"),
    "inception_v3": ("InceptionV3", 299, 0.779, 21802784, "mixed0, mixed1, ..., mixed9, mixed10 (11)",
                     "bcbd6486424b2319ff4ef7d526e38f63"),
    "inception_resnet_v2": ("InceptionResNetV2", 299, 0.803, 54336736, "mixed_5b, block35_1, ..., block8_10, top (44)",
                            "d19885ff4a710c122648d3b5c3b684e4"),
    "xception": ("Xception", 299, 0.790, 20861480, "block1, block2, ..., block13, block14 (14)",
                 "b0042744bf5b25fce3cb969f33bebb97"),
    "densenet121": ("DenseNet121", 224, 0.750, 7037504, "stem, conv2_block1, ..., conv5_block16, top (63)",
                    "30ee3e1110167f948a6b9946edeeb738"),
    "densenet169": ("DenseNet169", 224, 0.762, 12642880, "stem, conv2_block1, ..., conv5_block32, top (87)",
                    "b8c4d4c20dd625c148057b9ff1c1176b"),
    "densenet201": ("DenseNet201", 224, 0.773, 18321984, "stem, conv2_block1, ..., conv5_block32, top (103)",
                    "c13680b51ded0fb44dff2d8f86ac8bb1"),
    "nasnet_mobile": ("NASNetMobile", 224, 0.744, 4269716, "stem, stem_1, ..., block_12, top (18)",
                      "1ed92395b5b598bdda52abe5c0dbfd63"),
    "nasnet_large": ("NASNetLarge", 331, 0.825, 84916818, "stem, stem_1, ..., block_18, top (24)",
                     "d81d89dc07e6e56530c4e77faddd61b5"),
    "mobilenet": ("MobileNet", 224, 0.704, 3228864, "stem, block_1, ..., block_12, block_13 (14)", None),
    "mobilenet_v2": ("MobileNetV2", 224, 0.713, 2257984, "stem, expanded_conv, ..., block_16, top (19)", None),
    "mobilenet_v3_small": ("MobileNetV3Small", 224, 0.681, 939120,
                           "stem, expanded_conv, ..., expanded_conv_10, top (13)",
                           {0.75: "ebdb5cc8e0b497cd13a7c275d475c819", 1.0: "d3e8ec802a04aa4fc771ee12a9a9b836"}),
    "mobilenet_v3_large": ("MobileNetV3Large", 224, 0.756, 2996352,
                           "stem, expanded_conv, ..., expanded_conv_14, top (17)",
                           {0.75: "40af19a13ebea4e2ee0c676887f69a2e", 1.0: "07fb09a5933dd0c8eaafa16978110389"}),
    "mobilenet_v3_small_minimalistic": ("MobileNetV3Small", 224, 0.619, 441000,
                                        "stem, expanded_conv, ..., expanded_conv_10, top (13)",
                                        {1.0: "cde8136e733e811080d9fcd8a252f7e4"}),
    "mobilenet_v3_large_minimalistic": ("MobileNetV3Large", 224, 0.723, 1437608,
                                        "stem, expanded_conv, ..., expanded_conv_14, top (17)",
                                        {1.0: "ec5221f64a2f6d1ef965a614bdae7973"}),
    "efficientnet_b0": ("EfficientNetB0", 224, 0.771, 4049571, "stem, block1a, ..., block7a, top (18)",
                        "50bc09e76180e00e4465e1a485ddc09d"),
    "efficientnet_b1": ("EfficientNetB1", 240, 0.791, 6575239, "stem, block1a, ..., block7b, top (25)",
                        "74c4e6b3e1f6a1eea24c589628592432"),
    "efficientnet_b2": ("EfficientNetB2", 260, 0.801, 7768569, "stem, block1a, ..., block7b, top (25)",
                        "111f8e2ac8aa800a7a99e3239f7bfb39"),
    "efficientnet_b3": ("EfficientNetB3", 300, 0.816, 10783535, "stem, block1a, ..., block7b, top (28)",
                        "af6d107764bb5b1abb91932881670226"),
    "efficientnet_b4": ("EfficientNetB4", 380, 0.829, 17673823, "stem, block1a, ..., block7b, top (34)",
                        "ebc24e6d6c33eaebbd558eafbeedf1ba"),
    "efficientnet_b5": ("EfficientNetB5", 456, 0.836, 28513527, "stem, block1a, ..., block7c, top (41)",
                        "38879255a25d3c92d5e44e04ae6cec6f"),
    "efficientnet_b6": ("EfficientNetB6", 528, 0.840, 40960143, "stem, block1a, ..., block7c, top (47)",
                        "9ecce42647a20130c1f39a5d4cb75743"),
    "efficientnet_b7": ("EfficientNetB7", 600, 0.843, 64097687, "stem, block1a, ..., block7d, top (57)",
                        "cbcfe4450ddf6f3ad90b1b398090fe4a"),
    "efficientnet_v2_b0": ("EfficientNetV2B0", 224, 0.787, 5919312, "stem, block1a, ..., block6h, top (23)",
                           "893217f2bb855e2983157299931e43ff"),
    "efficientnet_v2_b1": ("EfficientNetV2B1", 240, 0.798, 6931124, "stem, block1a, ..., block6i, top (29)",
                           "0e80663031ca32d657f9caa404b6ec37"),
    "efficientnet_v2_b2": ("EfficientNetV2B2", 260, 0.805, 8769374, "stem, block1a, ..., block6j, top (30)",
                           "1dfe2e7a5d45b6632553a8961ea609eb"),
    "efficientnet_v2_b3": ("EfficientNetV2B3", 300, 0.820, 12930622, "stem, block1a, ..., block6l, top (34)",
                           "f6abf7b5849ac99a89b50dd3fd532856"),
    "efficientnet_v2_s": ("EfficientNetV2S", 384, 0.839, 20331360, "stem, block1a, ..., block6o, top (42)",
                          "af0682fb74e8c54910f2d4393339c070"),
    "efficientnet_v2_m": ("EfficientNetV2M", 480, 0.853, 53150388, "stem, block1a, ..., block7e, top (59)",
                          "1b8dc055df72dde80d614482840fe342"),
    "efficientnet_v2_l": ("EfficientNetV2L", 480, 0.857, 117746848, "stem, block1a, ..., block7g, top (81)",
                          "b0b66b5c863aef5b46e8608fe1711615"),
    "convnext_tiny": ("ConvNeXtTiny", 224, 0.821, 27820128, "stem, stage_0_block_0, ..., stage_3_block_2, top (23)",
                      "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1"),
    "convnext_small": ("ConvNeXtSmall", 224, 0.831, 49454688, "stem, stage_0_block_0, ..., stage_3_block_2, top (41)",
                       "6fc8009faa2f00c1c1dfce59feea9b0745eb260a7dd11bee65c8e20843da6eab"),
    "convnext_base": ("ConvNeXtBase", 224, 0.858, 87566464, "stem, stage_0_block_0, ..., stage_3_block_2, top (41)",
                      "40a20c5548a5e9202f69735ecc06c990e6b7c9d2de39f0361e27baeb24cb7c45"),
    "convnext_large": ("ConvNeXtLarge", 224, 0.866, 196230336, "stem, stage_0_block_0, ..., stage_3_block_2, top (41)",
                       "96f02b6f0753d4f543261bc9d09bed650f24dd6bc02ddde3066135b63d23a1cd"),
    "convnext_xlarge": ("ConvNeXtXLarge", 224, 0.870, 348147968,
                        "stem, stage_0_block_0, ..., stage_3_block_2, top (41)",
                        "de3f8a54174130e0cecdc71583354753d557fcf1f4487331558e2a16ba0cfe05"),
}


def _family(name: str) -> dict:
    """What a base shares with its family: preprocessing, block pattern, weights files and traits."""
    app, size, top1, params, blocks, hash = _TABLE[name]
    head = name.split("_")[0].rstrip("0123456789")
    if name == "mobilenet":
        traits = dict(preprocessing="tf", block_pattern=r"^conv_(?:dw|pw|pad)_(\d+)", weight_files=_mobilenet_files,
                      alphas=(0.25, 0.5, 0.75, 1.0))
    elif name == "mobilenet_v2":
        traits = dict(preprocessing="tf", block_pattern=r"^(expanded_conv|block_\d+)", weight_files=_mobilenet_v2_files,
                      alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4))
    elif name.startswith("mobilenet_v3"):
        minimal = name.endswith("minimalistic")
        traits = dict(preprocessing="raw", block_pattern=r"^(expanded_conv(?:_\d+)?)_",
                      weight_files=_mobilenet_v3_files(name.removeprefix("mobilenet_v3_"), hash),
                      alphas=() if minimal else (0.75, 1.0), int8="" if minimal else _HARD_SWISH_SE,
                      kwargs={"minimalistic": minimal})
    elif head == "vgg":
        traits = dict(preprocessing="caffe", block_pattern=r"^(block\d)_", norms=(),
                      weight_files=_file(f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5", f"{name}/", hash))
    elif head == "resnet":
        key = name.replace("_", "")
        traits = dict(preprocessing="tf" if name.endswith("_v2") else "caffe", block_pattern=r"^(conv\d_block\d+)_",
                      weight_files=_file(f"{key}_weights_tf_dim_ordering_tf_kernels_notop.h5", "resnet/", hash))
    elif head == "densenet":
        traits = dict(preprocessing="torch", block_pattern=r"^(conv\d_block\d+|pool\d)_",
                      weight_files=_file(f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5", "densenet/", hash))
    elif head in ("inception", "xception"):
        pattern = {"inception_v3": r"^(mixed\d+)$", "xception": r"^(block\d+)_",
                   "inception_resnet_v2": r"^(mixed_\d[a-z])$|^(block\d+_\d+)_(?:conv|ac)$"}[name]
        traits = dict(preprocessing="tf", block_pattern=pattern, block_ends=name != "xception",
                      min_size=71 if name == "xception" else 75,
                      weight_files=_file(f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5", f"{name}/", hash))
    elif head == "nasnet":
        kind = name.removeprefix("nasnet_")
        traits = dict(preprocessing="tf", block_pattern=r"^(stem)_bn1$|^(?:normal|reduction)_concat_(\w+)$",
                      block_ends=True, weight_files=_file(f"nasnet_{kind}_no_top.h5", "nasnet/", hash,
                                                          url_name=f"NASNet-{kind}-no-top.h5"))
    elif name.startswith("efficientnet_v2"):
        key = name.removeprefix("efficientnet_v2_")
        traits = dict(preprocessing="raw", block_pattern=r"^(block\d+[a-z])_", int8=_SWISH_SE,
                      weight_files=_file(f"efficientnetv2-{key}_notop.h5", "efficientnet_v2/", hash))
    elif head == "efficientnet":
        traits = dict(preprocessing="raw", block_pattern=r"^(block\d+[a-z])_", int8=_SWISH_SE,
                      after_load=_efficientnet_variance,
                      weight_files=_file(f"{name.replace('_', '')}_notop.h5", "", hash, root=_EFFICIENTNET_V1))
    else:  # convnext
        traits = dict(preprocessing="raw", norms=("LayerNormalization",), int8=_LAYERNORM,
                      block_pattern=r"^convnext_[a-z]+_(stem|stage_\d+_block_\d+|downsampling_block_\d+)",
                      weight_files=_file(f"{name}_notop.h5", "convnext/", hash))
    return dict(build_model=_application(app, **traits.pop("kwargs", {})), default_size=size, top1=top1,
                params=params, blocks_summary=blocks, **traits)


BACKBONES.update((name, Backbone(name, **_family(name))) for name in _TABLE)
_BUILTIN = frozenset(BACKBONES)


# === What `tlkit bases` shows ===

def base_rows(weights_folders: list[Path]) -> list[dict]:
    """One row per built-in and registered base: name, parameters, default size, preprocessing, whether its
    pretrained file is in ``weights_folders`` (for which alphas), ImageNet top-1, blocks, norms, int8 advice."""
    rows = []
    for backbone in sorted(BACKBONES.values(), key=lambda b: b.name):
        alphas = backbone.alphas or (None,)
        found = [a for a in alphas if backbone.find_file(a, backbone.default_size, weights_folders)]
        offline = ("yes" if found else "no") if alphas == (None,) else \
            (", ".join(f"alpha {a}" for a in found) or "no")
        rows.append({"name": backbone.name, "parameters": backbone.params, "default_size": backbone.default_size,
                     "min_size": backbone.min_size, "alphas": list(backbone.alphas),
                     "preprocessing": backbone.preprocessing, "weights_offline": offline,
                     "imagenet_top1": backbone.top1, "blocks": backbone.blocks_summary,
                     "norms": list(backbone.norms), "int8": backbone.int8 or "fine"})
    return rows
