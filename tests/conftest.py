"""Shared fixtures and the two test tiers.

Tests that use the real assets of the ``shared/`` folder beside the checkout (``../shared``, or ``TLKIT_SHARED``:
ImageNet weights, real photos) are marked ``assets``. Without the folder they are skipped, with one line in
the summary saying how to enable them; with ``TLKIT_REQUIRE_SHARED=1`` (as CI sets) a missing folder is an
error instead. ``pytest -m "not assets"`` runs the tier that needs nothing but the checkout.
"""
import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TLKIT_SHARED", REPO.parent / "shared"))
HAVE_SHARED = (SHARED / "weights").is_dir() and (SHARED / "data" / "flowers5").is_dir()
ASSET_FIXTURES = {"shared", "weights_dir", "flowers_small", "catsdogs"}
MISSING = f"needs the shared assets (weights/, data/) at {SHARED}"


def pytest_configure(config):
    if os.environ.get("TLKIT_REQUIRE_SHARED") == "1" and not HAVE_SHARED:
        raise pytest.UsageError(f"TLKIT_REQUIRE_SHARED=1 but the shared assets (weights/, data/flowers5/) are not "
                                f"at {SHARED}; put them there or set TLKIT_SHARED to their folder")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if ASSET_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.assets)
            if not HAVE_SHARED:
                item.add_marker(pytest.mark.skip(reason=MISSING))


if importlib.util.find_spec("xdist"):  # the test extra installs it; setup.cfg runs two workers
    from xdist.scheduler import LoadScopeScheduling

    # long tests whose module fixtures cost next to nothing (test_bases: six decoded photos): spread test by test
    ONE_BY_ONE = {"tests/test_distribute.py", "tests/test_bases.py"}

    class ModuleScheduling(LoadScopeScheduling):
        """Whole modules go to one worker, so a module's fixtures are built once; the serving package counts as
        one module, its tests sharing one trained and exported run."""

        def _split_scope(self, nodeid):
            module = nodeid.split("::", 1)[0]
            if module in ONE_BY_ONE:
                return nodeid
            return "tests/serving" if module.startswith("tests/serving/") else module

    def pytest_xdist_make_scheduler(config, log):
        return ModuleScheduling(config, log)


def pytest_terminal_summary(terminalreporter):
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if MISSING in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} tests skipped: they need the shared assets at {SHARED} "
                                    "(set TLKIT_SHARED=DIR to run them)", yellow=True)


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
def weights_dir(shared):
    return shared / "weights"


def stratified_subset(root: Path, dest: Path, per_class: int) -> Path:
    """The first `per_class` files (sorted) of each class of `root`, linked into `dest`."""
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        (dest / class_dir.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(class_dir.iterdir())[:per_class]:
            (dest / class_dir.name / f.name).symlink_to(f)
    return dest


@pytest.fixture(scope="session")
def flowers_small(shared, tmp_path_factory):
    """40 real flower photos per class (200 in all)."""
    return stratified_subset(shared / "data" / "flowers5", tmp_path_factory.mktemp("flowers40"), 40)


@pytest.fixture(scope="session")
def catsdogs(shared):
    """Real full-size photos: train/{cats,dogs} 500 each, test/{cats,dogs} 250 each."""
    return shared / "data" / "catsdogs"


@pytest.fixture(scope="session")
def shapes():
    return REPO / "data" / "shapes"
