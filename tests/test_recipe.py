"""Recipes: bundled ones load, overrides are typed and validated, errors are one line with the choices."""
import pytest
from click.testing import CliRunner

from tlkit import FeatureExtraction, FineTune, Recipe, TlkitError, load_recipe, override
from tlkit.cli import cli
from tlkit.overrides import valid_keys
from tlkit.recipe import bundled_recipes

BUNDLED = {"quickstart", "vgg16_features", "resnet50_finetune", "mobilenet", "mobilenet_v2", "efficientnetv2_b0",
           "convnext_tiny"}


def test_bundled_recipes_cover_the_required_bases():
    recipes = bundled_recipes()
    assert BUNDLED <= set(recipes)
    assert {r.base for r in recipes.values()} >= {"vgg16", "resnet50", "mobilenet", "mobilenet_v2"}
    for recipe in recipes.values():
        assert [type(s) for s in recipe.stages[:2]] == [FeatureExtraction, FineTune]
    vgg = recipes["vgg16_features"]
    assert (vgg.head.pooling, vgg.head.hidden, vgg.head.activation) == ("flatten", (128,), "softmax")


def test_cli_lists_every_bundled_recipe_with_its_description():
    result = CliRunner().invoke(cli, ["recipes"])
    assert result.exit_code == 0
    lines = dict(line.split(None, 1) for line in result.output.strip().splitlines())
    assert set(lines) == set(bundled_recipes())
    assert lines["quickstart"].strip() == load_recipe("quickstart").description


def test_override_parses_types_and_nested_keys():
    recipe = override(load_recipe("quickstart"), [
        "head.dropout=0.5", "stage2.learning_rate=3e-5", "head.hidden=64,32", "cache=false",
        "augment.flip=vertical", "stage2.unfreeze_blocks=2"])
    assert recipe.head.dropout == 0.5
    assert recipe.stages[1].learning_rate == 3e-5
    assert recipe.head.hidden == (64, 32)
    assert recipe.cache is False
    assert recipe.augment.flip == "vertical"
    assert recipe.stages[0].learning_rate == load_recipe("quickstart").stages[0].learning_rate


def test_unknown_key_lists_valid_keys():
    with pytest.raises(TlkitError) as error:
        override(load_recipe("quickstart"), ["head.dropot=0.3"])
    message = str(error.value)
    assert "unknown recipe key 'head.dropot'" in message and "head.dropout" in message
    assert "\n" not in message


def test_bad_value_names_the_valid_choices():
    with pytest.raises(TlkitError) as error:
        override(load_recipe("quickstart"), ["head.pooling=mean"])
    assert "'avg', 'max' or 'flatten'" in str(error.value)
    with pytest.raises(TlkitError, match=r"unknown base 'alexnet'; valid choices: convnext_base, .*, mobilenet, "
                                         r"mobilenet_v2, .*, resnet50, .*, vgg19, xception, or keras_hub:PRESET"):
        override(load_recipe("quickstart"), ["base=alexnet"])
    with pytest.raises(TlkitError, match="alpha in"):
        override(load_recipe("quickstart"), ["alpha=0.3"])
    with pytest.raises(TlkitError, match="greater than 0"):
        override(load_recipe("quickstart"), ["stage1.learning_rate=-1"])


def test_fine_tune_needs_exactly_one_unfreeze_rule():
    with pytest.raises(ValueError, match="exactly one of"):
        FineTune(epochs=1)
    with pytest.raises(ValueError, match="exactly one of"):
        FineTune(epochs=1, unfreeze_blocks=2, unfreeze_fraction=0.5)


def test_recipe_round_trips_through_json():
    recipe = load_recipe("vgg16_features")
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert "stage2.unfreeze_from" in valid_keys(recipe)


def test_recipe_from_a_file_path(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("from tlkit import Recipe, FeatureExtraction\n"
                    "recipe = Recipe(description='mine', base='mobilenet', alpha=0.25, image_size=64,\n"
                    "                stages=(FeatureExtraction(epochs=1),))\n")
    assert load_recipe(str(path)).description == "mine"
    with pytest.raises(TlkitError, match="unknown recipe 'nope'; bundled recipes: .*quickstart"):
        load_recipe("nope")


def test_cli_errors_are_one_line_without_traceback():
    result = CliRunner().invoke(cli, ["run", "quickstart", "--set", "head.pooling=mean"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert result.output.startswith("tlkit: error: --set head.pooling=mean")
    result = CliRunner().invoke(cli, ["run", "quickstart", "--epochs", "1,2,3"])
    assert result.exit_code == 2 and "one per stage" in result.output
