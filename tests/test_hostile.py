"""Hostile folders, concurrent runs and bad flags. Every case ends with an exit code and, when it fails, one
line naming the file or flag and the fix, never a traceback; every subprocess has a timeout; nothing is lost
(counts add up, the surviving run folder is complete)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tlkit import Data, TlkitError, load_recipe, override
from tlkit.cli import cli
from tlkit.data import load_data
from tlkit.sources import list_source
from tlkit.training.stage import stage_id

TIMEOUT = 600  # seconds any subprocess may take: a hang fails the test instead of the suite
CLASSES = ("circle", "square", "triangle")
CHEAP = ["--weights", "none", "--set", "random_init=as_recipe", "--image-size", "32"]  # training is not the point
NOT_UTF8 = os.fsdecode(b"bad-\xff-name.png")
ODD = "\u0301e\u0301t\u00e9 \u5199\u771f \U0001f642.png"  # combining accents, CJK, an emoji


def picture(path: Path, seed: int, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, "PNG")
    return path


# relative path -> the start of the reason it is skipped; nothing else may be skipped, everything else is used
SKIPPED = {
    "circle/loop": "symbolic link loop",  # -> .. (the data folder)
    "square/self": "symbolic link loop",  # -> .
    "circle2": "second path to a folder already listed",  # -> circle, beside the real one: not a class
    "triangle/circles": "second path to a folder already listed",  # -> ../circle
    "square/again.png": "same file as",  # -> a file already listed
    "triangle/dangling.png": "dangling symbolic link",
    "triangle/empty.png": "empty file (0 bytes)",
}
USABLE = 3 * 8 + 2  # eight pictures per class, and the two with odd names


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "photos"
    for k, name in enumerate(CLASSES):
        for i in range(8):
            picture(root / name / f"{name} {i}.png", 10 * k + i)
    picture(root / "circle" / ODD, 91)
    picture(root / "square" / NOT_UTF8, 92)
    (root / "triangle" / "empty.png").write_bytes(b"")
    (root / "circle" / ".DS_Store").write_bytes(b"\0")
    os.symlink("..", root / "circle" / "loop")
    os.symlink(".", root / "square" / "self")
    os.symlink("circle", root / "circle2")
    os.symlink("../circle", root / "triangle" / "circles")
    os.symlink("square 0.png", root / "square" / "again.png")
    os.symlink("nowhere.png", root / "triangle" / "dangling.png")
    return root


def skipped_of(rows, root: Path) -> dict:
    return {str(Path(r["path"]).relative_to(root)): r["reason"] for r in rows}


def assert_skips(found: dict):
    assert sorted(found) == sorted(SKIPPED)
    assert all(found[path].startswith(reason) for path, reason in SKIPPED.items()), found


def one_error(result, *needles) -> str:
    """The command failed with exit 2 and exactly one error line, last, holding every needle; no traceback."""
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("tlkit: error:")]
    assert result.exit_code == 2 and len(errors) == 1 and lines[-1] == errors[0], result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.exception
    assert all(needle in errors[0] for needle in needles), (errors[0], needles)
    return errors[0]


def tlkit(*args, script: str | None = None, env=None) -> subprocess.Popen:
    command = [sys.executable, "-c", script, *map(str, args)] if script else [sys.executable, "-m", "tlkit.cli",
                                                                             *map(str, args)]
    return subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="backslashreplace")


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"no answer in {TIMEOUT}s: {process.args}") from None
    return process.returncode, out, err


def assert_complete(run: Path, epochs: int):
    """A finished run folder: every file, one history row per epoch, every listed file used or skipped."""
    for name in ("recipe.json", "classes.json", "split.csv", "skipped.csv", "history.csv", "metrics.json",
                 "run.json", "model.keras", "report.html"):
        assert (run / name).is_file(), name
    assert not (run / "run.lock").exists() and not (run / "checkpoint").exists()
    from tlkit.runfolder import RunFolder
    folder = RunFolder(run)
    assert [int(row["epoch"]) for row in folder.read_csv(folder.history_file)] == list(range(1, epochs + 1))
    data = json.loads(folder.run_file.read_text())["data"]
    assert len(folder.read_csv(folder.split_file)) == data["used"] == USABLE
    assert len(folder.read_csv(folder.skipped_file)) == data["skipped"] == len(SKIPPED)
    assert data["files"] == USABLE + len(SKIPPED)


# === Folders ===

def test_inspect_follows_links_safely_and_counts_add_up(hostile):
    result = CliRunner().invoke(cli, ["data", "inspect", str(hostile), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [c["name"] for c in report["classes"]] == list(CLASSES)
    assert [c["images"] for c in report["classes"]] == [9, 9, 8]
    assert_skips(skipped_of(report["skipped"], hostile))
    assert report["files"] == report["used"] + len(report["skipped"]) == USABLE + len(SKIPPED)


def test_a_file_that_vanishes_after_listing_is_skipped(tmp_path):
    root = tmp_path / "data"
    for k, name in enumerate(("cat", "dog")):
        for i in range(6):
            picture(root / name / f"{i}.png", 10 * k + i)
    listing = list_source(root)
    (root / "dog" / "3.png").unlink()
    data = load_data(listing, 32, Data(val_fraction=0.3))
    assert [(p.relative_to(root).as_posix(), r) for p, r in data.skipped] == [("dog/3.png", "file not found")]
    assert data.summary()["used"] == 11 and data.summary()["files"] == 12


# === Bad flags and recipe values: one line, before any work ===

RECIPES = {
    "syntax.py": ("from tlkit import Recipe\nrecipe = Recipe(\n    base='mobilenet'\n", "syntax.py:2: SyntaxError"),
    "name.py": ("from tlkit import Recipe\n\nrecipe = Reciple(description='x', base='mobilenet', alpha=0.25)\n",
                "name.py:3: NameError: name 'Reciple' is not defined"),
    "imports.py": ("import os\nfrom tlkit import Recipie\n", "imports.py:2: ImportError: cannot import name 'Recipie'"),
    "value.py": ("from tlkit import Recipe\nrecipe = Recipe(description='x', base='mobilenet_v9')\n",
                 "value.py:2: base: unknown base 'mobilenet_v9'; valid choices: convnext_base"),
}


@pytest.mark.parametrize("args, needles", [
    (["--epochs", "0"], ["--epochs 0: nothing would train", "0 skips a stage"]),
    (["--set", "stage1.epochs=0", "--set", "stage2.epochs=0"], ["every stage has epochs=0"]),
    (["--set", "stages.1.learning_rate=1e-4"], ["stages are counted from 1", "stage2.learning_rate=1e-4"]),
    (["--weights-dir", "/no/such/weights"], ["--weights-dir /no/such/weights: no such folder"]),
    (["--batch-size", "many"], ["Invalid value for '--batch-size'", "run --help"]),
    (["--set", "stage1.learning_rate=nan"], ["stage1.learning_rate: Input should be a finite number"]),
    (["--seed", "-1"], ["seed: Input should be greater than or equal to 0"]),
    *[([name], [needle]) for name, (_, needle) in RECIPES.items()],
])
def test_bad_flags_and_recipes_are_one_line_before_any_work(args, needles, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, (text, _) in RECIPES.items():
        Path(name).write_text(text)
    recipe = [] if args[0] in RECIPES else ["quickstart"]
    one_error(CliRunner().invoke(cli, ["run", *recipe, *args, "--out", "never"]), *needles)
    assert not Path("never").exists()


def test_a_giant_image_size_is_refused_with_the_estimate(hostile, tmp_path):
    result = CliRunner().invoke(cli, ["run", "quickstart", "--data", str(hostile), "--image-size", "100000",
                                      "--out", str(tmp_path / "run")])
    one_error(result, "--image-size 100000", "GB of memory", "use a smaller --image-size")
    cache = Path(os.environ["TLKIT_CACHE_DIR"])
    assert not [p for p in cache.rglob("*") if p.is_file()]  # no giant cache file, nothing decoded


# === CSV sources ===

def test_csv_header_by_name_semicolons_and_bom(tmp_path):
    for k, name in enumerate(("cat", "dog")):
        for i in range(6):
            picture(tmp_path / "img" / f"{name}{i}.png", 10 * k + i)
    rows = [f"img/{name}{i}.png;{name}" for name in ("cat", "dog") for i in range(6)]
    (tmp_path / "excel.csv").write_text("\ufeffFile;Category\n" + "\n".join(rows) + "\n", encoding="utf-8")
    data = load_data(tmp_path / "excel.csv", 16, Data(val_fraction=0.3))
    assert data.class_names == ["cat", "dog"] and sum(data.counts().values()) == 12 and not data.skipped


def test_kaggle_ids_map_to_files_with_options(tmp_path):
    """`id,breed` rows name files train/ID.jpg: --image-dir and --suffix (data.image_dir, data.suffix for run
    and --set) map them without editing the file; without them the one-line error names both."""
    ids = [f"{k:032x}" for k in range(10)]
    for k, name in enumerate(ids):
        picture(tmp_path / "train" / f"{name}.jpg", k)
    labels = tmp_path / "labels.csv"
    labels.write_text("id,breed\n" + "".join(f"{i},{'beagle' if k % 2 else 'collie'}\n" for k, i in enumerate(ids))
                      + "gone,beagle\n")

    one_error(CliRunner().invoke(cli, ["data", "inspect", str(labels)]),
              "none of its 11 rows names a file that exists", "--image-dir", "--suffix")
    mapped = ["--image-dir", str(tmp_path / "train"), "--suffix", ".jpg"]
    result = CliRunner().invoke(cli, ["data", "inspect", str(labels), *mapped, "--json"])
    report = json.loads(result.stdout)
    assert {c["name"]: c["images"] for c in report["classes"]} == {"beagle": 5, "collie": 5}
    assert [(Path(s["path"]).name, s["reason"]) for s in report["skipped"]] == [("gone.jpg", "file not found")]

    spec = override(load_recipe("quickstart"), [f'data.image_dir="{tmp_path / "train"}"', "data.suffix=.jpg",
                                                "data.val_fraction=0.3"]).data
    data = load_data(labels, 16, spec)
    assert data.summary()["used"] == 10 and [Path(p).name for p, _ in data.skipped] == ["gone.jpg"]


def test_a_csv_whose_files_are_mostly_missing_warns_loudly(tmp_path):
    for i in range(4):
        picture(tmp_path / f"{i}.png", i)
    rows = [f"{i}.png,{'ab'[i % 2]}" for i in range(4)] + [f"lost{i}.png,{'ab'[i % 2]}" for i in range(6)]
    (tmp_path / "most.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    listing = list_source(tmp_path / "most.csv")
    assert len(listing.items) == 4 and len(listing.skipped) == 6
    assert listing.warnings == [listing.warnings[0]] and listing.warnings[0].startswith(
        f"6 of 10 rows of {tmp_path / 'most.csv'} name files that do not exist")
    (tmp_path / "wide.csv").write_text("file_id,weight,breed\n0.png,3,a\n1.png,4,b\n")
    with pytest.raises(TlkitError, match="which columns hold the path and the label.*--path-column.*--label-column"):
        list_source(tmp_path / "wide.csv")
    assert len(list_source(tmp_path / "wide.csv", Data(path_column="file_id", label_column="breed")).items) == 2


def test_force_deletes_only_what_a_run_wrote(tmp_path):
    from tlkit.runfolder import RunFolder
    folder = RunFolder(tmp_path / "run")
    for name in ("recipe.json", "model.keras", "history.csv", "checkpoint/latest", "export/model/1/saved_model.pb",
                 "stages/1-feature_extraction/parameters.txt", "notes.txt", "data/keep.png"):
        (folder.path / name).parent.mkdir(parents=True, exist_ok=True)
        (folder.path / name).write_text("x")
    folder.clear()
    assert sorted(p.relative_to(folder.path).as_posix() for p in folder.path.rglob("*") if p.is_file()) == [
        "data/keep.png", "notes.txt"]


def test_stages_are_counted_from_one_everywhere():
    recipe = override(load_recipe("quickstart"), ["stage2.learning_rate=3e-4"])
    assert recipe.stages[1].learning_rate == 3e-4 and stage_id(1, recipe.stages[1].kind) == "2:fine_tune"
    with pytest.raises(TlkitError, match=r"stage2\.epochs=3"):
        override(recipe, ["stages.1.epochs=3"])


# === Runs: one writer per folder, kill -9, resume, concurrent caches ===

@pytest.fixture(scope="module")
def killed(hostile, tmp_path_factory):
    """A run on the hostile folder, killed with SIGKILL after its first checkpoint; then the same command with
    other epochs, and --resume with another --set (both refused); then the plain --resume, which finishes."""
    home = tmp_path_factory.mktemp("killed")
    run = home / "run"
    args = ["run", "quickstart", "--data", str(hostile), *CHEAP, "--set", "stage1.patience=null", "--out", str(run)]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TLKIT_CACHE_DIR", str(home / "cache"))
        env.setenv("KERAS_HOME", str(home / "keras"))
        process = tlkit(*args, "--epochs", "12,0", "--export", "none", "--checkpoint-every", "0")
        deadline = time.time() + TIMEOUT
        while not (run / "checkpoint" / "latest").exists():
            assert process.poll() is None, finish(process)[2][-3000:]
            assert time.time() < deadline, "no checkpoint in time"
            time.sleep(0.01)
        holder = json.loads((run / "run.lock").read_text())
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=TIMEOUT)
        stale = (run / "run.lock").is_file()
        other_epochs = CliRunner().invoke(cli, [*args, "--epochs", "11,0"])
        other_set = CliRunner().invoke(cli, ["run", "--resume", str(run), "--set", "head.dropout=0.5"])
        resumed = CliRunner().invoke(cli, ["run", "--resume", str(run)])
    return {"run": run, "pid": process.pid, "holder": holder, "stale": stale, "other_epochs": other_epochs,
            "other_set": other_set, "resumed": resumed}


def test_a_killed_run_is_taken_over_and_resumed_only_as_it_was(killed):
    run, pid = killed["run"], killed["pid"]
    assert killed["holder"]["pid"] == pid and killed["holder"]["host"] and killed["stale"]  # kill -9 left it
    first = killed["other_epochs"]  # the first command after the kill takes the lock over, and says so
    assert f"taking over the lock of a run that is no longer running (pid {pid} on" in first.stderr
    one_error(first, f"{run} holds an unfinished run", "stage1.epochs: 12 -> 11", "--resume", "--force")
    one_error(killed["other_set"], "head.dropout: 0.2 -> 0.5")
    resumed = killed["resumed"]
    assert resumed.exit_code == 0, resumed.output
    assert "resuming at stage 1" in resumed.stderr
    assert resumed.stdout.strip().splitlines()[-1].startswith("validation accuracy")
    assert "RANDOM INIT, no pretrained weights: trained the recipe's stages on a random base" in resumed.stdout
    assert_complete(run, epochs=12)
    events = [e["event"] for e in json.loads((run / "run.json").read_text())["interruptions"]]
    assert events == ["stopped without finishing (killed or crashed)", "resumed"]


HOLD = """
import os, sys, time
from pathlib import Path
import tlkit.storage as storage
publish, gate = storage.publish, Path(os.environ["TLKIT_TEST_GATE"])
def held(tmp, target, replace):
    # a cache entry is published only once both runs hold a whole private copy (they race on every one), and
    # the first only once the test says go
    if not replace:
        (gate / f"{target.name}.{os.getpid()}").touch()
        deadline = time.time() + 300
        while (len(list(gate.glob(target.name + ".*"))) < 2 or not (gate / "go").exists()) and time.time() < deadline:
            time.sleep(0.02)
    return publish(tmp, target, replace)
