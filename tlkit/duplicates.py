"""Duplicate photos: exact copies (the same decoded pixels) and near-duplicates (the same photo re-encoded,
resized, cropped by up to about a tenth of a side, or brightened), grouped by connected components.

Near-duplicates are proposed by the base's pooled features (each image's nearest neighbours) and decided on
the pixels, so distinct photos of one subject stay apart: the candidate is aligned to the other image (the
crop and scale per axis that best match their row and column brightness profiles), then both are band-pass
filtered at 64 px and correlated (brightness), leaving out clipped highlights. A copy keeps its fine detail
(correlation 0.95-1.0 for the edits above); another shot of the same scene does not (below 0.8 on the
real folders measured: README, *Audit*); ``data.near_duplicate`` (default 0.9) is the line between.
Everything here works on pixels and features already in memory: NumPy, and TensorFlow for the all-pairs
neighbour search.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.linalg import eigh  # imported here, not in threadpool_limits blocks, which then limit it too

PROFILE_THRESHOLD = 0.95  # aligned row and column profiles must correlate this well before the pixel check
UNALIGNED_THRESHOLD = 0.3  # the same, before alignment: a cheap first cut (copies cropped by 12 % keep 0.6)
NEIGHBOURS = 10  # feature neighbours of each image checked as candidates
EMBED_DIMS = 128  # principal axes kept for neighbour search
MAX_CROP = 0.125  # share of a side a copy may lack (the alignment searches crops up to this)
PROFILE_SIZE, DETAIL_SIZE = 32, 64  # samples of the profiles; side of the band-passed thumbnails
COLOUR_THRESHOLD = 0.8  # aligned copies keep their colours: the correlation of their smoothed chroma must reach this
GREY = 4.0  # smoothed chroma spread (grey levels) below which an image counts as grey: its colour says nothing
CLIPPED = 250  # a channel at or above this (after resampling) is a clipped highlight, left out of the check
PIXELS_AT_ONCE = 2 ** 17  # image pixels the detail check works on at once (what bounds its memory)
BLOCK_VALUES = 2 ** 21  # pixel values worked on at once: their float32 copies (8 MB) reuse the same memory
_GRAY = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class Pair:
    """Two images found to be one photo: positions in the images given, ``a < b``."""

    a: int
    b: int
    kind: str  # "exact" (the same decoded pixels) or "near"
    score: float  # 1.0 for exact; the aligned detail correlation for near


@dataclass
class Duplicates:
    """Every pair found and the groups they join (connected components, each sorted, two or more images)."""

    pairs: list[Pair] = field(default_factory=list)
    groups: list[list[int]] = field(default_factory=list)

    def group_of(self) -> dict[int, int]:
        """Image position -> index of its group, for images in a group."""
        return {i: g for g, members in enumerate(self.groups) for i in members}

    def group_ids(self, n: int) -> np.ndarray:
        """For ``n`` images: each one's group index, or an id of its own for images in no group."""
        ids = np.arange(n) + len(self.groups)
        for g, members in enumerate(self.groups):
            ids[members] = g
        return ids

    def of_kind(self, kind: str) -> Duplicates:
        """The pairs of one kind and the groups they alone join."""
        pairs = [p for p in self.pairs if p.kind == kind]
        return Duplicates(pairs, _components(max((p.b for p in pairs), default=0) + 1, pairs))


