"""Evaluation: figures equal scikit-learn's, the accuracy gate, the report files, the exported model's path."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn import metrics

from tlkit import load_recipe, override, run
from tlkit.cli import cli
from tlkit.images import decode_image
from tlkit.evaluation.evaluate import Evaluation
from tlkit.evaluation.metrics import figures
from tlkit.evaluation.report import misclassified_sheet, training_curves
from tlkit.runfolder import RunFolder


@pytest.fixture(scope="session")
def tiny_run(flowers_small, weights_dir, tmp_path_factory):
    """A real two-stage run: MobileNetV2 0.35 with ImageNet weights, 96 px, 40 flowers per class; no refit, so
    the val figures it writes are those of the model it saves."""
    recipe = override(load_recipe("quickstart"), ["image_size=96", "stage1.epochs=10", "stage2.epochs=2",
                                                  "refit=false"])
    out = tmp_path_factory.mktemp("evaluate") / "run"
    run(recipe, out, data=str(flowers_small), weights_dir=str(weights_dir),
        cache_dir=str(tmp_path_factory.mktemp("cache")))
    return RunFolder(out)


def _unseen(flowers: Path, dest: Path, shift: int) -> Path:
    """8 flowers per class the run never saw (sorted files 40-47), filed under the class `shift` places on,
    plus one corrupt JPEG and one text file."""
    classes = sorted(p.name for p in flowers.iterdir() if p.is_dir())
    for i, name in enumerate(classes):
        target = dest / classes[(i + shift) % len(classes)]
        target.mkdir(parents=True)
        for f in sorted((flowers / name).iterdir())[40:48]:
            (target / f.name).symlink_to(f)
    (dest / classes[0] / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (dest / classes[0] / "notes.txt").write_text("not an image")
    return dest


@pytest.fixture(scope="session")
def unseen(shared, tmp_path_factory):
    return _unseen(shared / "data" / "flowers5", tmp_path_factory.mktemp("unseen") / "unseen", 0)


@pytest.fixture(scope="session")
def relabelled(shared, tmp_path_factory):
    """The same unseen flowers, each filed under the wrong class (the next one alphabetically)."""
    return _unseen(shared / "data" / "flowers5", tmp_path_factory.mktemp("relabelled") / "relabelled", 1)


def _evaluate(*args):
    result = CliRunner().invoke(cli, ["evaluate", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def _json(*args) -> dict:
    result = _evaluate(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _assert_png(path: Path) -> Image.Image:
    image = Image.open(path)
    image.load()
    assert image.format == "PNG"
    assert 400 <= image.width <= 4000 and 150 <= image.height <= 4000, image.size
    assert len(image.convert("RGB").getcolors(1 << 24)) > 20  # a real picture, not a blank canvas
    return image


# === Figures ===

LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 3])
PROBABILITIES = np.array([
    [0.7, 0.1, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1], [0.25, 0.5, 0.15, 0.1], [0.15, 0.2, 0.6, 0.05],
    [0.1, 0.8, 0.05, 0.05], [0.3, 0.4, 0.2, 0.1], [0.5, 0.45, 0.03, 0.02],
    [0.1, 0.1, 0.7, 0.1], [0.25, 0.25, 0.3, 0.2], [0.3, 0.3, 0.3, 0.1]])
CLASSES = ["ant", "bee", "cat", "dog"]


def test_figures_equal_scikit_learn_on_fixed_predictions():
    result = figures(LABELS, PROBABILITIES, CLASSES, top_k=2)
    predicted = PROBABILITIES.argmax(1)
    assert result["accuracy"] == 0.6 == metrics.accuracy_score(LABELS, predicted)
    assert result["confusion_matrix"] == [[2, 1, 1, 0], [1, 2, 0, 0], [0, 0, 2, 0], [1, 0, 0, 0]]
    assert result["top_k"] == 2
    assert result["top_k_accuracy"] == pytest.approx(metrics.top_k_accuracy_score(LABELS, PROBABILITIES, k=2)) == 0.8
    assert result["log_loss"] == pytest.approx(metrics.log_loss(LABELS, PROBABILITIES))
    for average in ("macro", "weighted"):
        p, r, f, _ = metrics.precision_recall_fscore_support(LABELS, predicted, average=average, zero_division=0)
        assert result[average] == pytest.approx({"precision": p, "recall": r, "f1": f})
    p, r, f, s = metrics.precision_recall_fscore_support(LABELS, predicted, zero_division=0)
    assert list(result["per_class"]) == CLASSES
    assert [c["precision"] for c in result["per_class"].values()] == pytest.approx(p)
    assert [c["recall"] for c in result["per_class"].values()] == pytest.approx(r)
    assert [c["f1"] for c in result["per_class"].values()] == pytest.approx(f)
    assert [c["support"] for c in result["per_class"].values()] == [4, 3, 2, 1] == list(s)
    assert result["per_class"]["dog"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert result["per_class"]["cat"]["precision"] == pytest.approx(2 / 3)


def test_top_k_is_capped_below_the_class_count_and_binary_works():
    four = figures(LABELS, PROBABILITIES, CLASSES, top_k=5)
    assert four["top_k"] == 3
    assert four["top_k_accuracy"] == pytest.approx(metrics.top_k_accuracy_score(LABELS, PROBABILITIES, k=3)) == 0.9
    labels = np.array([0, 1, 1, 0, 1])
    positive = np.array([0.2, 0.9, 0.4, 0.6, 0.7])
    two = figures(labels, np.stack([1 - positive, positive], 1), ["no", "yes"])
    assert two["top_k"] == 1 and two["top_k_accuracy"] == two["accuracy"] == 0.6
    assert two["log_loss"] == pytest.approx(metrics.log_loss(labels, positive))
    assert two["confusion_matrix"] == [[1, 1], [1, 2]]


def test_mistakes_are_sorted_worst_first():
    evaluation = Evaluation("m", "d", CLASSES, [Path(f"{i}.jpg") for i in range(10)], LABELS, PROBABILITIES)
    mistakes = evaluation.mistakes()
    assert [m["path"] for m in mistakes] == ["9.jpg", "3.jpg", "2.jpg", "6.jpg"]  # true class at .1, .15, .25, .45
    assert mistakes[0] == {"path": "9.jpg", "true": "dog", "predicted": "ant", "confidence": 0.3,
                           "true_probability": pytest.approx(0.1)}


# === Pictures ===

def test_pictures_depend_on_the_data(tmp_path, flowers_small):
    paths = sorted(flowers_small.glob("*/*"))[::40][:4]  # one photo of each of four classes
    labels = np.array([0, 1, 2, 3])
    right = Evaluation("m", "four flowers", CLASSES, paths, labels, np.eye(4)[labels] * 0.7 + 0.075)
    wrong = Evaluation("m", "four flowers", CLASSES, paths, labels, np.eye(4)[[1, 0, 3, 2]] * 0.7 + 0.075)
    misclassified_sheet(right, tmp_path / "none.png")
    misclassified_sheet(wrong, tmp_path / "all.png")
    sheet, none = _assert_png(tmp_path / "all.png"), Image.open(tmp_path / "none.png")
    assert sheet.height > none.height  # a row of thumbnails under a heading vs one line of text
    assert np.asarray(sheet.convert("RGB")).std() > 30 > np.asarray(none.convert("RGB")).std()  # photos on it

    history = [{"stage": "1:feature_extraction" if e <= 3 else "2:fine_tune", "epoch": e, "loss": 1 / e,
                "accuracy": 1 - 0.5 / e, "val_loss": 1.2 / e, "val_accuracy": 1 - 0.6 / e} for e in range(1, 6)]
    training_curves(history, tmp_path / "a.png")
    training_curves([{**row, "val_loss": row["val_loss"] * 2} for row in history], tmp_path / "b.png")
    _assert_png(tmp_path / "a.png")
    _assert_png(tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()


# === A real run ===

def test_run_report_equals_scikit_learn_on_the_models_predictions(tiny_run):
    """The figures `tlkit run` writes are scikit-learn's on the saved model's predictions for the val split,
    calibrated with the run's temperature: softmax(log(p) / T) (log p is the logits less a constant per image)."""
    report = json.loads(tiny_run.evaluation_file.read_text())
    rows = [r for r in tiny_run.read_csv(tiny_run.split_file) if r["split"] == "val"]
    classes = tiny_run.class_names()
    labels = np.array([classes.index(r["label"]) for r in rows])
    pixels = np.stack([decode_image(Path(r["path"]), 96) for r in rows]).astype(np.float32)
    raw = np.asarray(tiny_run.load_model()(pixels, training=False), np.float64)
    temperature = json.loads(tiny_run.confidence_file.read_text())["temperature"]
    scaled = np.exp(np.log(raw) / temperature)
    probabilities = scaled / scaled.sum(axis=1, keepdims=True)
    predicted = probabilities.argmax(1)
    assert np.array_equal(predicted, raw.argmax(1)) and temperature != 1

    assert report["data"] == "val split" and report["images"] == len(rows) > 30
    assert report["accuracy"] == pytest.approx(metrics.accuracy_score(labels, predicted))
    assert report["log_loss"] == pytest.approx(metrics.log_loss(labels, probabilities), abs=1e-5)
    assert report["top_k"] == 4
    assert report["top_k_accuracy"] == pytest.approx(metrics.top_k_accuracy_score(labels, probabilities, k=4))
    assert report["macro"]["f1"] == pytest.approx(metrics.f1_score(labels, predicted, average="macro"))
    assert report["weighted"]["recall"] == pytest.approx(metrics.recall_score(labels, predicted, average="weighted"))
    assert report["confusion_matrix"] == metrics.confusion_matrix(labels, predicted).tolist()
    assert len(report["misclassified"]) == int((predicted != labels).sum())
    # Keras's own evaluation in metrics.json agrees with scikit-learn's figures
    keras_val = json.loads(tiny_run.metrics_file.read_text())["val"]
    assert report["accuracy"] == pytest.approx(keras_val["accuracy"], abs=1e-6)
    assert report["log_loss"] == pytest.approx(keras_val["loss"], abs=1e-4)
    assert 0.5 < report["accuracy"] < 1  # real learning on real photos, with mistakes to show

    pictures = (tiny_run.curves_file, tiny_run.confusion_file, tiny_run.misclassified_file,
                tiny_run.reliability_file, tiny_run.coverage_file, tiny_run.explanations_file)
    for png in pictures:
        _assert_png(png)
    page = tiny_run.report_file.read_text()
    assert page.count("data:image/png;base64,") == len(pictures)
    assert f"{report['accuracy']:.4f}" in page and "sunflower" in page


