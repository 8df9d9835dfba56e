"""Progress bars and log lines: the only way the library talks to a person."""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager

from tqdm.auto import tqdm


def progress(iterable=None, **kwargs):
    """A tqdm bar on stderr, hidden when stderr is not a terminal unless TLKIT_PROGRESS=1."""
    disable = not (sys.stderr.isatty() or os.environ.get("TLKIT_PROGRESS") == "1")
    return tqdm(iterable, file=sys.stderr, disable=disable, dynamic_ncols=True, **kwargs)


def setup_logging(verbose: bool = False) -> None:
    """Plain `tlkit: message` lines on stderr for the CLI; TensorFlow's own chatter only with --verbose."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="tlkit: %(message)s",
                        stream=sys.stderr, force=True)
    logging.captureWarnings(True)  # Python warnings from TensorFlow/Keras become log records
    if not verbose:
        for name in ("tensorflow", "absl", "py.warnings"):
            logging.getLogger(name).setLevel(logging.ERROR)


def ensure_logging() -> None:
    """Progress for the Python API as the CLI shows it (`tlkit: message` lines on stderr, INFO and up), unless
    the program has set up logging itself."""
    library = logging.getLogger("tlkit")
    if logging.getLogger().handlers or library.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("tlkit: %(message)s"))
    library.addHandler(handler)
    library.setLevel(logging.INFO)


@contextmanager
def quiet_native_stderr():
    """Hide what C++ libraries write straight to file descriptor 2 (TensorFlow's start-up log lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def start_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow and initialise its devices, without its start-up noise unless verbose."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "2")  # read when TensorFlow loads
    if verbose:
        import tensorflow as tf
        tf.config.list_physical_devices()
        return
    with quiet_native_stderr():
        import tensorflow as tf
        tf.config.list_physical_devices()
