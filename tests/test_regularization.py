"""The head's L2 strength cross-validated on pooled features: folds, the rule that picks, the choice on data whose
answer is known, and when a run cross-validates."""
import numpy as np
import pytest

from tlkit import load_recipe, override
from tlkit.session import prepare
from tlkit.training.distribute import place
from tlkit.training.regularization import MAX_STEPS, STRENGTHS, choose_l2, pick, stratified_folds

OPTIONS = {"dropout": 0.2, "steps": 600, "batch_size": 32, "learning_rate": 1e-3, "seed": 0}


def _blobs(images_per_class, classes, channels=64, separation=0.0, seed=0):
    """Gaussian features; class k's mean is ``separation`` along channel k (0: the labels are noise)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), images_per_class)
    features = rng.normal(size=(len(labels), channels)).astype(np.float32)
    features[np.arange(len(labels)), labels] += separation
    return features, labels


def test_folds_deal_every_class_evenly():
    labels = np.repeat([0, 1, 2], [7, 12, 5])
    fold = stratified_folds(labels, 5, seed=3)
    counts = np.array([np.bincount(fold[labels == k], minlength=5) for k in range(3)])
    assert (counts.max(axis=1) - counts.min(axis=1) <= 1).all()
    assert counts.sum(axis=1).tolist() == [7, 12, 5]


def test_the_highest_held_out_accuracy_wins_and_the_lowest_loss_breaks_ties():
    assert pick(np.array([0.8, 0.9, 0.9, 0.7]), np.array([0.1, 0.5, 0.4, 0.2])) == 2
    assert pick(np.array([0.9, 0.8]), np.array([0.9, 0.1])) == 0


def test_the_held_out_figures_favour_a_strong_penalty_on_noise_and_a_weaker_one_on_a_clear_signal():
    noise = choose_l2(*_blobs(30, 2), 2, sigmoid=False, **OPTIONS)
    losses = np.array(list(noise.heldout_loss.values()))
    assert np.argmin(losses) == 0 and losses[0] < np.log(2) + 0.1  # nearly a flat head
    assert losses[-1] > losses[0] + 0.3  # a weak penalty fits the noise

    signal = choose_l2(*_blobs(30, 3, separation=12.0), 3, sigmoid=False, **{**OPTIONS, "steps": 5000})
    accuracy, loss = (np.array(list(figures.values())) for figures in (signal.heldout_accuracy, signal.heldout_loss))
    assert signal.c == STRENGTHS[pick(accuracy, loss)] > STRENGTHS[0] and signal.heldout_accuracy[signal.c] == 1.0
    assert loss.min() < 0.1 < loss[0]  # the strongest penalty keeps the head from confident answers
    assert (signal.folds, signal.images, signal.steps) == (5, 90, MAX_STEPS)  # steps capped
    record = signal.record(72)
    assert record["l2"] == pytest.approx(1 / (2 * signal.c * 72)) and len(record["heldout_loss"]) == len(STRENGTHS)


def test_one_sigmoid_output_cross_validates_like_two_softmax_outputs():
    features, labels = _blobs(25, 2, separation=1.0, seed=1)
    softmax = choose_l2(features, labels, 2, sigmoid=False, **OPTIONS)
    sigmoid = choose_l2(features, labels, 2, sigmoid=True, **OPTIONS)
    for c in STRENGTHS:
        assert sigmoid.heldout_accuracy[c] == pytest.approx(softmax.heldout_accuracy[c], abs=0.1)
        assert sigmoid.heldout_loss[c] == pytest.approx(softmax.heldout_loss[c], rel=0.2)


def test_class_weights_and_too_few_images():
    features, labels = _blobs(10, 2, separation=1.0)
    labels[:8] = 1  # 2 images of class 0, 18 of class 1: two folds
    weighted = choose_l2(features, labels, 2, sigmoid=False, class_weight=np.array([9.0, 1.0]), **OPTIONS)
    plain = choose_l2(features, labels, 2, sigmoid=False, **OPTIONS)
    assert weighted.folds == 2 and weighted.heldout_loss != plain.heldout_loss
    labels[:9] = 1  # one image of class 0: none can be held out
    assert choose_l2(features, labels, 2, sigmoid=False, **OPTIONS) is None


def test_a_run_cross_validates_a_linear_head_on_average_pooled_features_when_it_trains_first(weights_dir, tmp_path,
                                                                                             monkeypatch):
    recipe = override(load_recipe("quickstart"), ["weights=imagenet", "image_size=64", "stage1.epochs=2",
                                                  "stage1.min_steps=100"])
    session = prepare(recipe, weights_dir=str(weights_dir), cache_dir=tmp_path, placement=place("cpu", "float32"))

    def choice(*sets):
        trainer = session.trainer(override(session.recipe, list(sets)))
        trainer.prepare_features()
        return trainer.l2(), {k: v for k, v in trainer.l2_choice.items() if k != "seconds"}

    train_images = len(session.data.splits["train"])
    l2, chosen = choice()
    assert chosen["rule"].startswith("5-fold cross-validation") and chosen["images"] == train_images
    assert max(chosen["heldout_accuracy"].values()) > 0.8  # the shapes are easy on ImageNet features
    assert l2 == chosen["l2"] == pytest.approx(1 / (2 * chosen["c"] * train_images))
    assert choice("cache=false") == (l2, chosen)  # the same pooled features, read from the images
    assert choice("head.l2=0.003") == (0.003, {"rule": "head.l2=0.003", "l2": 0.003})
    for sets, why in [(["head.hidden=8"], "the head has hidden layers"),
                      (["head.pooling=max"], "the head pools with max"),
                      (["stage1.epochs=0"], "the first stage to train is not a head stage"),
                      (["stage1.optimizer=sgd"], "the head stage's optimizer is sgd")]:
        l2, chosen = choice(*sets)
        assert l2 == chosen["l2"] == 1 / (2 * train_images) and chosen["c"] == 1.0, sets
        assert chosen["why"].startswith(f"not cross-validated: {why}"), sets
    monkeypatch.setattr("tlkit.training.trainer.MAX_WEIGHTS", 1000)
    assert choice()[1]["why"] == ("not cross-validated: its copies of the head (3 classes x 1280 channels) would "
                                  "hold 134,400 weights, over 1,000")
