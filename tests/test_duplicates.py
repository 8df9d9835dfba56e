"""Duplicates without any assets: copies found on the pixels alone (and another shot of the same scene not),
groups moved into one split after the split function, `tlkit run`'s set-up doing it by default, and the
keep/drop/relabel actions of an audit CSV fed back as a data source."""
import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from tlkit import Data, TlkitError, load_recipe, override
from tlkit.data import keep_groups_together, load_data
from tlkit.duplicates import Duplicates, Pair, Rows, find_duplicates
from tlkit.images import decode_image


def scene(seed: int, size: int = 128, shift=(0.0, 0.0), texture: int | None = None) -> Image.Image:
    """A photo-like picture: soft blobs, a grating and detail at several scales, all from ``seed``; ``shift``
    moves the blobs and ``texture`` changes the detail, as another shot of the same scene would."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    x, y = x + shift[0], y + shift[1]
    pixels = np.zeros((size, size, 3))
    for _ in range(10):
        cx, cy, r = rng.random(3)
        pixels += rng.random(3) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (0.005 + 0.03 * r))[..., None]
    pixels += 0.2 * np.sin(2 * np.pi * (rng.uniform(2, 6) * x + rng.uniform(2, 6) * y))[..., None]
    noise = np.random.default_rng(seed if texture is None else texture)
    for cells in (8, 16, 32):
        layer = ((noise.normal(0, 0.1, (cells, cells, 3)) + 1) * 127.5).clip(0, 255).astype(np.uint8)
        pixels += np.asarray(Image.fromarray(layer).resize((size, size), Image.BICUBIC)) / 127.5 - 1
    pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    return Image.fromarray((pixels * 255).astype(np.uint8))


def encoded(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_copies_are_found_on_the_pixels_and_other_shots_of_a_scene_are_not():
    originals = [scene(seed) for seed in range(24)]
    files = [encoded(image, quality=90) for image in originals]
    copies = [encoded(originals[0], quality=40),  # re-encoded
              encoded(originals[1].resize((77, 77), Image.BILINEAR)),  # resized by 0.6
              encoded(originals[2].crop((6, 0, 128, 117))),  # 5 % off the left, 9 % off the bottom
              encoded(ImageEnhance.Brightness(originals[3]).enhance(1.3)),  # brightened, highlights clipped
              encoded(Image.open(io.BytesIO(files[4])), "PNG")]  # the same pixels in another format
    shots = [encoded(scene(5, shift=(0.04, 0.02), texture=99)), encoded(scene(6, shift=(-0.03, 0.0), texture=98))]
    pixels = np.stack([decode_image(data, 64) for data in files + copies + shots])
    everyone = np.array([[j for j in range(len(pixels)) if j != i] for i in range(len(pixels))])
    found = find_duplicates(Rows([pixels]), 0.9, nearest=everyone)  # every pair a candidate: pixels decide
    pairs = {(p.a, p.b): p for p in found.pairs}
    assert set(pairs) == {(i, 24 + i) for i in range(5)}  # each copy with its original, and nothing else
    assert pairs[(4, 28)].kind == "exact" and pairs[(4, 28)].score == 1.0
    assert all(p.kind == "near" and p.score >= 0.95 for k, p in pairs.items() if k != (4, 28))
    assert found.groups == [[i, 24 + i] for i in range(5)]


@pytest.fixture()
def folder(tmp_path):
    """Two classes of 12 distinct scenes each, as JPEG files."""
    for label in ("left", "right"):
        (tmp_path / label).mkdir()
        for k in range(12):
            seed = k + (100 if label == "right" else 0)
            (tmp_path / label / f"{label}-{k:02}.jpg").write_bytes(encoded(scene(seed), quality=90))
    return tmp_path


def test_groups_move_into_their_first_members_split_and_conflicts_are_listed(folder):
    data = load_data(folder, 32, Data(val_fraction=0.4))
    rows, train, val = data.rows(), data.splits["train"], data.splits["val"]
    t, v = len(train) - 1, len(train)  # the last training image and the first validation image
    groups = [[t, v], [0, 1]]  # one group spans the splits (and the classes, if they differ)
    moved = keep_groups_together(data, Duplicates([Pair(t, v, "near", 0.97), Pair(0, 1, "exact", 1.0)], groups),
                                 Data(val_fraction=0.4))
    first = min((train.paths[-1], val.paths[0]), key=lambda p: p.relative_to(folder).as_posix())
    target = "train" if first == train.paths[-1] else "val"
    for path, pixels in ((train.paths[-1], rows[t]), (val.paths[0], rows[v])):
        index = moved.splits[target].paths.index(path)
        np.testing.assert_array_equal(moved.splits[target].images[index], pixels)  # the pixels moved with it
    assert sum(moved.counts().values()) == sum(data.counts().values())
    summary = moved.duplicates.summary()
    assert summary["groups"] == 2 and summary["images"] == 4 and summary["merged"] == 1
    assert summary["pairs"] == {"exact": 1, "near": 1}
    assert [m["to"] for m in summary["moved"]] == [target]
    labels = {data.class_names[train.labels[-1]], data.class_names[val.labels[0]]}
    assert len(summary["conflicts"]) == (len(labels) > 1)
    assert [row["group"] for row in moved.duplicates.rows()] == [1, 1, 2, 2]


def test_run_setup_keeps_copies_in_one_split_by_default(folder, tmp_path_factory):
    """prepare(), which `tlkit run` and `tlkit lr-find` share, groups duplicates without being asked."""
    from tlkit.session import prepare

    for k in range(4):  # copies of training and validation images under names that hash elsewhere
        original = folder / "left" / f"left-{k:02}.jpg"
        (folder / "left" / f"copy-{k}.png").write_bytes(encoded(Image.open(original), "PNG"))
        (folder / "left" / f"small-{k}.jpg").write_bytes(encoded(Image.open(original).resize((90, 90))))
    recipe = override(load_recipe("quickstart"), ["weights=none", "image_size=64", "data.val_fraction=0.4"])
    session = prepare(recipe, folder, cache_dir=tmp_path_factory.mktemp("cache"))
    split_of = {p.name: name for name, split in session.data.splits.items() for p in split.paths}
    for k in range(4):
        assert split_of[f"copy-{k}.png"] == split_of[f"small-{k}.jpg"] == split_of[f"left-{k:02}.jpg"]
    summary = session.data.summary()["duplicates"]
    assert summary["method"] == "near" and summary["groups"] == 4 and summary["images"] == 12
    assert summary["pairs"]["exact"] == 4 and summary["pairs"]["near"] >= 4
    assert 0 < summary["merged"] <= len(summary["moved"])  # the hash had split some of them up
    ignored = prepare(override(recipe, ["data.duplicates=ignore"]), folder, cache_dir=tmp_path_factory.mktemp("c"))
    assert ignored.data.duplicates is None


def test_audit_csv_actions_drop_relabel_and_keep(folder, tmp_path):
    left, right = sorted((folder / "left").iterdir()), sorted((folder / "right").iterdir())
    rows = ["path,label,split,action,suggested_label,issues",
            f"{left[0]},left,train,keep,,", f"{left[1]},left,train,drop,,duplicate group 1",
            f"{left[2]},left,val,relabel,right,label suspect", f"{left[3]},left,train,,right,"]
    rows += [f"{p},left,train" for p in left[4:]] + [f"{p},right,val" for p in right[:3]]
    rows += [f"{p},right,train,keep" for p in right[3:]]
    (tmp_path / "audit.csv").write_text("\n".join(rows) + "\n")
    data = load_data(tmp_path / "audit.csv", 32)
    assert data.skipped == [(left[1], "action=drop in audit.csv (line 3)")]
    by_path = {p: (name, data.class_names[label]) for name, split in data.splits.items()
               for p, label in zip(split.paths, split.labels)}
    assert by_path[left[2]] == ("val", "right") and by_path[left[3]] == ("train", "left")  # no action: keep
    assert sum(data.counts().values()) == 23
    (tmp_path / "bad.csv").write_text("path,label,action\na.png,cat,delete\n")
    with pytest.raises(TlkitError, match=r"bad.csv line 2: action must be keep, drop or relabel"):
        load_data(tmp_path / "bad.csv", 32)
    (tmp_path / "empty.csv").write_text(f"path,label,action,suggested_label\n{left[0]},left,relabel,\n")
    with pytest.raises(TlkitError, match=r"empty.csv line 2: action=relabel needs the new label in the "
                                         r"suggested_label column"):
        load_data(tmp_path / "empty.csv", 32)
