"""Bundled recipes: each module defines `recipe = tlkit.Recipe(...)`; `tlkit recipes` lists them."""
