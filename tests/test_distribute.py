"""Distribution, precision and resume: two worker processes, two logical CPU devices, mixed precision,
and runs killed with SIGKILL in each stage that resume to the same result."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tlkit.cli import cli

# small and short: two passes per head epoch (min_steps), where the default would make 3000 steps
QUICK = ["--image-size", "64", "--set", "stage1.epochs=6", "--set", "stage2.epochs=4", "--set", "stage1.min_steps=120"]


def tlkit(args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "tlkit.cli", *map(str, args)], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(process, timeout=600):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out, err


def final_weights(run_dir: Path):
    from tlkit.runfolder import RunFolder
    return [w.numpy() for w in RunFolder(run_dir).load_model().weights]


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_worker_processes_train_the_same_model(shapes, weights_dir, tmp_path):
    run_dir = tmp_path / "run"
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    workers = [tlkit(["run", "quickstart", "--out", run_dir, "--weights-dir", weights_dir, *QUICK],
                     env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
                          "TLKIT_CACHE_DIR": str(tmp_path / f"cache{i}")}) for i in range(2)]
    for worker in workers:
        finish(worker)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["placement"]["strategy"] == "multiworker" and info["placement"]["replicas"] == 2
    chief, other = final_weights(run_dir), final_weights(run_dir / "worker-1")
    assert len(chief) == len(other)
    for a, b in zip(chief, other):
        np.testing.assert_array_equal(a, b)
    assert (run_dir / "export" / "model" / "1" / "saved_model.pb").is_file()
    assert not (run_dir / "worker-1" / "export").exists()
    assert json.loads((run_dir / "metrics.json").read_text())["val"]["accuracy"] > 0.6


def cli_after(prelude: str) -> str:
    """``python -c`` source that runs the tlkit CLI on its arguments after ``prelude``."""
    return f"import sys\n{prelude}\nfrom tlkit.cli import main\nsys.argv = ['tlkit'] + sys.argv[1:]\nmain()\n"


MIRRORED = cli_after("""import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)""")


def test_mirrored_strategy_over_two_logical_cpus(shapes, weights_dir, tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", MIRRORED, "run", "quickstart", "--out", str(run_dir),
                                "--weights-dir", str(weights_dir), "--strategy", "mirrored", *QUICK,
                                "--export", "none"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finish(process)
    info = json.loads((run_dir / "run.json").read_text())
    placement = info["placement"]
    assert (placement["strategy"], placement["replicas"], placement["precision"]) == ("mirrored", 2, "float32")
    assert placement["global_batch_size"] == 2 * 16
    assert json.loads((run_dir / "metrics.json").read_text())["val"]["accuracy"] > 0.6


def _wait_for(run_dir: Path, condition, process, timeout=300):
    pointer = run_dir / "checkpoint" / "latest"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the run ended before it could be interrupted: {process.stderr.read()[-700:]}")
        try:
            state = json.loads((run_dir / "checkpoint" / pointer.read_text().strip() / "state.json").read_text())
            if condition(state):
                return state
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise AssertionError("condition never met")


def test_killed_in_each_stage_resumes_to_the_uninterrupted_result(flowers_small, weights_dir, tmp_path):
    args = ["run", "quickstart", "--data", flowers_small, "--weights-dir", weights_dir, *QUICK,
            "--checkpoint-every", "0", "--set", "stage1.patience=null", "--set", "stage2.patience=null",
            "--export", "none"]
    reference = tmp_path / "reference"
    finish(tlkit([*args, "--out", reference]))

    run_dir = tmp_path / "killed"
    process = tlkit([*args, "--out", run_dir])
    state = _wait_for(run_dir, lambda s: s["stage"] == 0 and s["global_epoch"] >= 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert state["stage"] == 0

    process = tlkit([*args, "--out", run_dir])  # rerunning with the same --out resumes
    state = _wait_for(run_dir, lambda s: s["stage"] == 1 and s["stage_epoch"] >= 1 and not s["stage_done"], process)
    process.send_signal(signal.SIGKILL)
    process.wait()

    lost = tlkit(["run", "--resume", run_dir])  # where the ImageNet file is not found, it says so
    assert lost.wait(timeout=300) == 2 and "resume with the --weights-dir" in lost.stderr.read()
    _, err = finish(tlkit(["run", "--resume", run_dir, "--weights-dir", weights_dir]))
    assert "resuming at stage 2" in err
    expected = json.loads((reference / "metrics.json").read_text())["val"]["accuracy"]
    resumed = json.loads((run_dir / "metrics.json").read_text())["val"]["accuracy"]
    assert abs(resumed - expected) <= 0.02, (resumed, expected)  # dropout masks differ after a resume
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 6 + 4  # every epoch once, none repeated or lost
    events = [e["event"] for e in json.loads((run_dir / "run.json").read_text())["interruptions"]]
    assert events == ["stopped without finishing (killed or crashed)", "resumed"] * 2
    leftovers = [p for p in run_dir.rglob("*") if p.name.startswith((".tmp", ".latest"))]
    assert not leftovers and not (run_dir / "checkpoint").exists()
    final_weights(run_dir)  # loads: nothing corrupt


# Ctrl-C as a terminal's foreground job gets it: a shell's background job (as some CI runners start the suite)
# inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler
FOREGROUND = cli_after("import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)")


def test_checkpoints_come_at_stage_ends_and_after_the_interval_with_the_latest_kept_weights(tmp_path, monkeypatch):
    from tlkit.training import checkpoint
    from tlkit.training.state import TrainState

    clock = [100.0]
    monkeypatch.setattr(checkpoint.time, "monotonic", lambda: clock[0])
    assert checkpoint.Checkpoints(tmp_path / "every", every=0).due(stage_done=False)
    saver, state = checkpoint.Checkpoints(tmp_path / "run", every=10), TrainState()
    assert saver.due(stage_done=True)  # a stage's end always
    saver.save(state, [np.zeros(3)], [], [np.zeros(3)])
    clock[0] += 4
    assert not saver.due(stage_done=False)  # 4 s after the last: skipped
    clock[0] += 6
    state.global_epoch = 2
    assert saver.due(stage_done=False)  # 10 s after the last
    saver.save(state, [np.ones(3)], [], [np.ones(3)])
    saved = saver.load()
    assert saved["state"]["global_epoch"] == 2
    np.testing.assert_array_equal(saved["best"][0], np.ones(3))  # the best of the skipped epoch, not the old file


def test_ctrl_c_saves_and_prints_the_resume_command(flowers_small, weights_dir, tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", FOREGROUND, "run", "quickstart", "--data", str(flowers_small),
                                "--weights-dir", str(weights_dir), "--out", str(run_dir), "--image-size", "64",
                                "--set", "stage1.epochs=200", "--set", "stage1.patience=null", "--export", "none",
                                "--checkpoint-every", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(run_dir, lambda s: s["global_epoch"] >= 1, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert f"resume with: tlkit run --resume {run_dir}" in err.strip().splitlines()[-1]
    assert json.loads((run_dir / "interruptions.json").read_text())[0]["event"] == "interrupted (Ctrl-C)"


def test_mixed_bfloat16_trains_and_exports_like_float32(shapes, weights_dir, tmp_path):
    import tensorflow as tf
    signatures = {}
    for precision in ("float32", "mixed_bfloat16"):
        result = CliRunner().invoke(cli, ["run", "quickstart", "--out", str(tmp_path / precision), "--weights-dir",
                                          str(weights_dir), "--precision", precision, *QUICK])
        assert result.exit_code == 0, result.output
        info = json.loads((tmp_path / precision / "run.json").read_text())
        assert info["placement"]["precision"] == precision
        loaded = tf.saved_model.load(str(tmp_path / precision / "export" / "model" / "1"))
        signatures[precision] = {name: (sig.structured_input_signature, {k: (v.dtype, v.shape.as_list())
                                                                         for k, v in sig.structured_outputs.items()})
                                 for name, sig in loaded.signatures.items()}
        assert json.loads((tmp_path / precision / "metrics.json").read_text())["val"]["accuracy"] > 0.6
    import keras
    keras.mixed_precision.set_global_policy("float32")
    assert signatures["float32"] == signatures["mixed_bfloat16"]


def test_gpu_strategy_is_a_clear_error_without_a_gpu():
    result = CliRunner().invoke(cli, ["run", "quickstart", "--strategy", "gpu", "--out", "/tmp/never"])
    assert result.exit_code == 2 and "sees no GPU" in result.output


class _FakeGPU:
    def __init__(self, name):
        self.name, self.device_type = name, "GPU"


@pytest.fixture
def fake_gpus(monkeypatch):
    """Pretend TensorFlow sees GPUs: detection, memory growth and the strategy constructors are recorded."""
    import tensorflow as tf

    import tlkit.training.distribute as distribute
    calls = {"growth": [], "strategies": []}

    def install(count, capability=(8, 0)):
        gpus = [_FakeGPU(f"/physical_device:GPU:{i}") for i in range(count)]
        monkeypatch.setattr(distribute, "_gpus", lambda: gpus)
        monkeypatch.setattr(tf.config.experimental, "set_memory_growth", lambda d, on: calls["growth"].append(d.name))
        monkeypatch.setattr(tf.config.experimental, "get_device_details",
                            lambda d: {"compute_capability": capability})
        monkeypatch.setattr(tf.config, "list_logical_devices",
                            lambda kind=None: [_FakeGPU(f"/device:GPU:{i}") for i in range(count)]
                            if kind == "GPU" else [])
        for name in ("MirroredStrategy", "OneDeviceStrategy", "MultiWorkerMirroredStrategy"):
            monkeypatch.setattr(tf.distribute, name,
                                lambda *a, _name=name: calls["strategies"].append((_name, a)) or _name)
        return calls
    return install


def test_one_gpu_gets_memory_growth_and_its_own_strategy(fake_gpus):
    from tlkit.training.distribute import choose_precision, choose_strategy
    calls = fake_gpus(1)
    assert choose_strategy("auto") == ("OneDeviceStrategy", "gpu")
    assert calls["strategies"] == [("OneDeviceStrategy", ("/gpu:0",))]
    assert calls["growth"] == ["/physical_device:GPU:0"]
    assert choose_precision("auto") == "mixed_float16"


def test_several_gpus_are_mirrored(fake_gpus):
    from tlkit.training.distribute import choose_strategy
    calls = fake_gpus(4)
    assert choose_strategy("auto") == ("MirroredStrategy", "mirrored")
    assert calls["strategies"] == [("MirroredStrategy", ([f"/device:GPU:{i}" for i in range(4)],))]
    assert len(calls["growth"]) == 4


def test_tf_config_means_multiworker_even_with_gpus(fake_gpus, monkeypatch):
    from tlkit.training.distribute import choose_strategy
    fake_gpus(2)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert choose_strategy("auto") == ("MultiWorkerMirroredStrategy", "multiworker")


def test_old_gpus_and_cpus_train_in_float32(fake_gpus):
    from tlkit.training.distribute import choose_precision
    fake_gpus(1, capability=(6, 1))
    assert choose_precision("auto") == "float32"


def test_mixed_float16_scales_the_loss(shapes, weights_dir, tmp_path):
    """The GPU precision path (loss scaling) runs on the CPU too, slowly but correctly."""
    result = CliRunner().invoke(cli, ["run", "quickstart", "--out", str(tmp_path / "run"), "--weights-dir",
                                      str(weights_dir), "--precision", "mixed_float16", "--image-size", "48",
                                      "--epochs", "2,1", "--export", "none"])
    import keras
    keras.mixed_precision.set_global_policy("float32")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["val"]["accuracy"] > 0.5


def test_multiworker_without_a_cluster_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    result = CliRunner().invoke(cli, ["run", "quickstart", "--strategy", "multiworker", "--out", "/tmp/never"])
    assert result.exit_code == 2 and "needs TF_CONFIG" in result.output
