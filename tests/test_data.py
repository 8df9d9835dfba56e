"""Data sources on generated real-world folders: every kind of image and bad file, stable splits, split
folders, CSV, class checks, class weights, the run folder's record, and `tlkit data inspect`."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tlkit import Data, TlkitError, load_recipe, override
from tlkit.cli import cli
from tlkit.data import ImageData, assign_splits, load_data, split_hash
from tlkit.images import decode_image, read_image, read_pixels
from tlkit.runfolder import RunFolder
from tlkit.sources import Item

RED, BLUE = (255, 0, 0), (0, 0, 255)


def pattern(width=48, height=40, seed=0):
    """A smooth colour pattern with a little noise (compresses well, still varied)."""
    y, x = np.mgrid[:height, :width]
    rng = np.random.default_rng(seed)
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], -1)
    return np.clip(pixels + rng.integers(-8, 8, pixels.shape), 0, 255).astype(np.uint8)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def exif_rotated_jpeg() -> bytes:
    """A phone-style JPEG: stored sideways with EXIF orientation 6; upright it is 40 wide, 60 tall, red on top."""
    upright = np.zeros((60, 40, 3), np.uint8)
    upright[:30], upright[30:] = RED, BLUE
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(stored, "JPEG", quality=95, exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def palette_png() -> bytes:
    image = Image.new("P", (16, 16), 1)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    return encoded(image, "PNG")


GOOD = {  # class/file -> bytes; every one of these must be used
    "café crème/rgb.jpg": lambda: encoded(Image.fromarray(pattern()), "JPEG", quality=95),
    "café crème/progressive.jpg": lambda: encoded(Image.fromarray(pattern(seed=1)), "JPEG", progressive=True),
    "café crème/cmyk.jpg": lambda: encoded(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95),
    "café crème/exif rotated.jpg": exif_rotated_jpeg,
    "café crème/gray16.png": lambda: encoded(Image.fromarray(np.full((16, 16), 0x8000, np.uint16)), "PNG"),
    "café crème/palette.png": palette_png,
    "café crème/alpha.png": lambda: encoded(Image.new("RGBA", (16, 16), (10, 200, 30, 0)), "PNG"),
    "café crème/gray.png": lambda: encoded(Image.new("L", (16, 16), 77), "PNG"),
    "café crème/gray alpha.png": lambda: encoded(Image.new("LA", (16, 16), (100, 50)), "PNG"),
    "café crème/photo.bmp": lambda: encoded(Image.fromarray(pattern(seed=2)), "BMP"),
    "café crème/animated.gif": animated_gif,
    "café crème/photo.webp": lambda: encoded(Image.fromarray(pattern(seed=3)), "WEBP", lossless=True),
    "café crème/photo.tiff": lambda: encoded(Image.fromarray(pattern(seed=4)), "TIFF"),
    "café crème/jpeg without extension": lambda: encoded(Image.fromarray(pattern(seed=5)), "JPEG"),
    "café crème/nested/ünïcödé 写真.png": lambda: encoded(Image.fromarray(pattern(seed=6)), "PNG"),
    **{f"dog/dog {i:02d}.png": (lambda i=i: encoded(Image.fromarray(pattern(seed=10 + i)), "PNG")) for i in range(8)},
}
_JPEG = encoded(Image.fromarray(pattern(64, 64, seed=9)), "JPEG", quality=95)
BAD = {  # path -> (bytes, exact reason listed)
    "café crème/empty.jpg": (b"", "empty file (0 bytes)"),
    "café crème/truncated.jpg": (_JPEG[:len(_JPEG) // 2], "truncated image"),
    "café crème/truncated.png": (encoded(Image.fromarray(pattern(seed=7)), "PNG")[:600], "truncated image"),
    "café crème/header only.jpg": (_JPEG[:16], "truncated image"),
    "café crème/corrupt.jpg": (b"\xff\xd8\xff" + bytes(range(200)), "corrupt JPEG image (unreadable header)"),
    "café crème/notes.txt": (b"shot on a phone\n", "not an image (unrecognised format)"),
    "dog/download.jpg": (b"<html><body>403 Forbidden</body></html>", "not an image (unrecognised format)"),
    "README.txt": (b"my photos\n", "outside any class folder"),
}
HIDDEN = ["café crème/.DS_Store", "café crème/._rgb.jpg", "dog/Thumbs.db", "dog/.thumbnails/dog 00.png",
          "__MACOSX/café crème/._rgb.jpg", ".git/config"]


@pytest.fixture
def bad_folder(tmp_path):
    """Two classes of every image kind tlkit must read, each kind of bad file, and system files to ignore."""
    root = tmp_path / "bad folder"
    for name, make in GOOD.items():
        write(root / name, make())
    for name, (data, _) in BAD.items():
        write(root / name, data)
    for name in HIDDEN:
        write(root / name, encoded(Image.fromarray(pattern()), "PNG"))
    return root


def relative(data: ImageData, root):
    return sorted((str(p.relative_to(root)), reason) for p, reason in data.skipped)


def all_paths(data: ImageData):
    return [p for split in data.splits.values() for p in split.paths]


def test_bad_folder_skips_exactly_the_bad_files_and_counts_add_up(bad_folder):
    data = load_data(bad_folder, 32, Data(val_fraction=0.25, min_per_class=3))

    assert data.class_names == ["café crème", "dog"]
    assert relative(data, bad_folder) == sorted((name, reason) for name, (_, reason) in BAD.items())
    used = sorted(str(p.relative_to(bad_folder)) for p in all_paths(data))
    assert used == sorted(GOOD)  # hidden and system files are neither used nor listed
    summary = data.summary()
    assert summary["files"] == len(GOOD) + len(BAD) == summary["used"] + summary["skipped"]
    assert summary["used"] == len(GOOD) and summary["skipped"] == len(BAD)
    for split in data.splits.values():
        assert split.images.shape == (len(split), 32, 32, 3) and split.images.dtype == np.uint8
        assert split.labels.dtype == np.int32
        for path, label, pixels in zip(split.paths, split.labels, split.images):
            assert data.class_names[label] == path.relative_to(bad_folder).parts[0]
            assert np.array_equal(pixels, decode_image(path, 32))  # rows line up with paths


def test_every_format_decodes_to_upright_rgb(bad_folder):
    def pixels(name):
        return read_pixels(bad_folder / name).astype(int)

    rotated = pixels("café crème/exif rotated.jpg")
    assert rotated.shape == (60, 40, 3)  # stored 60 wide x 40 tall, shown upright
    assert (np.abs(rotated[:25] - RED) < 40).all() and (np.abs(rotated[35:] - BLUE) < 40).all()
    small = decode_image(bad_folder / "café crème/exif rotated.jpg", 32).astype(int)
    assert small[0, :, 0].min() > 200 and small[-1, :, 2].min() > 200  # red at the top after resizing too

    assert (pixels("café crème/gray16.png") == 128).all()  # 16-bit scaled to 8, not clipped to 255
    assert (np.abs(pixels("café crème/cmyk.jpg") - RED) < 20).all()
    assert (pixels("café crème/palette.png") == (0, 255, 0)).all()
    assert (pixels("café crème/alpha.png") == (10, 200, 30)).all()  # alpha dropped, as serving does
    assert (pixels("café crème/gray.png") == 77).all()
    assert (pixels("café crème/gray alpha.png") == 100).all()
    assert (pixels("café crème/animated.gif") == RED).all()  # first frame
    for lossless in ("photo.bmp", "photo.webp", "photo.tiff"):
        seed = {"photo.bmp": 2, "photo.webp": 3, "photo.tiff": 4}[lossless]
        assert np.array_equal(pixels(f"café crème/{lossless}"), pattern(seed=seed))
    assert np.abs(pixels("café crème/progressive.jpg") - pattern(seed=1)).mean() < 6
    assert read_image(bad_folder / "café crème/jpeg without extension")[1] == "JPEG"
    assert read_image(encoded(Image.fromarray(pattern()), "PNG"))[0].shape == (40, 48, 3)  # bytes work too


def test_adding_images_moves_existing_files_only_across_a_quota_boundary(tmp_path):
    root = tmp_path / "grow"
    for i in range(30):
        for name in ("a", "b"):
            write(root / name / f"{i:03d}.png", encoded(Image.new("RGB", (8, 8), (i, 0, 0)), "PNG"))
    spec = Data(val_fraction=0.25, test_fraction=0.15)

    def where(data):
        return {p: name for name, split in data.splits.items() for p in split.paths}

    before = where(load_data(root, 16, spec))
    assert where(load_data(root, 16, spec)) == before  # deterministic
    assert set(before.values()) == {"train", "val", "test"}
    for i in range(30, 33):
        write(root / "a" / f"{i:03d}.png", encoded(Image.new("RGB", (8, 8), (0, i, 0)), "PNG"))
    after = where(load_data(root, 16, spec))
    assert len(after) == len(before) + 3
    moved = [p for p in before if after[p] != before[p]]
    assert all(p.parent.name == "a" for p in moved)  # the other class is untouched
    assert len(moved) <= 2 * (3 + 1)  # at most m + 1 across each of the two boundaries


def items_of(counts: dict[str, int]) -> list[Item]:
    return [Item(f"{c}/{i}.jpg", label, f"{i}.jpg") for label, (c, n) in enumerate(counts.items()) for i in range(n)]


def split_counts(by_split, label):
    return {name: sum(1 for it in split if it.label == label) for name, split in by_split.items()}


def test_split_takes_exact_quotas_from_every_class():
    by_split = assign_splits(items_of({"a": 2000, "b": 2000}), 0.2, 0.1)
    assert [split_counts(by_split, label) for label in (0, 1)] == [{"train": 1400, "val": 400, "test": 200}] * 2
    # small classes: 12 x 0.2 = 2.4 -> 2 each (a hash threshold gave 4 / 0 / 6 here); the smallest classes
    # still give one image to val and keep one for training
    by_split = assign_splits(items_of({"a": 12, "b": 12, "c": 12, "d": 2, "e": 1}), 0.2, 0.0)
    assert [split_counts(by_split, label)["val"] for label in range(5)] == [2, 2, 2, 1, 0]
    assert [split_counts(by_split, label)["train"] for label in range(5)] == [10, 10, 10, 1, 1]


def test_split_seed_draws_another_split_and_seed_0_ranks_by_the_path_hash():
    items = items_of({"a": 500, "b": 500})
    default, salted = assign_splits(items, 0.2, 0.0), assign_splits(items, 0.2, 0.0, seed=7)
    assert split_counts(default, 0) == split_counts(salted, 0)
    assert len({it.origin for it in default["val"]} & {it.origin for it in salted["val"]}) < 0.4 * 200
    # seed 0 keeps the order of the plain path hash: val is the hash split of before, up to the quota
    for label in (0, 1):
        threshold = {it.origin for it in items if it.label == label and split_hash(it.key) < 0.2}
        val = {it.origin for it in default["val"] if it.label == label}
        assert len(threshold ^ val) == abs(len(threshold) - 100) < 20


def small_classes(root, counts, split_dir=""):
    for name, n in counts.items():
        for i in range(n):
            write(root / split_dir / name / f"{name} {i}.png",
                  encoded(Image.fromarray(pattern(12, 12, seed=i)), "PNG"))
    return root


def test_split_folders_are_detected_and_kept(tmp_path):
    root = tmp_path / "splits"
    small_classes(root, {"cat": 6, "dog": 5}, "train")
    small_classes(root, {"cat": 2, "dog": 2}, "validation")
    small_classes(root, {"cat": 1, "dog": 3}, "test")
    data = load_data(root, 16, Data(val_fraction=0.4, test_fraction=0.4))
    assert data.kind == "split folders"
    assert data.class_counts() == {"train": {"cat": 6, "dog": 5}, "val": {"cat": 2, "dog": 2},
                                   "test": {"cat": 1, "dog": 3}}
    folder = {"train": "train", "val": "validation", "test": "test"}
    assert all(p.parent.parent.name == folder[name] for name, split in data.splits.items() for p in split.paths)


def test_split_folders_without_val_carve_it_from_train(tmp_path):
    root = tmp_path / "splits"
    small_classes(root, {"cat": 20, "dog": 20}, "train")
    small_classes(root, {"cat": 3, "dog": 3}, "test")
    data = load_data(root, 16, Data(val_fraction=0.3))
    assert data.counts()["test"] == 6 and data.counts()["train"] + data.counts()["val"] == 40
    assert {p.parent.parent.name for p in data.splits["val"].paths} == {"train"}


def test_split_folder_class_missing_from_train_is_an_error(tmp_path):
    root = tmp_path / "splits"
    small_classes(root, {"cat": 4, "dog": 4}, "train")
    small_classes(root, {"cat": 2, "bird": 2}, "val")
    with pytest.raises(TlkitError, match=r"bird is a class that .*train does not have; train classes: cat, dog"):
        load_data(root, 16)


def test_csv_source_relative_paths_missing_files_duplicates_and_header(tmp_path):
    small_classes(tmp_path / "images", {"cat": 8, "dog": 8})
    rows = [f"images/{c}/{c} {i}.png,{c}" for c in ("cat", "dog") for i in range(8)]
    (tmp_path / "labels.csv").write_text("\n".join(["path,label"] + rows + ["images/gone.png,cat", rows[0]]) + "\n")
    data = load_data(tmp_path / "labels.csv", 16, Data(val_fraction=0.25))
    assert data.kind == "csv" and data.class_names == ["cat", "dog"]
    assert sum(data.counts().values()) == 16
    assert [(p.relative_to(tmp_path).as_posix(), r) for p, r in data.skipped] == [
        ("images/cat/cat 0.png", "listed again in labels.csv (first on line 2)"),
        ("images/gone.png", "file not found")]
    (tmp_path / "bare.csv").write_text("\n".join(rows) + "\n")  # no header: path,label
    assert load_data(tmp_path / "bare.csv", 16, Data(val_fraction=0.25)).counts() == data.counts()


def test_csv_errors_name_the_line(tmp_path):
    (tmp_path / "x.csv").write_text("path,label\na.png,cat\nb.png\n")
    with pytest.raises(TlkitError, match=r"x.csv line 3: expected path,label"):
        load_data(tmp_path / "x.csv", 16)
    (tmp_path / "y.csv").write_text("a.png,cat\na.png,dog\n")
    with pytest.raises(TlkitError, match=r"y.csv line 2: a.png is labelled 'dog' here and 'cat' on line 1"):
        load_data(tmp_path / "y.csv", 16)


def test_single_class_and_empty_class_folder_are_errors(tmp_path):
    small_classes(tmp_path, {"cat": 6})
    with pytest.raises(TlkitError, match=r"needs at least two class sub-folders; found 1"):
        load_data(tmp_path, 16)
    (tmp_path / "dog").mkdir()
    with pytest.raises(TlkitError, match=r"class folder\(s\) without images in .*: dog \(add images or remove"):
        load_data(tmp_path, 16)


def test_class_of_only_bad_files_is_an_error_and_small_class_a_warning(tmp_path):
    small_classes(tmp_path, {"cat": 20, "dog": 3})
    write(tmp_path / "bird" / "a.jpg", b"")
    with pytest.raises(TlkitError, match=r"class\(es\) without usable training images in .*: bird"):
        load_data(tmp_path, 16)
    (tmp_path / "bird" / "a.jpg").unlink()
    (tmp_path / "bird").rmdir()
    data = load_data(tmp_path, 16, Data(val_fraction=0.2, min_per_class=5))
    assert any("fewer than 5 usable images (data.min_per_class): dog (3)" in w for w in data.warnings)


def test_class_weights_auto_and_explicit(tmp_path):
    small_classes(tmp_path, {"cat": 30, "dog": 10})
    data = load_data(tmp_path, 16, Data(class_weight="auto"))
    n = data.class_counts()["train"]
    total = n["cat"] + n["dog"]
    assert data.class_weight == pytest.approx({"cat": total / (2 * n["cat"]), "dog": total / (2 * n["dog"])})
    assert data.class_weight_by_id() == {0: data.class_weight["cat"], 1: data.class_weight["dog"]}
    assert load_data(tmp_path, 16, Data(class_weight={"dog": 3})).class_weight == {"cat": 1.0, "dog": 3.0}
    assert load_data(tmp_path, 16).class_weight is None
    with pytest.raises(TlkitError, match=r"data.class_weight names unknown class\(es\) cow; classes: cat, dog"):
        load_data(tmp_path, 16, Data(class_weight={"cow": 2}))


def test_decoded_images_are_cached_and_memory_mapped_over_budget(tmp_path, shapes):
    from tlkit.storage import ArrayStore
    roomy = ArrayStore(tmp_path / "cache", budget_bytes=10**9)
    first = load_data(shapes, 32, Data(), roomy)
    again = load_data(shapes, 32, Data(), ArrayStore(tmp_path / "cache", budget_bytes=0))
    assert (first.decoded["event"], first.decoded["where"]) == ("computed", "RAM")
    assert (again.decoded["event"], again.decoded["where"]) == ("reused", "disk (memory-mapped)")
    assert roomy.used == first.decoded["bytes"]  # the RAM it holds counts against the shared budget
    train = again.splits["train"]
    assert isinstance(train.images, np.memmap)  # over budget: read from disk, same interface
    assert np.array_equal(train.images[np.array([3, 0, 7])], first.splits["train"].images[[3, 0, 7]])
    assert np.array_equal(train.images[2:5], first.splits["train"].images[2:5])


def test_run_folder_records_split_skipped_and_class_weights(bad_folder, tmp_path, weights_dir):
    from tlkit.runner import run
    recipe = override(load_recipe("quickstart"), [
        "image_size=32", "stage1.epochs=1", "stage2.epochs=0", "data.class_weight=auto",
        "data.val_fraction=0.3", "data.min_per_class=10"])
    result = run(recipe, tmp_path / "run", data=str(bad_folder), weights_dir=str(weights_dir), export=False)
    folder = RunFolder(result.folder)

    assert json.loads(folder.classes_file.read_text()) == ["café crème", "dog"]
    skipped = RunFolder.read_csv(folder.skipped_file)
    assert sorted((str(Path(r["path"]).relative_to(bad_folder)), r["reason"]) for r in skipped) == \
        sorted((name, reason) for name, (_, reason) in BAD.items())
    rows = RunFolder.read_csv(folder.split_file)
    assert sorted(str(Path(r["path"]).relative_to(bad_folder)) for r in rows) == sorted(GOOD)
    assert all(r["label"] == Path(r["path"]).relative_to(bad_folder).parts[0] for r in rows)
    record = json.loads(folder.run_file.read_text())
    info = record["data"]
    assert info["files"] == info["used"] + info["skipped"] == len(GOOD) + len(BAD)
    assert info["warnings"] and set(info["warnings"]) <= set(record["warnings"])  # dog (8 images) < 10
    train = info["class_counts"]["train"]
    assert info["class_weight"] == pytest.approx(
        {c: sum(train.values()) / (2 * n) for c, n in train.items()}, rel=1e-5)

    again = load_data(folder.split_file, 32)  # split.csv is itself a --data source with the same split
    assert {name: sorted(map(str, s.paths)) for name, s in again.splits.items()} == \
        {name: sorted(r["path"] for r in rows if r["split"] == name) for name in ("train", "val")}


def test_inspect_prints_table_and_json(bad_folder):
    runner = CliRunner()
    result = runner.invoke(cli, ["data", "inspect", str(bad_folder), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    classes = {c["name"]: c for c in report["classes"]}
    assert classes["café crème"]["images"] == 15 and classes["dog"]["images"] == 8
    assert classes["dog"]["formats"] == {"PNG": 8}
    assert classes["café crème"]["formats"] == {"JPEG": 5, "PNG": 6, "BMP": 1, "GIF": 1, "WEBP": 1, "TIFF": 1}
    assert classes["café crème"]["smallest"] == "16x16" and classes["café crème"]["largest"] == "40x60"
    assert report["files"] == report["used"] + len(report["skipped"]) == len(GOOD) + len(BAD)
    assert report["imbalance_ratio"] == round(15 / 8, 2)
    assert sorted((s["path"][len(str(bad_folder)) + 1:], s["reason"]) for s in report["skipped"]) == \
        sorted((name, reason) for name, (_, reason) in BAD.items())

    table = runner.invoke(cli, ["data", "inspect", str(bad_folder)])
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].endswith("(class folders): 2 classes, 31 files: 23 usable, 8 skipped")
    assert lines[1].split() == ["class", "images", "formats", "smallest", "largest"]
    assert lines[3].split() == ["dog", "8", "PNG", "8", "48x40", "48x40"]
    assert "imbalance ratio (largest / smallest class): 1.88" in lines
    assert f"  {bad_folder / 'café crème' / 'empty.jpg'}: empty file (0 bytes)" in lines


def test_inspect_missing_source_is_one_line_error(tmp_path):
    result = CliRunner().invoke(cli, ["data", "inspect", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"tlkit: error: data not found: {tmp_path / 'nowhere'} (pass --data with a folder of class sub-folders, "
        "a CSV of path,label, or tfds:NAME[:SPLIT])"]


def test_class_weights_reach_training(shapes, tmp_path, weights_dir):
    """Weighting one class 1000x over the others makes the trained model predict it almost everywhere."""
    from tlkit.runner import run
    recipe = override(load_recipe("quickstart"), [
        "image_size=32", "stage1.epochs=3", "stage1.learning_rate=0.01", "stage2.epochs=0", "head.l2=0.003",
        'data.class_weight={"circle": 1, "square": 0.001, "triangle": 0.001}'])  # a fixed L2: separable shapes
    # let a weakly penalised head (which the cross-validation picks here) fit every class despite the weights
    result = run(recipe, tmp_path / "run", data=str(shapes), weights_dir=str(weights_dir), export=False)
    folder = RunFolder(result.folder)
    assert json.loads(folder.run_file.read_text())["data"]["class_weight"] == {
        "circle": 1.0, "square": 0.001, "triangle": 0.001}
    val = load_data(shapes, 32).splits["val"]
    predicted = folder.load_model().predict(val.images.astype(np.float32), verbose=0).argmax(-1)
    assert (predicted == 0).mean() > 0.9 > (val.labels == 0).mean()
