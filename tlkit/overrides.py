"""``--set KEY=VALUE`` overrides: every dotted key a recipe accepts, and a recipe with values applied, validated.

>>> from tlkit import load_recipe
>>> override(load_recipe("quickstart"), ["head.dropout=0.5", "stage2.epochs=4"]).stages[1].epochs
4

Stages are counted from 1, as in the console, history.csv and ``lr-find --stage``: ``stage2.epochs`` is the
second stage's. The old form ``stages.N.KEY`` counted from 0; it is refused with the key to write instead, so an
old command never silently changes meaning.
"""
from __future__ import annotations

import json
import re

from pydantic import BaseModel, ValidationError

from tlkit.errors import TlkitError
from tlkit.recipe import Recipe, dotted_key, field_path, validation_message

_OLD_STAGE_KEY = re.compile(r"^stages\.(\d+)\.(.+)$")


def valid_keys(recipe: Recipe) -> list[str]:
    """Every dotted key that ``--set`` accepts for this recipe."""
    def walk(value, path):
        if isinstance(value, BaseModel):
            for name in type(value).model_fields:
                yield from walk(getattr(value, name), [*path, name])
        elif isinstance(value, tuple) and value and isinstance(value[0], BaseModel):
            for i, item in enumerate(value):
                yield from walk(item, [*path, i])
        else:
            yield dotted_key(path)
    return list(walk(recipe, []))


def override(recipe: Recipe, assignments: list[str]) -> Recipe:
    """Apply ``key=value`` overrides (dotted keys, e.g. ``stage2.learning_rate=1e-5``), validated."""
    tree = json.loads(recipe.model_dump_json())
    keys = valid_keys(recipe)
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        key = key.strip()
        if not sep:
            raise TlkitError(f"--set expects key=value; received: {assignment!r}")
        old = _OLD_STAGE_KEY.match(key)
        if old:
            index, rest = int(old.group(1)), old.group(2)
            raise TlkitError(f"--set {assignment}: stages are counted from 1 now, as in the console, history.csv and "
                             f"lr-find --stage; the old stages.{index} (from 0) is the stage you mean, so write "
                             f"stage{index + 1}.{rest}={raw}")
        if key not in keys:
            raise TlkitError(f"unknown recipe key {key!r}; valid keys: {', '.join(keys)}")
        *parents, leaf = field_path(key)
        node = tree
        for part in parents:
            node = node[part]
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


def differences(saved: Recipe, new: Recipe, limit: int = 8) -> list[str]:
    """``key: saved value -> new value`` for every recipe field that differs (keys as ``--set`` spells them)."""
    def flat(value, path):
        if isinstance(value, dict):
            for name, item in value.items():
                yield from flat(item, [*path, name])
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for i, item in enumerate(value):
                yield from flat(item, [*path, i])
        else:
            yield dotted_key(path), value

    before, after = (dict(flat(json.loads(r.model_dump_json()), [])) for r in (saved, new))
    changed = [f"{key}: {before.get(key, '(none)')} -> {after.get(key, '(none)')}"
               for key in dict.fromkeys([*before, *after]) if before.get(key, "(none)") != after.get(key, "(none)")]
    return changed[:limit] + ([f"and {len(changed) - limit} more"] if len(changed) > limit else [])
