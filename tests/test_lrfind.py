"""lr-find: the rule on a known curve, then real sweeps on real photos with real ImageNet weights."""
import csv
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tlkit import load_recipe, override
from tlkit.cli import cli
from tlkit.lrfind import running_average, smooth, suggest, sweep
from tlkit.training.datasets import as_dataset
from tlkit.session import prepare


def test_rule_takes_a_tenth_of_the_minimum_of_a_lag_free_smoothing():
    rates = 1e-6 * 1e6 ** (np.arange(120) / 119)
    clean = (np.log10(rates) + 2) ** 2 / 4 + 1  # lowest at 1e-2
    noisy = clean + np.random.default_rng(0).normal(0, 0.3, len(rates))
    def decades_off(rate):
        return abs(np.log10(rate / 1e-3))
    assert decades_off(suggest(rates, smooth(clean))) < 0.11  # two steps of the grid
    assert decades_off(suggest(rates, smooth(noisy))) < 0.25
    # a one-sided running average lags: its minimum sits at a higher rate
    assert rates[np.argmin(running_average(clean))] > 1.5 * rates[np.argmin(smooth(clean))]
    assert suggest(rates, smooth(rates)) == rates[0]  # loss only rises: the lowest rate swept


def _cli(*args):
    return CliRunner().invoke(cli, ["lr-find", "quickstart", *args], catch_exceptions=False)


def test_lr_find_on_real_photos_suggests_a_swept_rate_and_plots_it(flowers_small, weights_dir, tmp_path):
    out = tmp_path / "lr"
    result = _cli("--data", str(flowers_small), "--weights", "imagenet", "--weights-dir", str(weights_dir),
                  "--image-size", "64", "--start", "1e-6", "--end", "1", "--steps", "60", "--out", str(out))
    assert result.exit_code == 0, result.output
    print(result.output)
    match = re.search(r"suggested learning rate (\S+) \(rule: minimum of the smoothed loss / 10\)", result.output)
    suggested = float(match.group(1))
    info = json.loads((out / "lr_find.json").read_text())
    assert info["stage"] == "1:feature_extraction" and info["mode"] == "cached"
    with open(out / "lr_find.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rates = [float(r["learning_rate"]) for r in rows]
    assert 20 <= len(rows) <= 60 and rates[0] == pytest.approx(1e-6) and rates == sorted(rates)
    assert rates[0] < suggested < rates[-1]
    assert info["suggestion"] == pytest.approx(suggested, rel=1e-2)
    smoothed = [float(r["smoothed_loss"]) for r in rows]
    lowest = int(np.argmin(smoothed))
    assert smoothed[lowest] < 0.8 * smoothed[0]  # a real valley: training the head lowered the loss
    assert suggested == pytest.approx(rates[lowest] / 10, rel=1e-2)
    assert 1e-4 < suggested < 3e-2  # neither the timid nor the diverging end of the sweep
    with Image.open(out / "lr_find.png") as image:
        assert image.format == "PNG" and image.size == (800, 500)
        assert len(image.convert("RGB").getcolors(1 << 16)) > 50  # a drawn chart, not a blank canvas


def test_fine_tune_sweep_without_cache_trains_earlier_stages_and_restores_the_model(flowers_small, weights_dir):
    recipe = override(load_recipe("quickstart"), ["weights=imagenet", "image_size=64", "cache=false",
                                                  "stage1.epochs=1", "stage1.min_steps=0"])
    session = prepare(recipe, flowers_small, weights_dir=str(weights_dir), cache_memory=0.0)
    classifier = session.classifier
    base_before = [w.copy() for w in classifier.base.get_weights()]
    head_before = [w.copy() for w in classifier.head.get_weights()]
    result = sweep(session, stage_number=2, start=1e-5, end=10.0, steps=20)
    assert (result.stage, result.mode) == ("2:fine_tune", "full forward")
    assert result.feature_seconds == 0 and result.pretrain_seconds > 0
    assert 1e-5 <= result.suggestion <= result.learning_rates[-1] and len(result.losses) <= 20
    # stage 1 trained the head; the sweep then trained the top blocks at up to 10, and put them back
    assert not all(np.array_equal(a, b) for a, b in zip(head_before, classifier.head.get_weights()))
    assert all(np.array_equal(a, b) for a, b in zip(base_before, classifier.base.get_weights()))
    assert max(result.losses) > 2 * min(result.losses)


def test_bad_sweep_options_are_one_line_errors(flowers_small):
    for args, message in [(["--stage", "3"], "the recipe has 2 stage(s)"),
                          (["--start", "1", "--end", "0.1"], "needs 0 < --start < --end"),
                          (["--steps", "5"], "at least 10")]:
        result = CliRunner().invoke(cli, ["lr-find", "quickstart", "--data", str(flowers_small),
                                          "--weights", "none", "--set", "random_init=as_recipe", *args])
        assert result.exit_code == 2 and message in result.output, result.output
        assert result.output.count("\n") == 1


def test_sweep_trains_the_loss_run_trains_class_weights_included(shapes):
    """lr-find steps through the run's own training step: weighting a class changes the swept loss exactly as
    it changes the loss `tlkit run` minimises (the weighted mean over the batch)."""
    sets = ["weights=none", "random_init=as_recipe", "image_size=32", "augment.flip=none", "head.dropout=0"]
    plain = prepare(override(load_recipe("quickstart"), sets), shapes, cache_memory=0.0)
    weighted = prepare(override(load_recipe("quickstart"), [*sets, 'data.class_weight={"circle": 9}']), shapes,
                       cache_memory=0.0)
    first = [sweep(session, start=1e-9, end=1e-8, steps=10).losses[0] for session in (plain, weighted)]

    trainer = plain.trainer()
    trainer.prepare_features()
    plan = trainer.plans[0]
    setup = trainer.setup(plan)
    x, y = next(iter(as_dataset(trainer.train_batches(plan, 0))))  # the sweep's first batch
    per_example = setup.loop.per_example_loss(y, setup.model(x)).numpy()
    assert first[0] == pytest.approx(per_example.mean(), rel=1e-4)
    assert first[1] == pytest.approx((np.where(y.numpy() == 0, 9.0, 1.0) * per_example).mean(), rel=1e-4)
