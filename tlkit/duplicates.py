"""Duplicate photos: exact copies (the same decoded pixels) and near-duplicates (the same photo re-encoded,
resized, cropped by up to about a tenth of a side, or brightened), grouped by connected components.

Near-duplicates are proposed by the base's pooled features (each image's nearest neighbours) and decided on
the pixels, so distinct photos of one subject stay apart: the candidate is aligned to the other image (the
crop and scale per axis that best match their row and column brightness profiles), then both are band-pass
filtered at 64 px and correlated (brightness), leaving out clipped highlights. A copy keeps its fine detail
(correlation 0.95-1.0 for the edits above); another shot of the same scene does not (below 0.8 on the
real folders measured: README, *Audit*); ``data.near_duplicate`` (default 0.9) is the line between.
Everything here is NumPy on pixels and features already in memory.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

PROFILE_THRESHOLD = 0.95  # aligned row and column profiles must correlate this well before the pixel check
UNALIGNED_THRESHOLD = 0.3  # the same, before alignment: a cheap first cut (copies cropped by 12 % keep 0.6)
NEIGHBOURS = 10  # feature neighbours of each image checked as candidates
EMBED_DIMS = 128  # principal axes kept for neighbour search
MAX_CROP = 0.125  # share of a side a copy may lack (the alignment searches crops up to this)
PROFILE_SIZE, DETAIL_SIZE = 32, 64  # samples of the profiles; side of the band-passed thumbnails
COLOUR_THRESHOLD = 0.8  # aligned copies keep their colours: the correlation of their smoothed chroma must reach this
GREY = 4.0  # smoothed chroma spread (grey levels) below which an image counts as grey: its colour says nothing
CLIPPED = 250  # a channel at or above this (after resampling) is a clipped highlight, left out of the check
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

    def blocks(self, size: int = 256):
        """``(start, rows)`` in order, at most ``size`` rows at a time."""
        for k, array in enumerate(self.arrays):
            for s in range(0, len(array), size):
                yield int(self.starts[k]) + s, np.asarray(array[s:s + size])


# === Features: neighbours ===

def unit_rows(features: np.ndarray) -> np.ndarray:
    """Pooled features as unit vectors after a signed square root (power normalisation: a few strong
    activations no longer drown the rest), the form every comparison here uses."""
    x = features.reshape(len(features), -1).astype(np.float32)
    x = np.sign(x) * np.sqrt(np.abs(x))
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


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
            from scipy.linalg import eigh

            _, vectors = eigh(sample.T @ sample, subset_by_index=[x.shape[1] - dims, x.shape[1] - 1])  # the top only
            vectors = vectors[:, ::-1]
        x = x @ vectors
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def neighbours(z: np.ndarray, k: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other rows of unit vectors ``z`` by cosine: indices and similarities ``(N, k)``,
    nearest first."""
    k = min(k, len(z) - 1)
    index, similarity = np.empty((len(z), k), np.int64), np.empty((len(z), k), np.float32)
    for start in range(0, len(z), block):
        sim = z[start:start + block] @ z.T
        sim[np.arange(len(sim)), np.arange(start, start + len(sim))] = -np.inf
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        values = np.take_along_axis(sim, top, axis=1)
        order = np.argsort(-values, axis=1)
        index[start:start + block] = np.take_along_axis(top, order, axis=1)
        similarity[start:start + block] = np.take_along_axis(values, order, axis=1)
    return index, similarity


# === Pixels: alignment and the detail check ===

def _bin_means(x: np.ndarray, offsets, widths, n: int) -> np.ndarray:
    """Means of ``x`` along its last axis over ``n`` equal bins covering ``[offset, offset + width]``
    (fractions of the axis; pixels count by the share a bin covers): ``(..., crops, n)`` for arrays of
    ``offsets`` and ``widths``. Crops and resizes with area averaging, from cumulative sums."""
    length = x.shape[-1]
    total = np.concatenate([np.zeros(x.shape[:-1] + (1,), np.float32), np.cumsum(x, axis=-1, dtype=np.float32)],
                           axis=-1)
    offsets = np.atleast_1d(np.asarray(offsets, np.float32))[:, None]
    widths = np.atleast_1d(np.asarray(widths, np.float32))[:, None]
    edges = np.clip((offsets + np.arange(n + 1, dtype=np.float32) * widths / n) * length, 0, length)
    left = np.minimum(edges.astype(np.int64), length - 1)
    at_edges = total[..., left] + (edges - left) * (total[..., left + 1] - total[..., left])
    return np.diff(at_edges, axis=-1) / (widths * length / n)


