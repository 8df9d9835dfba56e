"""Images that deserve a second look, from a base's pooled features (as :mod:`tlkit.duplicates` normalises
them), duplicates sharing a group id: likely label errors (a low out-of-fold probability of the given label
from linear probes, the confident-learning ranking) and outliers (far from every class, relative to each
class's own spread). NumPy, scikit-learn and TensorFlow (the all-pairs search) on features in memory."""
from __future__ import annotations

import warnings

import numpy as np

OUTLIER_THRESHOLD = 1.5  # distance to the nearest class, in units of its own spread, above which: an outlier
FOLDS = 5  # out-of-fold predictions: linear probes trained on the other folds (duplicate groups kept in one)
PROBE_C = 0.03  # inverse L2 strength of the probes (strong: a few hundred images per class is common)
OUTLIER_K = 10  # nearest members of a class whose mean distance measures how far an image is from it
BLANK_LEVEL = 3.0  # standard deviation of brightness (0-255) below which an image is blank (JPEG noise is ~1)


def default_label_threshold(classes: int) -> float:
    """The default out-of-fold probability of its own label below which an image is a label suspect: half
    of chance (0.25 for two classes, 0.1 for five), a level a well-labelled image of a learnable class
    rarely falls to."""
    return 0.5 / classes


def out_of_fold(z: np.ndarray, labels: np.ndarray, groups: np.ndarray, classes: int) -> np.ndarray:
    """Class probabilities of every image from linear probes that never saw it (nor its duplicates):
    ``(N, classes)``; NaN for images of a class too small to hold out (under two images)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = z / z.std(axis=0).mean()  # unit average variance per axis, so the probe strength means the same
    counts = np.bincount(labels, minlength=classes)
    judged = counts[labels] >= 2
    folds = int(min(FOLDS, max(2, counts[counts >= 2].min(initial=FOLDS))))
    probabilities = np.full((len(z), classes), np.nan)
    index = np.flatnonzero(judged)
    # folds of whole groups, stratified by the label of each group's first member (scikit-learn's
    # StratifiedGroupKFold does the same in a Python loop over groups, seconds for thousands of images)
    _, first, group_of = np.unique(groups[index], return_index=True, return_inverse=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small classes: fewer members than folds is expected, and handled
        splits = StratifiedKFold(folds, shuffle=True, random_state=0).split(first, labels[index][first])
        for _, held_groups in splits:
            held = np.isin(group_of, held_groups)
            train, held_out = index[~held], index[held]
            probe = LogisticRegression(C=PROBE_C, max_iter=300, tol=1e-3).fit(x[train], labels[train])
            probabilities[held_out] = 0.0
            probabilities[np.ix_(held_out, probe.classes_)] = probe.predict_proba(x[held_out])
    return probabilities


def blank(rows) -> np.ndarray:
    """Which images (a :class:`tlkit.duplicates.Rows`) are blank: one colour, give or take encoding noise."""
    spread = np.empty(len(rows), np.float32)
    for start, block in rows.blocks():
        gray = block.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])  # float32 throughout, as the pixels
        spread[start:start + len(block)] = gray.std(axis=(1, 2))
    return spread < BLANK_LEVEL


def outlier_scores(x: np.ndarray, labels: np.ndarray, groups: np.ndarray, classes: int,
                   block: int = 1024) -> np.ndarray:
    """How far each image (rows of unit vectors ``x``, all dimensions: :func:`tlkit.duplicates.unit_rows`)
    is from its nearest class: the mean cosine distance to that class's ``OUTLIER_K`` nearest members (never
    itself or its duplicates), over the same figure's median for the class's own members. About 1 for a
    typical image; well above it for blank, noise or off-subject images."""
    import tensorflow as tf  # its top-k is a multi-threaded heap search, NumPy's a full partition of each row

    distance = np.empty((len(x), classes), np.float32)
    members = [np.flatnonzero(labels == c) for c in range(classes)]
    keys = tf.constant(x, tf.float32)
    for start in range(0, len(x), block):
        rows = np.arange(start, min(start + block, len(x)))
        similarity = tf.matmul(keys[start:start + len(rows)], keys, transpose_b=True)
        similarity = tf.where(groups[rows][:, None] == groups[None, :], -np.inf, similarity)  # itself, duplicates
        for c, columns in enumerate(members):
            k = min(OUTLIER_K, len(columns) - 1)
            if k < 1:
                distance[rows, c] = np.inf
                continue
            nearest = tf.math.top_k(tf.gather(similarity, columns, axis=1), k).values.numpy()
            distance[rows, c] = 1.0 - np.where(np.isfinite(nearest), nearest, -1.0).mean(axis=1)
    spread = np.array([np.median(distance[m, c]) if len(m) > 1 else np.nan for c, m in enumerate(members)])
    ratio = np.where(np.isfinite(spread), distance / np.maximum(np.nan_to_num(spread), 1e-6), np.inf)
    return ratio.min(axis=1)  # a class of one image has no spread to judge by
