"""Progress bars and log lines: the only way the library talks to a person."""
from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm


def progress(iterable=None, **kwargs):
    """A tqdm bar on stderr, hidden when stderr is not a terminal unless TLKIT_PROGRESS=1."""
    import os
    disable = not (sys.stderr.isatty() or os.environ.get("TLKIT_PROGRESS") == "1")
    return tqdm(iterable, file=sys.stderr, disable=disable, dynamic_ncols=True, **kwargs)


def setup_logging(verbose: bool = False) -> None:
    """Plain `tlkit: message` lines on stderr for the CLI: tlkit's own from INFO, other libraries' from WARNING
    (DEBUG for all with --verbose)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="tlkit: %(message)s",
                        stream=sys.stderr, force=True)
    logging.getLogger("tlkit").setLevel(logging.DEBUG if verbose else logging.INFO)