def test_evaluate_a_run_prints_its_report(tiny_run):
    result = _evaluate(tiny_run.path)
    assert result.exit_code == 0, result.output
    report = json.loads(tiny_run.evaluation_file.read_text())
    lines = result.stdout.splitlines()
    assert f"accuracy          {report['accuracy']:.4f}" in lines
    assert "data      val split: %d images, 5 classes" % report["images"] in lines
    daisy = report["per_class"]["daisy"]
    assert (f"daisy             {daisy['precision']:9.4f}  {daisy['recall']:6.4f}  {daisy['f1']:6.4f}  "
            f"{daisy['support']:7d}") in lines
    assert any(line.split() == ["tulip", *map(str, report["confusion_matrix"][-1])] for line in lines)
    assert f"report: {tiny_run.report_file}" in lines


def test_gate_exits_1_below_the_threshold_and_0_at_it(tiny_run, relabelled):
    below = _evaluate(tiny_run.path, "--data", relabelled, "--json", "--min-accuracy", 0.5,
                      "--out", relabelled.parent / "report")
    assert below.exit_code == 1
    accuracy = json.loads(below.stdout)["accuracy"]
    assert accuracy < 0.5  # every flower filed under the wrong class
    assert below.stderr.splitlines()[-1] == f"tlkit: accuracy {accuracy:.4f} is below --min-accuracy 0.5"
    at = _evaluate(tiny_run.path, "--data", relabelled, "--min-accuracy", accuracy, "--out", relabelled.parent / "at")
    assert at.exit_code == 0, at.output
    assert at.stderr.splitlines()[-1] == f"tlkit: accuracy {accuracy:.4f} meets --min-accuracy {accuracy}"


