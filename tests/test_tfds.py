"""`--data tfds:NAME[:SPLIT]`: a mocked TFDS dataset through `tlkit run`, a small dataset really prepared by
TFDS (its own splits, ids, pixels), and the one-line errors when a dataset cannot be had offline."""
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from click.testing import CliRunner

from tlkit import Data, TlkitError
from tlkit import sources
from tlkit.cli import cli
from tlkit.data import load_data
from tlkit.runfolder import RunFolder

FLOWERS = ["dandelion", "daisy", "tulips", "sunflowers", "roses"]  # tf_flowers' own label order


class TinyColours(tfds.core.GeneratorBasedBuilder):
    """A three-class image dataset with train and test splits, prepared locally (nothing to download)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=["zebra", "apple", "mango"])}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(30, 0), "test": self._generate_examples(9, 100)}

    def _generate_examples(self, n, offset):
        for i in range(n):
            yield i, {"image": np.full((10 + i % 5, 12, 3), offset + i * 3, np.uint8), "label": i % 3}


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tfds")
    builder = tfds.builder("tiny_colours", data_dir=str(folder))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return folder


@pytest.fixture
def online(monkeypatch):
    """Downloads look possible (mock_data makes them a no-op): the path a machine with internet takes."""
    monkeypatch.setattr(sources, "_online", lambda: True)


def test_mocked_tfds_trains_through_run_cli(tmp_path, weights_dir, online):
    out = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=40):
        result = CliRunner().invoke(cli, ["run", "quickstart", "--data", "tfds:tf_flowers:train", "--out", str(out),
                                          "--epochs", "1,0", "--image-size", "32", "--weights-dir", str(weights_dir),
                                          "--set", "refit=false"])  # the saved model's val figures are metrics.json's
    assert result.exit_code == 0, result.output
    folder = RunFolder(out)
    assert json.loads(folder.classes_file.read_text()) == FLOWERS
    rows = RunFolder.read_csv(folder.split_file)
    assert sorted(r["path"] for r in rows) == sorted(f"tfds:tf_flowers/train/{i}" for i in range(40))
    assert {r["split"] for r in rows} == {"train", "val"} and {r["label"] for r in rows} <= set(FLOWERS)
    info = json.loads(folder.run_file.read_text())["data"]
    assert info["kind"] == "tfds" and info["files"] == info["used"] == 40 and info["skipped"] == 0
    assert (out / "export" / "model" / "1" / "assets" / "labels.txt").read_text().split() == FLOWERS

    with tfds.testing.mock_data(num_examples=40):  # evaluation re-reads the val examples from the dataset
        evaluated = CliRunner().invoke(cli, ["evaluate", str(out), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    metrics = json.loads(folder.metrics_file.read_text())["val"]
    assert report["images"] == metrics["images"] and report["accuracy"] == pytest.approx(metrics["accuracy"])


def test_prepared_tfds_dataset_keeps_its_splits_ids_and_pixels(tfds_dir, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
    data = load_data("tfds:tiny_colours", 16, Data(val_fraction=0.3))
    assert data.kind == "tfds" and data.class_names == ["zebra", "apple", "mango"]
    assert data.counts()["test"] == 9 and data.counts()["train"] + data.counts()["val"] == 30
    assert data.root == tfds_dir / "tiny_colours" / "1.0.0"

    builder = tfds.builder("tiny_colours", data_dir=str(tfds_dir))
    for name, source in (("train", "train"), ("val", "train"), ("test", "test")):
        examples = list(tfds.as_numpy(builder.as_dataset(split=source, shuffle_files=False)))
        split = data.splits[name]
        for path, label, pixels in zip(split.paths, split.labels, split.images):
            prefix, _, index = path.rpartition("/")
            assert prefix == f"tfds:tiny_colours/{source}"
            example = examples[int(index)]
            assert label == example["label"] and (pixels == example["image"][0, 0]).all()
    fingerprint = data.fingerprint()
    assert fingerprint["root"] == str(tfds_dir / "tiny_colours" / "1.0.0")
    assert fingerprint["files"]["test"] == [f"tfds:tiny_colours/test/{i}" for i in range(9)]

    only_test = load_data("tfds:tiny_colours:test", 16, Data(val_fraction=0.3))
    assert sum(only_test.counts().values()) == 9 and set(only_test.counts()) == {"train", "val"}


def test_inspect_tfds_shows_its_splits(tfds_dir, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
    result = CliRunner().invoke(cli, ["data", "inspect", "tfds:tiny_colours", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(c["name"], c["images"], c["splits"], c["formats"]) for c in report["classes"]] == [
        (name, 13, {"train": 10, "test": 3}, {"PNG": 13}) for name in ("zebra", "apple", "mango")]
    assert report["files"] == report["used"] == 39 and report["imbalance_ratio"] == 1.0


def test_offline_unprepared_dataset_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(sources.socket, "getaddrinfo", _no_network)
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    result = CliRunner().invoke(cli, ["data", "inspect", "tfds:tf_flowers"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"tlkit: error: tfds:tf_flowers is not prepared in data_dir {tmp_path}/tf_flowers/3.0.1 and cannot be "
        "downloaded (offline); prepare it on a machine with internet (`tfds build tf_flowers --data_dir DIR`), "
        "copy DIR here and set TFDS_DATA_DIR=DIR"]


def _no_network(*args, **kwargs):
    raise OSError("Name or service not known")


def test_unknown_and_non_image_datasets_are_errors():
    with pytest.raises(TlkitError, match=r"unknown TFDS dataset 'no_such_thing' in --data tfds:no_such_thing"):
        load_data("tfds:no_such_thing", 16)
    with pytest.raises(TlkitError, match=r"tfds:imdb_reviews is not an image-classification dataset .* "
                                         r"Image feature, found 0"):
        load_data("tfds:imdb_reviews", 16)
