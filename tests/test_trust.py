"""Predictions to act on, on real photos: one run on 3 flower classes (the other 2 and the ImageNet samples are
out-of-distribution) checks calibration, unknown answers through the export, the report's figures and Grad-CAM;
every base family gets an explanation PNG."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tlkit.backbones import BACKBONES
from tlkit.cli import cli
from tlkit.evaluation.confidence import threshold_for
from tlkit.evaluation.report import text_report
from tlkit.recipe import Trust

KEPT, HELD_BACK = ("daisy", "sunflower", "tulip"), ("dandelion", "rose")


def _link(files, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        (dest / f"{f.parent.name}_{f.name}").symlink_to(f)
    return dest


@pytest.fixture(scope="module")
def trusted(shared, weights_dir, tmp_path_factory):
    """MobileNetV2 0.35 with ImageNet weights, 96 px, head stage only, 60 photos of each of 3 classes (40 % for
    validation); trust.ood names 10 photos of each held-back class, the test's out-of-distribution images are
    15 others of each and the 7 ImageNet samples. The threshold, on the feature-space score, answers half of the
    validation images."""
    from tlkit import load_recipe, override, run
    from tlkit.runfolder import RunFolder

    root, flowers = tmp_path_factory.mktemp("trust"), shared / "data" / "flowers5"
    for name in KEPT:
        _link(sorted((flowers / name).iterdir())[:60], root / "data" / name)
    held = {name: sorted((flowers / name).iterdir()) for name in HELD_BACK}
    fit_ood = _link([f for files in held.values() for f in files[:10]], root / "fit_ood")
    ood = _link([f for files in held.values() for f in files[10:25]], root / "ood")
    for f in (shared / "data" / "imagenet_samples").iterdir():
        if f.suffix in (".bmp", ".jpg"):
            (ood / f.name).symlink_to(f)
    recipe = override(load_recipe("quickstart"), [
        "weights=imagenet", "data.val_fraction=0.4", "stage1.epochs=10", "stage2.epochs=0",
        f"trust.ood={fit_ood}", "trust.score=class_mean_similarity", "trust.coverage=0.5",
        "head.l2=0.0046"])  # fixed (1 / (2 x 108 training images)): these tests are about trust and explanations,
    # and how sharply Grad-CAM focuses on the object moves with the head's L2
    result = run(recipe, root / "run", data=str(root / "data"), weights_dir=str(weights_dir),
                 cache_dir=str(root / "cache"))
    return RunFolder(result.folder), result.export, ood


def _invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def test_calibration_lowers_the_validation_ece_and_is_reported(trusted):
    folder, _, _ = trusted
    fit = json.loads(folder.confidence_file.read_text())["fit"]
    assert fit["ece_after"] < fit["ece_before"], fit
    evaluation = json.loads(folder.evaluation_file.read_text())["confidence"]
    assert evaluation["ece"] == pytest.approx(fit["ece_after"]) and evaluation["fit"]["ece_before"] == fit["ece_before"]
    page = folder.report_file.read_text()
    assert "alt='reliability diagram' src='data:image/png;base64," in page
    assert f"{fit['ece_before']:.4f}" in page and f"{fit['ece_after']:.4f}" in page
    assert Image.open(folder.reliability_file).size[0] > 400


def test_the_export_answers_unknown_to_most_out_of_distribution_images(trusted):
    folder, savedmodel, ood = trusted
    confidence = json.loads(folder.confidence_file.read_text())
    assert confidence["score"] == "class_mean_similarity"
    answers = json.loads(_invoke("predict", savedmodel, ood, "--json").stdout)
    assert len(answers) == 37
    unknown = [a["class"] == "unknown" for a in answers]
    assert np.mean(unknown) >= 0.5, np.mean(unknown)
    assert all(len(a["top_k"]) == 3 and a["top_k"][0]["class"] in KEPT for a in answers)  # the raw ranking stays
    # in distribution: the answered validation images are at least as accurate as all of them
    fit = confidence["fit"]
    assert fit["accuracy_answered"] >= json.loads(folder.metrics_file.read_text())["val"]["accuracy"]
    # --threshold overrides the export's: at -1 every similarity answers
    everything = json.loads(_invoke("predict", savedmodel, ood, "--json", "--threshold", "-1").stdout)
    assert not any(a["class"] == "unknown" for a in everything)


def test_the_report_names_each_scores_auroc_and_the_better_one(trusted):
    folder, _, _ = trusted
    result = json.loads(folder.evaluation_file.read_text())["confidence"]
    aurocs = result["fit"]["auroc"]
    assert set(aurocs) == {"max_probability", "class_mean_similarity"} and all(0 < a < 1 for a in aurocs.values())
    better = max(aurocs, key=aurocs.get)
    assert result["fit"]["better"] == better and "20 out-of-distribution images" in result["fit"]["auroc_on"]
    page = folder.report_file.read_text()
    for value in aurocs.values():
        assert f"{value:.3f}" in page
    assert f"<b>{better}</b> separates better" in page
    assert "accuracy against coverage" in page and "Grad-CAM of the worst mistakes" in page
    curve = result["curves"]["class_mean_similarity"]
    assert curve[0]["coverage"] == 1.0 and curve[-1]["coverage"] < 0.1


def test_evaluate_threshold_overrides_the_runs(trusted, tmp_path):
    folder, _, _ = trusted
    default = json.loads(folder.evaluation_file.read_text())["confidence"]
    assert default["threshold_from"].startswith("the run") and default["coverage"] == pytest.approx(0.5, abs=0.02)
    result = json.loads(_invoke("evaluate", folder.path, "--json", "--threshold", "2", "--out", tmp_path).stdout)
    strict = result["confidence"]
    assert strict["threshold"] == 2 and strict["coverage"] == 0 and strict["unknown"] == strict["fit"]["images"]
    assert (f"unknown below 2 on class_mean_similarity (--threshold): {strict['unknown']} unknown, 0.0% answered"
            in text_report(result))
    assert json.loads((tmp_path / "evaluation.json").read_text())["confidence"]["threshold"] == 2


def test_the_threshold_lies_between_validation_scores_so_no_image_sits_on_it():
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    correct = np.array([1, 1, 1, 0, 1, 0], bool)
    # a drop of 0.2 of six images lets one correct answer turn unknown (the one at 0.5): answered from 0.7, not 0.6
    assert threshold_for(score, correct, Trust(max_accuracy_drop=0.2)) == pytest.approx(0.65)
    assert threshold_for(score, correct, Trust(max_accuracy_drop=0.0)) == pytest.approx(0.45)  # all correct answered
    assert threshold_for(score, correct, Trust(coverage=0.5)) == pytest.approx(0.65)
    assert threshold_for(score, correct, Trust(coverage=1.0)) == 0.4  # nothing lower: the lowest score itself


def test_the_export_has_a_model_card(trusted):
    folder, savedmodel, _ = trusted
    card = (savedmodel / "MODEL_CARD.md").read_text()
    confidence = json.loads(folder.confidence_file.read_text())
    assert f"{confidence['threshold']:.6g}" in card and f"{confidence['temperature']:.4g}" in card
    rows = folder.read_csv(folder.split_file)
    counts = [sum(r["label"] == "daisy" and r["split"] == split for r in rows) for split in ("train", "val")]
    assert f"| daisy | {counts[0]} | {counts[1]} | " in card and "## Intended use" in card and "## Limits" in card


def test_grad_cam_lies_on_the_object_pasted_onto_a_flat_background(trusted, shared, tmp_path):
    """A 64 px photo in a corner of a grey 96 px canvas (4 of the base's 3x3 output cells, 44 % of the area)."""
    from tlkit.evaluation.explain import grad_cam

    folder, savedmodel, _ = trusted
    canvases, boxes = [], []
    for name in KEPT:
        photo = Image.open(sorted((shared / "data" / "flowers5" / name).iterdir())[100]).convert("RGB")
        for x, y in ((32, 0), (0, 32)):
            canvas = Image.new("RGB", (96, 96), (128, 128, 128))
            canvas.paste(photo.resize((64, 64)), (x, y))
            canvases.append(np.asarray(canvas))
            boxes.append((slice(y, y + 64), slice(x, x + 64)))
    heatmaps = grad_cam(folder.load_model(), np.stack(canvases))[0]
    on_object = np.array([h[box].sum() / h.sum() for h, box in zip(heatmaps, boxes)])
    # mostly on the object on average, and on every photo well above a heatmap spread evenly (0.44 of the mass)
    assert on_object.mean() > 0.5 and on_object.min() > 0.3, on_object
    # the CLI, by the export's Keras twin: one PNG per image
    Image.fromarray(canvases[0]).save(tmp_path / "pasted.png")
    result = _invoke("explain", savedmodel, tmp_path / "pasted.png", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    png = Image.open(tmp_path / "out" / "pasted.gradcam.png")
    assert png.format == "PNG" and png.size[0] > 2 * png.size[1]  # photo, heatmap and classes side by side


def test_explain_refuses_a_model_without_its_run(tmp_path):
    (tmp_path / "lonely").mkdir()
    result = _invoke("explain", tmp_path / "lonely", tmp_path, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "explanations need the Keras model" in result.output


FAMILIES = ("mobilenet", "mobilenet_v2", "mobilenet_v3_small", "vgg16", "resnet50", "resnet50_v2", "inception_v3",
            "inception_resnet_v2", "xception", "densenet121", "nasnet_mobile", "efficientnet_b0", "efficientnet_v2_b0",
            "convnext_tiny")  # the smallest of each family in the registry


def test_the_families_cover_the_registry():
    assert {name.split("_")[0].rstrip("0123456789") for name in BACKBONES} == \
        {name.split("_")[0].rstrip("0123456789") for name in FAMILIES}


@pytest.mark.parametrize("base", FAMILIES)
def test_every_base_family_gets_an_explanation_png(base, tmp_path):
    """Random weights at the smallest size: the heatmap comes from the base's output, whatever its layers."""
    from tlkit import Head, Recipe
    from tlkit.evaluation.explain import explain_pixels
    from tlkit.model import build_classifier
    from tlkit.serving.signatures import Confidence
    from tlkit.weights import ResolvedWeights

    backbone = BACKBONES[base]
    size = max(32, backbone.min_size)
    recipe = Recipe(description=base, base=base, alpha=backbone.alphas[0] if backbone.alphas else None,
                    image_size=size, weights="none", head=Head(dropout=0))
    model = build_classifier(recipe, 2, ResolvedWeights("none", None)).model
    pixels = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    pngs = explain_pixels(model, pixels, ["noise", "more"], ["a", "b"], Confidence(), tmp_path)
    assert [p.name for p in pngs] == ["noise.gradcam.png", "more.gradcam.png"]
    assert all(Image.open(p).format == "PNG" for p in pngs)