class Rows:
    """Images held in several arrays (a dataset's splits) seen as one sequence of ``(size, size, 3)`` rows."""

    def __init__(self, arrays: Sequence[np.ndarray]):
        self.arrays = [a for a in arrays if len(a)]
        self.starts = np.cumsum([0] + [len(a) for a in self.arrays])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.arrays[k][i - self.starts[k]]

    def blocks(self, values: int = BLOCK_VALUES):
        """``(start, rows)`` in order, as many rows at a time as hold at most ``values`` pixel values (one at least)."""
        for k, array in enumerate(self.arrays):
            size = max(1, values // array[0].size)
            for s in range(0, len(array), size):
                yield int(self.starts[k]) + s, np.asarray(array[s:s + size])


# === Features: neighbours ===

def unit_rows(features: np.ndarray) -> np.ndarray:
    """Pooled features as unit vectors after a signed square root (power normalisation: a few strong
    activations no longer drown the rest), the form every comparison here uses."""
    x = features.reshape(len(features), -1).astype(np.float32)  # a copy, then worked on in place
    np.copysign(np.sqrt(np.abs(x)), x, out=x)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    return x


def embed(features: np.ndarray, dims: int = EMBED_DIMS) -> np.ndarray:
    """Features as unit vectors on the top ``dims`` principal axes of their centred :func:`unit_rows`:
    cosine neighbours at a fraction of the cost, and a better input for linear probes."""
    x = unit_rows(features)
    x -= x.mean(axis=0)
    if min(x.shape) > dims:
        sample = x[::max(1, len(x) // 2048)]  # the axes of a couple of thousand images are the axes of all
        if len(sample) < x.shape[1]:  # the same axes from the images' smaller Gram matrix
            _, vectors = np.linalg.eigh(sample @ sample.T)
            vectors = sample.T @ vectors[:, ::-1][:, :dims]
            vectors /= np.linalg.norm(vectors, axis=0)
        else:
            _, vectors = eigh(sample.T @ sample, subset_by_index=[x.shape[1] - dims, x.shape[1] - 1])  # the top only
            vectors = vectors[:, ::-1]
        x = x @ vectors
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def neighbours(z: np.ndarray, k: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other rows of unit vectors ``z`` by cosine: indices and similarities ``(N, k)``,
    nearest first (ties: the lower index first)."""
    import tensorflow as tf  # its top-k is a multi-threaded heap search, NumPy's a full partition of each row

    k = min(k, len(z) - 1)
    keys = tf.constant(z, tf.float32)
    index, similarity = np.empty((len(z), k), np.int64), np.empty((len(z), k), np.float32)
    for start in range(0, len(z), block):
        stop = min(start + block, len(z))
        sim = tf.matmul(keys[start:stop], keys, transpose_b=True)
        sim -= 4.0 * tf.one_hot(tf.range(start, stop), len(z))  # never itself (cosines are at least -1)
        values, top = tf.math.top_k(sim, k)
        index[start:stop], similarity[start:stop] = top.numpy(), values.numpy()
    return index, similarity


# === Pixels: alignment and the detail check ===

def _edges(offsets, widths, n: int, length: int) -> np.ndarray:
    """Where ``n`` equal bins covering ``[offset, offset + width]`` (fractions of a side of ``length`` pixels)
    begin and end, in pixels: ``(..., n + 1)`` for arrays of ``offsets`` and ``widths`` ``(..., 1)``."""
    return np.clip((offsets + np.arange(n + 1, dtype=np.float32) * widths / n) * length, 0, length)


def _bin_means(x: np.ndarray, offsets, widths, n: int) -> np.ndarray:
    """Means of ``x`` along its last axis over ``n`` equal bins covering ``[offset, offset + width]``
    (fractions of the axis; pixels count by the share a bin covers): ``(..., n)``, where ``offsets`` and
    ``widths`` broadcast against ``x.shape[:-1]``. Crops and resizes with area averaging, from cumulative sums."""
    length = x.shape[-1]
    total = np.concatenate([np.zeros(x.shape[:-1] + (1,), np.float32), np.cumsum(x, axis=-1, dtype=np.float32)],
                           axis=-1)
    offsets, widths = np.asarray(offsets, np.float32)[..., None], np.asarray(widths, np.float32)[..., None]
    edges = _edges(offsets, widths, n, length)
    left = np.minimum(edges.astype(np.int64), length - 1)
    left = left[(np.newaxis,) * (total.ndim - left.ndim)]
    below, above = np.take_along_axis(total, left, -1), np.take_along_axis(total, left + 1, -1)
    return np.diff(below + (edges - left) * (above - below), axis=-1) / (widths * length / n)


def _bin_weights(crops: np.ndarray, n: int, length: int) -> np.ndarray:
    """The bins of :func:`_bin_means` as matrices ``(crops, n, length)``: each row weighs the pixels of one bin
    of a crop ``(offset, width)`` of a side, so ``weights @ x`` crops and resizes ``x`` along that side."""
    offsets, widths = np.asarray(crops[:, :1], np.float32), np.asarray(crops[:, 1:], np.float32)
    below = np.clip(_edges(offsets, widths, n, length)[..., None] - np.arange(length), 0, 1)  # pixel share below
    return (np.diff(below, axis=1) / (widths * length / n)[..., None]).astype(np.float32)


def _range_means(x: np.ndarray, crops: np.ndarray) -> np.ndarray:
    """Means of images ``x`` ``(pairs, height, width)`` over the rows ``crops[p]`` (``offset, width``, fractions
    of the height) covers in whole pixels, from ``int(offset * height)`` to ``round((offset + width) * height)``:
    ``(pairs, width)``."""
    length = x.shape[1]
    total = np.concatenate([np.zeros_like(x[:, :1], np.float64), np.cumsum(x, axis=1, dtype=np.float64)], axis=1)
    low = (crops[:, 0] * length).astype(np.int64)
    high = np.round((crops[:, 0] + crops[:, 1]) * length).astype(np.int64)
    pairs = np.arange(len(x))
    return ((total[pairs, high] - total[pairs, low]) / (high - low)[:, None]).astype(np.float32)


def _centred_unit(x: np.ndarray) -> np.ndarray:
    """Last axis minus its mean, scaled to unit length (all zeros for a flat signal)."""
    x = x - x.mean(axis=-1, keepdims=True)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-3 * x.shape[-1] ** 0.5)


def _moments(x: np.ndarray, y: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per pair (first axis), over the entries ``keep`` marks (it broadcasts against ``x`` and ``y``): their
    number, the sums of squared deviations from the mean of ``x`` and of ``y``, and of their products
    (accumulated in float64)."""
    keep = np.broadcast_to(keep, x.shape).reshape(len(x), -1)
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    n, kx, ky = keep.sum(axis=1), x * keep, y * keep
    sx, sy = kx.sum(axis=1, dtype=np.float64), ky.sum(axis=1, dtype=np.float64)
    sums = (np.einsum("pi,pi->p", u, v, dtype=np.float64) for u, v in ((kx, x), (ky, y), (kx, y)))
    return n, next(sums) - sx * sx / n, next(sums) - sy * sy / n, next(sums) - sx * sy / n


def _correlation(n: np.ndarray, xx: np.ndarray, yy: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """The correlation of two signals from their :func:`_moments` (0 when either is flat, as
    :func:`_centred_unit` has it)."""
    flat = 1e-6 * n  # the squared norm below which _centred_unit calls a signal flat
    return np.where((xx > flat) & (yy > flat), xy / np.sqrt(np.maximum(xx, flat) * np.maximum(yy, flat)), 0.0)


def _crop_grid(step: float) -> np.ndarray:
    """Crops ``(offset, width)`` with widths from 1 - MAX_CROP to 1 and offsets inside, every ``step``."""
    widths = np.arange(1.0, 1.0 - MAX_CROP - 1e-9, -step)
    return np.array([(o, w) for w in widths for o in np.arange(0.0, 1.0 - w + 1e-9, step)], np.float32)


def _gaussian(n: int, sigma: float) -> np.ndarray:
    x = np.arange(n)
    g = np.exp(-0.5 * ((x[:, None] - x[None, :]) / sigma) ** 2)
    g = (g / g.sum(axis=1, keepdims=True)).astype(np.float32)
    g[g < np.finfo(np.float32).eps * g.max()] = 0.0  # below rounding: no change, and tiny (subnormal) products are slow
    return g


class _Checker:
    """The pixel side of near-duplicate detection for one set of images."""

    def __init__(self, rows: Rows):
        self.rows = rows
        self.length = length = rows.arrays[0].shape[1]
        self.coarse = _crop_grid(0.025)
        samples = min(PROFILE_SIZE, length)
        self.profiles = np.empty((len(rows), 2, length), np.float32)  # per image: row means, column means
        # every coarse crop of every profile, resampled and normalised: (N, 2, crops, samples)
        self.cropped = np.empty((len(rows), 2, len(self.coarse), samples))
        for start, block in rows.blocks():
            gray = block.astype(np.float32) @ _GRAY
            profiles = np.stack([gray.mean(axis=2), gray.mean(axis=1)], axis=1)
            self.profiles[start:start + len(block)] = profiles
            self.cropped[start:start + len(block)] = _centred_unit(
                _bin_means(profiles[:, :, None], self.coarse[:, 0], self.coarse[:, 1], samples))
        self.whole = self.cropped[:, :, 0]  # the first crop is the whole image
        self.size = min(DETAIL_SIZE, length)
        self.band = _gaussian(self.size, 1.0) - _gaussian(self.size, 3.0)
        self.spread = _gaussian(self.size, 3.0)

    def coarse_match(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For pairs (a crop of ``a`` matching the whole of ``b``): the profile correlation (the worse axis)
        and the best coarse crop per axis ``(pairs, 2)``."""
        scores = np.einsum("pagk,pak->pag", self.cropped[a], self.whole[b])
        return scores.max(axis=2).min(axis=1), scores.argmax(axis=2)

    def details(self, a: np.ndarray, b: np.ndarray, crop_index: np.ndarray) -> np.ndarray:
        """For pairs ``p``: how well the aligned crop of image ``a[p]`` (starting from the coarse crops
        ``crop_index[p]``, rows then columns) reproduces the fine detail of image ``b[p]``: the correlation of
        their band-passed brightness thumbnails (JPEG keeps brightness detail and halves colour detail),
        clipped highlights left out; 0 when their colours differ. Pairs go by ``b`` (its whole-image planes are
        made once), PIXELS_AT_ONCE image pixels at a time."""
        order, step = np.argsort(b, kind="stable"), max(1, PIXELS_AT_ONCE // self.length ** 2)
        scores = np.empty(len(a))
        for s in range(0, len(a), step):
            chunk = order[s:s + step]
            scores[chunk] = self._details(a[chunk], b[chunk], crop_index[chunk])
        return scores

    def _details(self, a: np.ndarray, b: np.ndarray, crop_index: np.ndarray) -> np.ndarray:
        images, b = np.unique(b, return_inverse=True)  # b: positions in images
        whole = self._thumbnails(self._planes(images), np.array([[0.0, 1.0]]), np.array([[0.0, 1.0]]))[b]
        target = _centred_unit(_bin_means(self.profiles[images], 0.0, 1.0, self.size))[b]  # rows, columns
        planes = self._planes(a)
        y, x = self.coarse[crop_index[:, 0]], self.coarse[crop_index[:, 1]]
        y = self._refine(_range_means(np.swapaxes(planes[:, 0], 1, 2), x), target[:, 0], y)  # over the columns kept
        x = self._refine(_range_means(planes[:, 0], y), target[:, 1], x)
        cropped = self._thumbnails(planes, y, x)
        clipped = ((cropped[:, 1] >= CLIPPED) | (whole[:, 1] >= CLIPPED)).astype(np.float32)
        keep = (self.spread @ clipped @ self.spread.T) < 0.05
        keep[keep.mean(axis=(1, 2)) < 0.25] = True  # mostly clipped: compare everything rather than almost nothing
        colours = _moments(cropped[:, 2:], whole[:, 2:], keep[:, None])
        return np.where(self._same_colours(*colours), _correlation(*_moments(cropped[:, 0], whole[:, 0], keep)), 0.0)

    def _refine(self, profiles: np.ndarray, targets: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Per pair, the crop ``(offset, width)`` of ``profiles[p]`` that best matches ``targets[p]`` (resampled to
        ``size``, centred, unit) near ``starts[p]``, to 0.5 %: ``(pairs, 2)``."""
        steps = np.arange(-3, 4) * 0.005  # the coarse grid is off by 1.25 % at most
        widths = np.minimum(np.tile(starts[:, 1:] + steps, len(steps)), 1.0)
        offsets = np.clip(np.repeat(starts[:, :1] + steps, len(steps), axis=1), 0.0, 1.0 - widths)
        resampled = _centred_unit(_bin_means(profiles[:, None], offsets, widths, self.size))
        best = np.argmax(np.einsum("pcs,ps->pc", resampled, targets), axis=1)[:, None]
        return np.concatenate([np.take_along_axis(offsets, best, 1), np.take_along_axis(widths, best, 1)], axis=1)

    @staticmethod
    def _same_colours(n: np.ndarray, aa: np.ndarray, bb: np.ndarray, ab: np.ndarray) -> np.ndarray:
        """Per pair, whether aligned images share their colours, from the :func:`_moments` of their smoothed
        chroma: its correlation reaches COLOUR_THRESHOLD, or both are grey. Drawn or rendered images of one
        subject share their edges, not their colours."""
        return (np.sqrt(np.maximum(aa, bb) / n) < GREY) | (_correlation(n, aa, bb, ab) >= COLOUR_THRESHOLD)

    def _planes(self, images: np.ndarray) -> np.ndarray:
        """Images as brightness, brightest channel (where clipping shows) and chroma (each channel minus the
        pixel's mean, which brightness changes leave as it is): ``(images, 5, height, width)``."""
        pixels = np.stack([self.rows[int(i)] for i in images]).astype(np.float32)
        r, g, b = np.moveaxis(pixels, -1, 0)
        mean = (r + g + b) / 3
        return np.stack([pixels @ _GRAY, np.maximum(np.maximum(r, g), b), r - mean, g - mean, b - mean], axis=1)

    def _thumbnails(self, planes: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """:meth:`_planes` cropped to rows ``y`` and columns ``x`` (``(offset, width)`` per image, or one for all),
        ``size`` x ``size``: band-passed brightness, brightest channel and smoothed chroma ``(images, 5, size,
        size)``. The brightest channel is resampled by :func:`_bin_means`, whose rounding has always decided
        whether flat regions at exactly CLIPPED count as clipped; the others by matrix products."""
        brightest = _bin_means(planes[:, 1], x[:, None, 0], x[:, None, 1], self.size)  # images, height, size
        brightest = np.swapaxes(_bin_means(np.swapaxes(brightest, 1, 2), y[:, None, 0], y[:, None, 1], self.size), 1, 2)
        rows, columns = _bin_weights(y, self.size, self.length), _bin_weights(x, self.size, self.length)
        band, spread = ((f @ rows)[:, None] @ planes[:, kept] @ np.swapaxes(f @ columns, 1, 2)[:, None]
                        for kept, f in ((slice(0, 1), self.band), (slice(2, 5), self.spread)))
        return np.concatenate([band, brightest[:, None], spread], axis=1)


# === Finding them ===

def pixel_hashes(rows: Rows) -> list[bytes]:
    """A digest of each image's decoded pixels: equal digests, equal pixels."""
    digests = []
    for _, block in rows.blocks():
        digests += [hashlib.sha256(np.ascontiguousarray(image)).digest() for image in block]
    return digests


def find_duplicates(rows: Rows, near_threshold: float, features: np.ndarray | None = None,
                    nearest: np.ndarray | None = None) -> Duplicates:
    """Exact duplicates of ``rows`` (decoded pixels) and, given the base's pooled ``features`` (one row per
    image, same order) or their ``nearest`` neighbour indices ``(N, k)``, near-duplicates whose aligned detail
    correlation is at least ``near_threshold`` (``data.near_duplicate``)."""
    pairs, first = [], {}
    for i, digest in enumerate(pixel_hashes(rows)):
        if digest in first:
            pairs.append(Pair(first[digest], i, "exact", 1.0))
        else:
            first[digest] = i
    if (features is not None or nearest is not None) and len(rows) > 1:
        if nearest is None:
            nearest = neighbours(embed(features), NEIGHBOURS)[0]
        pairs += _near_pairs(rows, nearest, near_threshold, pairs)
    return Duplicates(pairs, _components(len(rows), pairs))


def _near_pairs(rows: Rows, nearest: np.ndarray, threshold: float, exact: list[Pair]) -> list[Pair]:
    """Each image with its ``nearest`` images, but for itself and the ``exact`` pairs: the pairs whose detail
    correlation (the better direction of those whose profiles match) reaches ``threshold``."""
    n = len(rows)
    i, j = np.repeat(np.arange(n), nearest.shape[1]), nearest.ravel()
    keys = np.unique(np.minimum(i, j) * n + np.maximum(i, j))  # pair (a, b), a < b, as a * n + b
    keys = keys[(keys // n != keys % n) & ~np.isin(keys, np.array([p.a * n + p.b for p in exact], np.int64))]
    if not len(keys):
        return []
    checker, candidates = _Checker(rows), np.stack([keys // n, keys % n], axis=1)
    checks = []  # (candidate, cropped image, whole image, coarse crops) for each direction whose profiles match
    for start in range(0, len(candidates), 4096):
        chunk = np.arange(start, min(start + 4096, len(candidates)))
        a, b = candidates[chunk].T
        chunk = chunk[np.einsum("pak,pak->pa", checker.whole[a], checker.whole[b]).min(axis=1) >= UNALIGNED_THRESHOLD]
        for image, other in ((0, 1), (1, 0)):
            score, crops = checker.coarse_match(candidates[chunk, image], candidates[chunk, other])
            k = chunk[score >= PROFILE_THRESHOLD]
            checks.append((k, candidates[k, image], candidates[k, other], crops[score >= PROFILE_THRESHOLD]))
    k, image, other, crops = (np.concatenate(parts) for parts in zip(*checks))
    scores = np.full(len(candidates), -1.0)
    np.maximum.at(scores, k, checker.details(image, other, crops))
    return [Pair(int(a), int(b), "near", round(float(s), 4)) for (a, b), s in zip(candidates, scores) if s >= threshold]


def _components(n: int, pairs: list[Pair]) -> list[list[int]]:
    """Connected components of two or more images, each sorted, ordered by their first member."""
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for pair in pairs:
        parent[root(pair.a)] = root(pair.b)
    members: dict[int, list[int]] = {}
    for i in sorted({p.a for p in pairs} | {p.b for p in pairs}):
        members.setdefault(root(i), []).append(i)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])
