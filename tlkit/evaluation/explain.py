"""Explanations: Grad-CAM (Selvaraju et al. 2017) heatmaps of where in the image the evidence for a class lies,
taken at the base's output feature map (so it works for every base family, whatever its layers are named),
drawn over the photo beside the top classes."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tlkit.errors import TlkitError
from tlkit.evaluation.confidence import all_scores
from tlkit.evaluation.pictures import contact_sheet, overlaid, save_png
from tlkit.files import files_in
from tlkit.images import decode_all
from tlkit.model import feature_map, head_logits, pooled
from tlkit.runfolder import RunFolder
from tlkit.serving.layout import read_manifest
from tlkit.serving.signatures import Confidence, calibrated

log = logging.getLogger(__name__)

BATCH = 16


def grad_cam(model, pixels: np.ndarray, classes: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heatmaps in [0, 1] of the evidence for ``classes`` in uint8 pixels ``(N, size, size, 3)``: ``(N, size, size)``
    for one class per image (default: each image's top class), ``(N, K, size, size)`` for ``classes`` of shape
    ``(N, K)``; and the logits ``(N, classes)`` and pooled base features ``(N, channels)`` of the images. The
    gradient of the class logit at the base's output weights its channels (their spatial mean); the ReLU of the
    weighted sum is resized to the image."""
    import tensorflow as tf

    features = tf.cast(feature_map(model, tf.constant(np.asarray(pixels, np.float32))), tf.float32)
    logits = head_logits(model, features)
    chosen = tf.argmax(logits, axis=-1) if classes is None else tf.constant(classes, tf.int64)
    chosen = tf.reshape(chosen, (len(pixels), -1))  # (N, K)
    repeated = tf.repeat(features, chosen.shape[1], axis=0)  # one copy of the features per class asked for
    with tf.GradientTape() as tape:
        tape.watch(repeated)
        target = tf.gather(head_logits(model, repeated), tf.reshape(chosen, [-1]), batch_dims=1)
    gradients = tape.gradient(target, repeated)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * repeated, axis=-1))[..., None]
    cam = tf.image.resize(cam, pixels.shape[1:3], method="bilinear")[..., 0].numpy()
    peak = cam.max(axis=(1, 2), keepdims=True)
    cam = np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0).reshape((*chosen.shape, *pixels.shape[1:3]))
    return (cam if np.ndim(classes) == 2 else cam[:, 0]), logits.numpy(), pooled(features).numpy()


def keras_twin(path: str | Path) -> RunFolder:
    """The run folder whose model.keras a path stands for: the run folder itself, or the run an export inside it
    (a SavedModel, TFLite or ONNX folder or file listed in its manifest) was made from."""
    path = Path(path)
    for candidate in [path, *path.parents]:
        folder = RunFolder(candidate)
        if not folder.model_file.is_file():
            continue
        exports = [(candidate / entry["path"]).resolve() for entry in read_manifest(folder)]
        if candidate == path or any(path.resolve().is_relative_to(e) for e in exports):
            return folder
        break
    raise TlkitError(f"{path} is neither a run folder nor an export inside one; explanations need the Keras model: "
                     "pass the run folder (or its export/NAME/VERSION folder)")


def explanation_png(pixels: np.ndarray, heatmap: np.ndarray, top: list[tuple[str, float]], title: str,
                    file: Path) -> None:
    """One image's PNG: the photo, the heatmap over it, and the top classes with their probabilities."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9.6, 3.4), layout="constrained")
    photo, heat, bars = figure.subplots(1, 3, width_ratios=(1, 1, 1.3))
    for ax, image in ((photo, pixels), (heat, overlaid(pixels, heatmap))):
        ax.imshow(image)
        ax.set_axis_off()
    photo.set_title("photo", fontsize=9)
    heat.set_title(f"Grad-CAM: {top[0][0]}", fontsize=9)
    names, values = [n for n, _ in top][::-1], [v for _, v in top][::-1]
    bars.barh(range(len(top)), values, color="steelblue")
    bars.set_yticks(range(len(top)), names)
    bars.set_xlim(0, 1)
    bars.set_xlabel("calibrated probability")
    for i, v in enumerate(values):
        bars.text(min(v + 0.02, 0.85), i, f"{v:.1%}", va="center", fontsize=8)
    figure.suptitle(title, fontsize=10)
    save_png(figure, file, 100)


def explain_pixels(model, pixels: np.ndarray, names: list[str], class_names: list[str], confidence: Confidence,
                   out: Path, top_k: int = 3, threshold: float | None = None) -> list[Path]:
    """An explanation PNG in ``out`` per image (``NAME.gradcam.png``), for its top class."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for start in range(0, len(pixels), BATCH):
        batch = pixels[start:start + BATCH]
        heatmaps, logits, features = grad_cam(model, batch)
        probs = calibrated(logits, confidence.temperature).numpy()
        score = all_scores(probs, features, confidence)[confidence.score]
        answered = confidence.answered(score, threshold)
        for i, (image, heatmap, p) in enumerate(zip(batch, heatmaps, probs)):
            order = np.argsort(-p, kind="stable")[:min(top_k, len(class_names))]
            name = names[start + i]
            answer = class_names[order[0]] if answered[i] else confidence.unknown_label
            file = out / f"{name}.gradcam.png"
            explanation_png(image, heatmap, [(class_names[j], float(p[j])) for j in order],
                            f"{name}: {answer} ({confidence.score} {score[i]:.3f})", file)
            written.append(file)
    return written


def explain(model: str | Path, images: list[str | Path], out: str | Path, top_k: int = 3,
            threshold: float | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """`tlkit explain`: a Grad-CAM PNG in ``out`` for each image file given or found in folders given, by the Keras
    model of a run folder or of the run an export came from; also each unreadable file and why."""
    folder = keras_twin(model)
    keras_model, confidence = folder.load_model(), Confidence.read(folder.path)
    files, failures = files_in(images)
    pixels, unreadable, ok = decode_all(files, folder.recipe().size, "explain")
    readable = [f for f, good in zip(files, ok) if good]
    names, seen = [], {}
    for f in readable:  # one PNG per image, even when two folders hold the same file name
        seen[f.stem] = seen.get(f.stem, 0) + 1
        names.append(f.stem if seen[f.stem] == 1 else f"{f.stem}-{seen[f.stem]}")
    written = explain_pixels(keras_model, pixels, names, folder.class_names(), confidence, Path(out), top_k,
                             threshold)
    return written, failures + unreadable


def mistakes_sheet(model, pixels: np.ndarray, mistakes: list[dict], class_names: list[str], file: Path) -> None:
    """The worst mistakes, each with the Grad-CAM of the class it was taken for and of its true class."""
    classes = [[class_names.index(m[label]) for label in ("predicted", "true")] for m in mistakes]
    heatmaps, _, _ = grad_cam(model, pixels, np.array(classes))
    tiles = []
    for mistake, image, (predicted, true) in zip(mistakes, pixels, heatmaps):
        tiles += [(image, Path(mistake["path"]).name[:28], "black"),
                  (overlaid(image, predicted), f"predicted: {mistake['predicted']} {mistake['confidence']:.0%}",
                   "darkred"),
                  (overlaid(image, true), f"true: {mistake['true']}", "black")]
    contact_sheet(tiles, 3, "Grad-CAM of the worst mistakes: where the model saw its answer, and the true class", file,
                  picture=2.2, caption=0.3, gap=0.2, header=0.4, fontsize=8, title_size=10, dpi=90)