def _centred_unit(x: np.ndarray) -> np.ndarray:
    """Last axis minus its mean, scaled to unit length (all zeros for a flat signal)."""
    x = x - x.mean(axis=-1, keepdims=True)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-3 * x.shape[-1] ** 0.5)


def _crop_grid(step: float) -> np.ndarray:
    """Crops ``(offset, width)`` with widths from 1 - MAX_CROP to 1 and offsets inside, every ``step``."""
    widths = np.arange(1.0, 1.0 - MAX_CROP - 1e-9, -step)
    return np.array([(o, w) for w in widths for o in np.arange(0.0, 1.0 - w + 1e-9, step)], np.float32)


def _gaussian(n: int, sigma: float) -> np.ndarray:
    x = np.arange(n)
    g = np.exp(-0.5 * ((x[:, None] - x[None, :]) / sigma) ** 2)
    return (g / g.sum(axis=1, keepdims=True)).astype(np.float32)


class _Checker:
    """The pixel side of near-duplicate detection for one set of images."""

    def __init__(self, rows: Rows):
        self.rows = rows
        self.length = length = rows.arrays[0].shape[1]
        self.profiles = np.empty((len(rows), 2, length), np.float32)  # per image: row means, column means
        for start, block in rows.blocks():
            gray = block.astype(np.float32) @ _GRAY
            self.profiles[start:start + len(block)] = np.stack([gray.mean(axis=2), gray.mean(axis=1)], axis=1)
        self.coarse = _crop_grid(0.025)
        # every coarse crop of every profile, resampled and normalised: (N, 2, crops, samples)
        self.cropped = _centred_unit(_bin_means(self.profiles, self.coarse[:, 0], self.coarse[:, 1],
                                                min(PROFILE_SIZE, length)))
        self.whole = self.cropped[:, :, 0]  # the first crop is the whole image
        self.size = min(DETAIL_SIZE, length)
        self.band = _gaussian(self.size, 1.0) - _gaussian(self.size, 3.0)
        self.spread = _gaussian(self.size, 3.0)

    def coarse_match(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For pairs (a crop of ``a`` matching the whole of ``b``): the profile correlation (the worse axis)
        and the best coarse crop per axis ``(pairs, 2)``."""
        scores = np.einsum("pagk,pak->pag", self.cropped[a], self.whole[b])
        return scores.max(axis=2).min(axis=1), scores.argmax(axis=2)

    def _refine(self, profile: np.ndarray, target: np.ndarray, start) -> tuple[float, float]:
        """The crop ``(offset, width)`` of ``profile`` that best matches ``target`` near ``start``, to 0.5 %."""
        steps = np.arange(-3, 4) * 0.005  # the coarse grid is off by 1.25 % at most
        offsets, widths = np.meshgrid(start[0] + steps, start[1] + steps, indexing="ij")
        offsets, widths = offsets.ravel(), np.minimum(widths.ravel(), 1.0)
        offsets = np.clip(offsets, 0.0, 1.0 - widths)
        scores = _centred_unit(_bin_means(profile, offsets, widths, self.size)) @ \
            _centred_unit(_bin_means(target, 0.0, 1.0, self.size)[0])
        best = int(np.argmax(scores))
        return float(offsets[best]), float(widths[best])

    def detail(self, a: int, b: int, crop_index: np.ndarray) -> float:
        """How well the aligned crop of image ``a`` reproduces the fine detail of image ``b``: the correlation
        of their band-passed brightness thumbnails (JPEG keeps brightness detail and halves colour detail),
        clipped highlights left out."""
        planes, target = self._planes(a), self.profiles[b]
        y, x = self.coarse[crop_index[0]], self.coarse[crop_index[1]]
        columns = slice(int(x[0] * self.length), int(round((x[0] + x[1]) * self.length)))
        y = self._refine(planes[0][:, columns].mean(axis=1), target[0], y)  # rows, over the columns kept
        lines = slice(int(y[0] * self.length), int(round((y[0] + y[1]) * self.length)))
        x = self._refine(planes[0][lines].mean(axis=0), target[1], x)
        pa, pb = self._thumbnail(planes, y, x), self._thumbnail(self._planes(b), (0.0, 1.0), (0.0, 1.0))
        clipped = ((pa[1] >= CLIPPED) | (pb[1] >= CLIPPED)).astype(np.float32)
        keep = (self.spread @ clipped @ self.spread.T) < 0.05
        if keep.mean() < 0.25:  # mostly clipped: compare everything rather than almost nothing
            keep[:] = True
        if not self._same_colours(a, b, y, x, keep):
            return 0.0
        da, db = (self.band @ pa[0] @ self.band.T)[keep], (self.band @ pb[0] @ self.band.T)[keep]
        return float(_centred_unit(da) @ _centred_unit(db))

    def _same_colours(self, a: int, b: int, y, x, keep: np.ndarray) -> bool:
        """Whether the aligned images share their colours: the correlation of their smoothed chroma (each pixel
        minus its grey level, which brightness changes leave as they are) reaches COLOUR_THRESHOLD, or both are
        grey. Drawn or rendered images of one subject share their edges, not their colours."""
        chroma = []
        for i, (rows, columns) in ((a, (y, x)), (b, ((0.0, 1.0), (0.0, 1.0)))):
            rgb = np.moveaxis(self.rows[i].astype(np.float32), -1, 0)
            small = self._thumbnail(rgb - rgb.mean(axis=0), rows, columns)
            chroma.append(np.stack([self.spread @ c @ self.spread.T for c in small])[:, keep].ravel())
        if max(c.std() for c in chroma) < GREY:
            return True
        return float(_centred_unit(chroma[0]) @ _centred_unit(chroma[1])) >= COLOUR_THRESHOLD

    def _planes(self, i: int) -> np.ndarray:
        """Image ``i`` as brightness and its brightest channel (where clipping shows): ``(2, height, width)``."""
        pixels = self.rows[i].astype(np.float32)
        return np.stack([pixels @ _GRAY, pixels.max(axis=-1)])

    def _thumbnail(self, planes: np.ndarray, y, x) -> np.ndarray:
        """``planes`` cropped to rows ``y`` and columns ``x`` (``(offset, width)`` each), ``size`` x ``size``."""
        columns = _bin_means(planes, x[0], x[1], self.size)[:, :, 0]  # planes, height, size
        return np.swapaxes(_bin_means(np.swapaxes(columns, 1, 2), y[0], y[1], self.size)[:, :, 0], 1, 2)


# === Finding them ===

def pixel_hashes(rows: Rows) -> list[bytes]:
    """A digest of each image's decoded pixels: equal digests, equal pixels."""
    digests = []
    for _, block in rows.blocks():
        digests += [hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()
                    for image in block]
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
        pairs += _near_pairs(rows, nearest, near_threshold, {(p.a, p.b) for p in pairs})
    return Duplicates(pairs, _components(len(rows), pairs))


def _near_pairs(rows: Rows, nearest: np.ndarray, threshold: float, exact: set) -> list[Pair]:
    candidates = np.unique(np.sort(np.stack([np.repeat(np.arange(len(rows)), nearest.shape[1]),
                                             nearest.ravel()], axis=1), axis=1), axis=0)
    candidates = np.array([c for c in candidates if c[0] != c[1] and tuple(c) not in exact]).reshape(-1, 2)
    checker = _Checker(rows)
    unaligned = np.einsum("pak,pak->pa", checker.whole[candidates[:, 0]], checker.whole[candidates[:, 1]]).min(axis=1)
    candidates = candidates[unaligned >= UNALIGNED_THRESHOLD]
    found = []
    for start in range(0, len(candidates), 4096):
        chunk = candidates[start:start + 4096]
        forward, crop_ab = checker.coarse_match(chunk[:, 0], chunk[:, 1])
        backward, crop_ba = checker.coarse_match(chunk[:, 1], chunk[:, 0])
        for k in np.flatnonzero(np.maximum(forward, backward) >= PROFILE_THRESHOLD):
            a, b = (int(v) for v in chunk[k])
            score = max(checker.detail(a, b, crop_ab[k]) if forward[k] >= PROFILE_THRESHOLD else -1.0,
                        checker.detail(b, a, crop_ba[k]) if backward[k] >= PROFILE_THRESHOLD else -1.0)
            if score >= threshold:
                found.append(Pair(a, b, "near", round(score, 4)))
    return found


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