storage.publish = held
from tlkit.cli import main
sys.argv = ["tlkit", *sys.argv[1:]]
main()
"""


def test_concurrent_runs_one_writer_per_folder_one_entry_per_cache_key(hostile, tmp_path):
    """Two `tlkit run` at once on the same data and cache, into two folders, both computing every cache entry at
    the same time; meanwhile a third run into the first one's folder stops at once with one line."""
    gate, cache = tmp_path / "gate", tmp_path / "cache"
    gate.mkdir()
    first, second = tmp_path / "first", tmp_path / "second"
    args = ["run", "quickstart", "--data", str(hostile), *CHEAP, "--epochs", "1", "--export", "none",
            "--set", "augment.flip=horizontal"]  # flipped copies: more entries to race on
    env = {"TLKIT_CACHE_DIR": str(cache), "TLKIT_TEST_GATE": str(gate)}
    processes = [tlkit(*args, "--out", out, script=HOLD, env=env) for out in (first, second)]
    deadline = time.time() + TIMEOUT
    while len(list(gate.iterdir())) < 2:  # both decoded the images, each into its own folder, and wait
        assert time.time() < deadline and all(p.poll() is None for p in processes), [finish(p) for p in processes]
        time.sleep(0.02)
    busy = CliRunner().invoke(cli, [*args, "--out", str(first)])
    (gate / "go").touch()
    results = [finish(p) for p in processes]
    assert [code for code, _, _ in results] == [0, 0], [err[-3000:] for _, _, err in results]
    one_error(busy, f"{first} is in use by another tlkit run (pid {processes[0].pid} on ", "pass another --out")

    for out, (_, stdout, stderr) in zip((first, second), results):
        assert_complete(out, epochs=2)
        assert stdout.strip().splitlines() == [stdout.strip()] and stdout.startswith("validation accuracy")
        assert all(line.startswith("tlkit:") for line in stderr.splitlines()), stderr  # no TensorFlow chatter
    assert (first / "split.csv").read_bytes() == (second / "split.csv").read_bytes()
    # the decoded images; at 2 cuts, every image's features and the flipped copies of train's and (the refit) val's
    entries = list(cache.rglob("meta.json"))
    assert len(entries) == 7 and len(list(gate.glob("*.*"))) == 2 * 7  # both computed each one...
    assert not [p for p in cache.rglob("*") if p.name.startswith(".tmp-")]  # ...and one whole copy was kept
    assert sum(err.count("another process stored the same entry first") for _, _, err in results) == 7