@pytest.fixture(scope="session")
def unseen_result(tiny_run, unseen):
    """`tlkit evaluate RUN --data UNSEEN --json --min-accuracy 0.3`: its exit code and the figures printed."""
    result = _evaluate(tiny_run.path, "--data", unseen, "--json", "--min-accuracy", 0.3)
    return result.exit_code, json.loads(result.stdout)


def test_folders_map_labels_by_class_name_and_list_unreadable_files(tiny_run, unseen, relabelled, unseen_result):
    exit_code, right = unseen_result
    assert exit_code == 0  # the gate passes above the threshold (chance is 0.2)
    wrong = json.loads((relabelled.parent / "report" / "evaluation.json").read_text())
    assert right["images"] == wrong["images"] == 40
    assert right["accuracy"] > 0.3 and wrong["accuracy"] < right["accuracy"]
    # the same predictions, each image's true class moved one class on
    assert wrong["confusion_matrix"] == np.roll(right["confusion_matrix"], 1, axis=0).tolist()
    assert [(Path(s["path"]).name, s["reason"].split(":")[0]) for s in right["skipped"]] == [
        ("broken.jpg", "corrupt JPEG image (unreadable header)"), ("notes.txt", "not an image (unrecognised format)")]
    # the report went to RUN/evaluations/FOLDER; its pictures differ from the other folder's
    folder = RunFolder(tiny_run.path / "evaluations" / unseen.name)
    assert right["report"] == str(folder.report_file)
    other = RunFolder(relabelled.parent / "report")
    for name in ("confusion_file", "misclassified_file", "curves_file"):
        _assert_png(getattr(folder, name))
    assert folder.confusion_file.read_bytes() != other.confusion_file.read_bytes()
    assert folder.misclassified_file.read_bytes() != other.misclassified_file.read_bytes()
    assert "broken.jpg" in folder.report_file.read_text()


