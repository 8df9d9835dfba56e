"""Shared fixtures: the real assets in ../shared (weights, flowers5), isolated caches, small subsets."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TLKIT_SHARED", REPO.parent / "shared"))


def pytest_configure(config):
    if not (SHARED / "weights").is_dir() or not (SHARED / "data" / "flowers5").is_dir():
        raise pytest.UsageError(f"tests need the shared assets at {SHARED} (weights/, data/flowers5/); "
                                "set TLKIT_SHARED to their folder")


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's Keras cache, tlkit feature cache or weights folder."""
    home = tmp_path_factory.mktemp("keras_home")
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setenv("TLKIT_CACHE_DIR", str(tmp_path_factory.mktemp("tlkit_cache")))
    monkeypatch.delenv("TLKIT_WEIGHTS_DIR", raising=False)


@pytest.fixture(scope="session")
def shared():
    return SHARED


@pytest.fixture(scope="session")
def weights_dir():
    return SHARED / "weights"


def stratified_subset(root: Path, dest: Path, per_class: int) -> Path:
    """The first `per_class` files (sorted) of each class of `root`, linked into `dest`."""
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        (dest / class_dir.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(class_dir.iterdir())[:per_class]:
            (dest / class_dir.name / f.name).symlink_to(f)
    return dest


@pytest.fixture(scope="session")
def flowers_small(tmp_path_factory):
    """40 real flower photos per class (200 in all)."""
    return stratified_subset(SHARED / "data" / "flowers5", tmp_path_factory.mktemp("flowers40"), 40)


@pytest.fixture(scope="session")
def shapes():
    return REPO / "data" / "shapes"
