"""The quickstart as a new user meets it offline: no ImageNet file anywhere and no network. Its own module, so
the suite's second worker is not left waiting behind it (tests/conftest.py schedules whole modules)."""
import json

from test_hostile import finish, tlkit

API = """
import json, sys, tlkit
result = tlkit.run(tlkit.load_recipe("quickstart"), sys.argv[1], export=False)
print(json.dumps({"accuracy": result.metrics["val"]["accuracy"], "random_init": result.random_init}))
"""


def test_the_offline_quickstart_learns_from_scratch_and_says_so(tmp_path):
    """No ImageNet file anywhere and no network: the quickstart (weights=auto) trains the whole network from
    scratch and still learns its shapes; called from Python it logs as the CLI does, and stdout stays clean."""
    run = tmp_path / "quickstart"
    code, out, err = finish(tlkit(run, script=API))
    assert code == 0, err[-3000:]
    answer = json.loads(out)  # the only line on stdout: no download line, no TensorFlow start-up lines
    assert answer["random_init"] == "the whole network from scratch"
    assert answer["accuracy"] >= 0.9, answer
    assert "tlkit: weights=auto fell back to RANDOM INIT" in err and "tlkit: 1:from_scratch epoch 16/16" in err
    assert all(line.startswith(("tlkit:", "Downloading data from")) for line in err.splitlines()), err[-3000:]

    info = json.loads((run / "run.json").read_text())
    assert info["random_init"]["trained"] == "the whole network from scratch"
    assert info["random_init"]["batchnorm"] == "train" and info["random_init"]["stages"][0]["kind"] == "from_scratch"
    recipe = json.loads((run / "recipe.json").read_text())  # what ran, so a rerun resumes or repeats it
    assert recipe["weights"] == "none" and [s["kind"] for s in recipe["stages"]] == ["from_scratch"]
    assert "<p class='banner' id='random-init'>RANDOM INIT, no pretrained weights" in (run / "report.html").read_text()