def test_exported_model_is_evaluated_through_its_serving_signature(tiny_run, unseen, unseen_result, tmp_path):
    keras_model = unseen_result[1]
    export = _json(tiny_run.path / "export" / "model", "--data", unseen, "--out", tmp_path / "export")
    assert export["model"] == str(tiny_run.path / "export" / "model" / "1")  # the newest version
    assert export["confusion_matrix"] == keras_model["confusion_matrix"]
    assert export["log_loss"] == pytest.approx(keras_model["log_loss"], abs=1e-5)
    assert export["skipped"] == keras_model["skipped"]
    assert (tmp_path / "export" / "confusion_matrix.png").is_file()
    assert not (tmp_path / "export" / "training_curves.png").exists()  # an export carries no history


@pytest.mark.parametrize("args, message", [
    (["{run}", "--data", "{shapes}"], "has class(es) the model does not know: circle, square, triangle "
                                      "(model classes: daisy, dandelion, rose, sunflower, tulip)"),
    (["{run}", "--data", "test"], "has no test split; pass --data with one of train, val"),
    (["{run}/export/model/1"], "is an exported model and has no splits; pass --data with a folder of class"),
    (["{shapes}"], "is neither a run folder (with model.keras) nor an exported model"),
])
def test_bad_input_is_one_line(tiny_run, shapes, args, message):
    result = _evaluate(*[a.format(run=tiny_run.path, shapes=shapes) for a in args])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("tlkit: error: ")
    assert message in result.stderr
