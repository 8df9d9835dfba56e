"""`tlkit predict` answers through an exported artefact (run folder, SavedModel, TF Serving folder, .tflite),
walks folders, prints a table, JSON or CSV, and names every unreadable file."""
import csv
import io
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from tlkit.cli import cli
from tlkit.images import decode_image


@pytest.fixture(scope="module")
def photos(served, tmp_path_factory):
    """Five real validation photos: three in a folder, two in a sub-folder, and a hidden file (not an image)."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "more").mkdir()
    chosen = served.val_paths[::max(1, len(served.val_paths) // 5)][:5]
    targets = [folder / p.name for p in chosen[:3]] + [folder / "more" / p.name for p in chosen[3:]]
    for source, target in zip(chosen, targets):
        shutil.copy(source, target)
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return folder, sorted(targets[:3]) + sorted(targets[3:])


def _predict(*args):
    result = CliRunner().invoke(cli, ["predict", *map(str, args)])
    return result


def test_predict_through_every_artefact_matches_keras(served, photos):
    folder, files = photos
    keras = served.keras_answers([decode_image(f, served.size) for f in files])
    expected = keras["probabilities"]
    names = served.folder.class_names()
    tflite = served.folder.path / served.exports["tflite"].path
    models = {"run folder": served.folder.path, "SavedModel": served.savedmodel,
              "TF Serving model folder": served.savedmodel.parent, "TFLite float32": tflite / "model_float32.tflite"}
    for what, model in models.items():
        result = _predict(model, folder, "--top-k", "2", "--json")
        assert result.exit_code == 0, f"{what}: {result.output}"
        answers = json.loads(result.stdout)
        assert [a["file"] for a in answers] == [str(f) for f in files], what
        assert [a["class"] for a in answers] == keras["classes"], what  # unknown below the threshold
        for answer, probs in zip(answers, expected):
            assert [t["class"] for t in answer["top_k"]] == [names[i] for i in np.argsort(-probs)[:2]], what
            np.testing.assert_allclose([t["probability"] for t in answer["top_k"]], np.sort(probs)[::-1][:2],
                                       atol=1e-4, err_msg=what)

    result = _predict(tflite / "model_int8.tflite", files[0], "--top-k", "5", "--json")
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)[0]["top_k"]
    assert sorted(t["class"] for t in top) == sorted(names)
    assert abs(sum(t["probability"] for t in top) - 1) < 0.02  # uint8 probabilities, steps of 1/256


def test_predict_prints_a_table_or_csv(served, photos):
    folder, files = photos
    table = _predict(served.folder.path, folder)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    score = json.loads((served.savedmodel / "assets" / "confidence.json").read_text())["score"]
    assert lines[0].split() == ["file", "answer", "probability", score, "top-3"]
    assert [line.split()[0] for line in lines[1:]] == [str(f) for f in files]

    rows = list(csv.DictReader(io.StringIO(_predict(served.folder.path, *files, "--csv", "--top-k", "2").stdout)))
    assert [r["file"] for r in rows] == [str(f) for f in files]
    assert list(rows[0]) == ["file", "answer", score, "class_1", "probability_1", "class_2", "probability_2"]
    assert all(float(r["probability_1"]) >= float(r["probability_2"]) for r in rows)


def test_predict_names_each_unreadable_file_and_exits_nonzero(served, tmp_path):
    good = served.val_paths[0]
    shutil.copy(good, tmp_path / "good.jpg")
    (tmp_path / "truncated.jpg").write_bytes(good.read_bytes()[:300])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    missing = tmp_path / "missing.jpg"
    result = _predict(served.savedmodel, tmp_path, missing)
    assert result.exit_code == 1
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == [str(tmp_path / "good.jpg")]
    errors = result.stderr.splitlines()
    assert errors[-1] == "tlkit: 1 file(s) predicted, 4 failed"
    for bad in (missing, tmp_path / "empty.png", tmp_path / "notes.txt", tmp_path / "truncated.jpg"):
        line = next(e for e in errors if e.startswith(f"tlkit: cannot read {bad}: "))
        assert len(line) > len(f"tlkit: cannot read {bad}: ") + 3  # a reason follows the path
    nothing_read = _predict(served.savedmodel, tmp_path / "notes.txt")
    assert nothing_read.exit_code == 1 and nothing_read.stdout == ""  # no empty table


def test_predict_ignores_system_files_as_training_does(served, tmp_path):
    """A folder copied from Windows or macOS: Thumbs.db, desktop.ini, ._ AppleDouble files, __MACOSX/."""
    for name in ("a.jpg", "b.jpg"):
        shutil.copy(served.val_paths[0], tmp_path / name)
    (tmp_path / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(60))
    (tmp_path / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (tmp_path / "._a.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(40))
    (tmp_path / "__MACOSX").mkdir()
    (tmp_path / "__MACOSX" / "._b.jpg").write_bytes(b"\x00\x05\x16\x07")
    result = _predict(served.savedmodel, tmp_path, "--json")
    assert result.exit_code == 0, result.output
    assert [a["file"] for a in json.loads(result.stdout)] == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]


def test_predict_rejects_what_is_not_a_model(tmp_path, served):
    result = _predict(tmp_path, served.val_paths[0])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        f"tlkit: error: {tmp_path} is not a run folder, a SavedModel folder, a .tflite or an .onnx file")
    (tmp_path / "model.keras").write_bytes(b"")
    result = _predict(tmp_path, served.val_paths[0])
    assert result.output.strip().splitlines()[-1] == (
        f"tlkit: error: {tmp_path} has no SavedModel export; create one with: tlkit export {tmp_path}")
