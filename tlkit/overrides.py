"""``--set KEY=VALUE`` overrides: every dotted key a recipe accepts, and a recipe with values applied, validated.

>>> from tlkit import load_recipe
>>> override(load_recipe("quickstart"), ["head.dropout=0.5", "stages.1.epochs=4"]).stages[1].epochs
4
"""
from __future__ import annotations

import json

from pydantic import BaseModel, ValidationError

from tlkit.errors import TlkitError
from tlkit.recipe import Recipe, validation_message


def valid_keys(recipe: Recipe) -> list[str]:
    """Every dotted key that ``--set`` accepts for this recipe."""
    def walk(value, prefix):
        if isinstance(value, BaseModel):
            for name in type(value).model_fields:
                yield from walk(getattr(value, name), f"{prefix}{name}.")
        elif isinstance(value, tuple) and value and isinstance(value[0], BaseModel):
            for i, item in enumerate(value):
                yield from walk(item, f"{prefix}{i}.")
        else:
            yield prefix[:-1]
    return list(walk(recipe, ""))


def override(recipe: Recipe, assignments: list[str]) -> Recipe:
    """Apply ``key=value`` overrides (dotted keys, e.g. ``stages.1.learning_rate=1e-5``), validated."""
    tree = json.loads(recipe.model_dump_json())
    keys = valid_keys(recipe)
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        key = key.strip()
        if not sep:
            raise TlkitError(f"--set expects key=value; received: {assignment!r}")
        if key not in keys:
            raise TlkitError(f"unknown recipe key {key!r}; valid keys: {', '.join(keys)}")
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[leaf] = _parse_value(raw, node.get(leaf))
    try:
        return Recipe.model_validate(tree)
    except ValidationError as error:
        raise TlkitError(f"--set {', '.join(assignments)}: {validation_message(error)}") from None


def _parse_value(raw: str, current):
    """A command-line string as the value a recipe field holds (JSON where it parses, lists by commas)."""
    text = raw.strip()
    if text.lower() in ("none", "null"):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    if isinstance(current, list) and not isinstance(value, list):
        value = [] if text == "" else [part.strip() for part in str(text).split(",")]
    return value
