"""The code's own contracts, checked on every run: imports flow one way through the layers declared in
setup.cfg (import-linter), the tree is ruff-clean, and the quickstart works from a built wheel."""
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; install the test extra: pip install -e '.[test]'")
    return path


def test_imports_follow_the_layers():
    result = subprocess.run([_tool("lint-imports"), "--config", str(REPO / "setup.cfg")], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_ruff_is_clean():
    result = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_quickstart_runs_from_an_installed_wheel(tmp_path):
    """A plain install (no source checkout) carries the recipes and the quickstart's sample images."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(REPO)], check=True, capture_output=True)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # the dependencies (TensorFlow, ...) come from the running environment, tlkit only from the wheel
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site) / "deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                    *map(str, wheels.glob("tlkit-*.whl"))], check=True, capture_output=True)
    script = ("import tlkit, json; from tlkit import load_recipe; r = load_recipe('quickstart');"
              "print(json.dumps([tlkit.__file__, r.data.path]))")
    where = subprocess.run([str(python), "-c", script], cwd=tmp_path, check=True, capture_output=True, text=True)
    module, data = __import__("json").loads(where.stdout)
    assert Path(module).is_relative_to(site) and Path(data).is_relative_to(site)
    assert sorted(p.name for p in Path(data).iterdir()) == ["circle", "square", "triangle"]
    out = tmp_path / "run"
    run = subprocess.run([str(env_dir / "bin" / "tlkit"), "run", "quickstart", "--weights", "none", "--set",
                          "random_init=as_recipe", "--epochs", "1", "--image-size", "32", "--out", str(out)],
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (out / "export" / "model" / "1" / "saved_model.pb").is_file()
