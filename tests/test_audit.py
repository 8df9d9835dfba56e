"""`tlkit data audit` on real photos with injected problems: copies (re-encoded, resized, cropped,
brightened), images moved to a wrong class, blank and noise images; then `tlkit run` on the same folder,
which keeps every duplicate group in one split and reuses the features the audit cached."""
import csv
import json
import random

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageEnhance

from tlkit import load_recipe, override, run
from tlkit.cli import cli
from tlkit.data import load_data

PER_CLASS, COPIES = 60, 24
# Pairs of distinct files in the chosen photos that are one photo (looked at side by side): flowers5 holds
# such copies; the audit must find them too, and no other pair.
REAL_DUPLICATES = {frozenset({"daisy/10993710036_2033222c91.jpg", "daisy/10993818044_4c19b86c82.jpg"}),
                   frozenset({"daisy/10466290366_cc72e33532.jpg", "daisy/10994032453_ac7f8d9e2e.jpg"})}


@pytest.fixture(scope="module")
def injected(shared, catsdogs, tmp_path_factory):
    """4 classes of 60 real photos (cats and dogs shrunk to at most 160 px), 24 of them copied (6 each:
    JPEG at another quality, resized by 0.5-0.8, cropped by up to 10 % per side, brightened), 5 % moved
    to a wrong class, and a blank white, a blank grey, a pixel-noise and a block-noise image."""
    rng = random.Random(18)
    root = tmp_path_factory.mktemp("injected")
    flowers = shared / "data" / "flowers5"
    sources = {"cats": catsdogs / "train" / "cats", "dogs": catsdogs / "train" / "dogs",
               "daisy": flowers / "daisy", "sunflower": flowers / "sunflower"}
    originals = {}
    for name, folder in sources.items():
        (root / name).mkdir()
        for file in sorted(folder.iterdir())[:PER_CLASS]:
            image = Image.open(file).convert("RGB")
            image.thumbnail((160, 160))
            image.save(root / name / f"{file.stem}.jpg", quality=92)
            originals[root / name / f"{file.stem}.jpg"] = name
    chosen = sorted(originals)
    rng.shuffle(chosen)
    copied, moving = chosen[:COPIES], chosen[COPIES:COPIES + len(originals) // 20]
    pairs = []
    for k, path in enumerate(copied):
        image, kind = Image.open(path), ("jpeg", "resize", "crop", "bright")[k % 4]
        if kind == "resize":
            scale = rng.uniform(0.5, 0.8)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
        elif kind == "crop":
            w, h = image.width * rng.uniform(0.9, 1.0), image.height * rng.uniform(0.9, 1.0)
            left, top = rng.uniform(0, image.width - w), rng.uniform(0, image.height - h)
            image = image.crop((round(left), round(top), round(left + w), round(top + h)))
        elif kind == "bright":
            image = ImageEnhance.Brightness(image).enhance(rng.uniform(1.15, 1.35))
        copy = path.with_name(f"{path.stem}-{kind}.jpg")
        image.save(copy, quality=rng.choice([50, 65, 80]))
        pairs.append(frozenset({path, copy}))
    moved = []
    for path in moving:
        target = root / rng.choice([n for n in sources if n != originals[path]]) / path.name
        path.rename(target)
        moved.append(target)
    noise = np.random.default_rng(0)
    odd = {"cats/blank-white.png": np.full((120, 120, 3), 250), "dogs/blank-grey.png": np.full((120, 120, 3), 128),
           "daisy/noise.png": noise.integers(0, 256, (120, 120, 3)),
           "sunflower/blocks.png": np.kron(noise.integers(0, 256, (12, 12, 3)), np.ones((10, 10, 1)))}
    for name, pixels in odd.items():
        Image.fromarray(pixels.astype(np.uint8)).save(root / name)
    return root, set(pairs), set(moved), {root / name for name in odd}


@pytest.fixture(scope="module")
def audited(injected, weights_dir, tmp_path_factory):
    root = injected[0]
    out, cache = tmp_path_factory.mktemp("audit"), tmp_path_factory.mktemp("cache")
    result = CliRunner().invoke(cli, ["data", "audit", str(root), "--weights-dir", str(weights_dir), "--out", str(out),
                                      "--cache-dir", str(cache), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report == json.loads((out / "audit.json").read_text())
    return report, out, cache


def test_every_copy_is_found_and_no_distinct_photos_are_paired(injected, audited):
    root, pairs, _, _ = injected
    report = audited[0]
    found = {frozenset({root / p["a"], root / p["b"]}) for g in report["duplicates"] for p in g["pairs"]}
    assert pairs <= found  # every injected copy, with its original
    photo = {}  # file -> the photo it shows: a copy shows its original's, and the real copies one photo
    for pair in [*(frozenset(root / name for name in real) for real in REAL_DUPLICATES), *pairs]:
        a, b = sorted(pair)
        photo[b] = photo[a] = photo.get(a, photo.get(b, a))
    assert all(len({photo.get(path, path) for path in pair}) == 1 for pair in found)  # no distinct photos
    assert {frozenset(root / name for name in real) for real in REAL_DUPLICATES} <= found
    assert report["counts"]["groups"] == len({photo[path] for pair in found for path in pair})
    assert all(g["kind"] == "near" and min(p["score"] for p in g["pairs"]) >= 0.9 for g in report["duplicates"])
    spanning = [g for g in report["duplicates"] if g["spans_splits"]]
    assert report["counts"]["groups_spanning_splits"] == len(spanning) > 0  # the path hash splits copies up
    assert all(len({m["split_in_run"] for m in g["members"]}) == 1 for g in report["duplicates"])


def test_moved_images_top_the_label_suspects(injected, audited):
    moved, report = injected[2], audited[0]
    ranked = sorted((row for row in report["images"] if row["label_probability"] != ""),
                    key=lambda row: row["label_probability"])
    top = {row["path"] for row in ranked[:2 * len(moved)]}
    share = len({str(p) for p in moved} & top) / len(moved)
    print(f"moved images among the top {2 * len(moved)} label suspects: {share:.0%}")
    assert share >= 0.7
    flagged = report["label_suspects"]
    assert flagged and all(s["probability"] < report["thresholds"]["label"] for s in flagged)
    assert sum(s["path"] in {str(p) for p in moved} for s in flagged) >= 0.5 * len(flagged)
    assert all(s["suggested"] != s["label"] for s in flagged)


def test_blank_and_noise_images_are_among_the_top_outliers(injected, audited):
    odd, report = injected[3], audited[0]
    outliers = {o["path"]: o for o in report["outliers"][:2 * len(odd)]}  # flowers5 has off-subject photos too
    print("top outliers:", [(o["path"].rsplit("/", 2)[-2:], o["score"]) for o in report["outliers"][:8]])
    assert {str(p) for p in odd} <= set(outliers)
    assert [outliers[str(p)]["reason"] for p in sorted(odd)] == ["blank", "far from every class", "blank",
                                                                 "far from every class"]


def test_page_shows_every_group_and_the_csv_feeds_a_run(audited, tmp_path):
    report, out = audited[0], audited[1]
    page = (out / "audit.html").read_text()
    assert page.count("<div class='group'>") == report["counts"]["groups"]
    assert page.count("<img") >= 2 * report["counts"]["groups"] + len(report["label_suspects"])
    with open(out / "audit.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == report["data"]["images"] and {r["action"] for r in rows} == {"keep"}
    suspect, copy = report["label_suspects"][0], report["duplicates"][0]["members"][1]["path"]
    for row in rows:  # what a user does with the page open: relabel a suspect, drop a copy
        if row["path"] == suspect["path"]:
            assert row["suggested_label"] == suspect["suggested"]
            row["action"] = "relabel"
        if row["path"] == copy:
            row["action"] = "drop"
    with open(tmp_path / "edited.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    data = load_data(tmp_path / "edited.csv", 32)
    assert [str(p) for p, _ in data.skipped] == [copy]
    labels = {str(p): data.class_names[label] for split in data.splits.values()
              for p, label in zip(split.paths, split.labels)}
    assert labels[suspect["path"]] == suspect["suggested"]
    splits = {str(p): name for name, split in data.splits.items() for p in split.paths}
    assert all(splits[r["path"]] == r["split"] for r in rows if r["path"] != copy)  # the CSV fixes the splits


def test_run_keeps_every_group_in_one_split_and_reuses_the_audit_features(injected, audited, weights_dir,
                                                                        tmp_path):
    root, (report, _, cache) = injected[0], audited
    recipe = override(load_recipe("quickstart"), ["weights=imagenet", "stage1.epochs=1", "stage2.epochs=0"])
    result = run(recipe, tmp_path / "run", data=str(root), weights_dir=str(weights_dir), cache_dir=str(cache),
                 export=False)
    with open(result.folder / "split.csv", newline="") as f:
        split = {row["path"]: row["split"] for row in csv.DictReader(f)}
    for group in report["duplicates"]:
        assert {split[m["path"]] for m in group["members"]} == {group["members"][0]["split_in_run"]}
    info = json.loads((result.folder / "run.json").read_text())
    duplicates = info["data"]["duplicates"]
    assert duplicates["groups"] == report["counts"]["groups"]
    assert duplicates["merged"] == report["counts"]["groups_spanning_splits"] and duplicates["conflicts"] == []
    pooled = [e for e in info["cache"] if e["what"] == "all images @ (output) avg-pooled"]
    assert [e["event"] for e in pooled] == ["reused"]  # the audit's features, not a second pass
    with open(result.folder / "duplicates.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == report["counts"]["images_in_groups"]
    assert f"Duplicates ({report['counts']['groups']} groups" in (result.folder / "report.html").read_text()