# === What a finished run is used for: evaluate, predict, export ===

def test_evaluate_and_predict_list_what_they_skip(killed, hostile, tmp_path):
    run = killed["run"]
    result = CliRunner().invoke(cli, ["evaluate", str(run), "--data", str(hostile), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == USABLE and report["random_init"].startswith("no pretrained weights")
    assert_skips(skipped_of(report["skipped"], hostile))

    csv = tmp_path / "ids.csv"  # the same pictures named by id, mapped with --image-dir and --suffix
    csv.write_text("id,class\n" + "".join(f"{name}/{name} {i},{name}\n" for name in CLASSES for i in range(8)))
    by_id = CliRunner().invoke(cli, ["evaluate", str(run), "--data", str(csv), "--image-dir", str(hostile),
                                     "--suffix", ".png", "--json"])
    assert by_id.exit_code == 0 and json.loads(by_id.stdout)["images"] == 24, by_id.output

    predicted = CliRunner().invoke(cli, ["predict", str(run), str(hostile), "--json"])
    assert predicted.exit_code == 1  # two files cannot be read: the dangling link and the empty file
    assert len(json.loads(predicted.stdout)) == USABLE
    said = predicted.stderr.strip().splitlines()
    for path, reason in SKIPPED.items():
        assert any(str(hostile / path) in line and reason in line for line in said), (path, said)
    assert said[-1] == f"tlkit: {USABLE} file(s) predicted, 2 failed, 5 skipped as repeats (links to files or " \
                       "folders already listed)"


def test_export_all_exports_what_is_installed_and_names_the_rest(killed, monkeypatch):
    """Without the onnx extra, `--format all` writes the SavedModel and TFLite exports and names ONNX with its
    install command. (The TFLite conversion itself is tests/serving/test_serving_tflite.py's subject; here a
    stand-in writes its files, which keeps this test to the orchestration.)"""
    import tlkit.serving.export as export

    def tflite_files(model, class_names, size, folder, name, calibration, confidence, version):
        (folder / f"{name}_float32.tflite").write_bytes(b"TFL3")
        return {"float32": folder / f"{name}_float32.tflite"}

    monkeypatch.setattr(export, "export_tflite", tflite_files)
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as without the onnx extra: importing it fails
    result = CliRunner().invoke(cli, ["export", str(killed["run"]), "--format", "all"])
    assert result.exit_code == 0, result.output
    assert "skipping onnx: ONNX export needs tf2onnx and onnxruntime" in result.stderr
    assert "install them with: pip install 'tlkit[onnx]'" in result.stderr
    manifest = json.loads((killed["run"] / "export" / "manifest.json").read_text())
    assert {e["format"] for e in manifest if e["version"] == 2} == {"savedmodel", "tflite"}
    assert (killed["run"] / "export" / "model" / "2" / "saved_model.pb").is_file()
