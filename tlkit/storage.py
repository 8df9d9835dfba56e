"""Files that are never seen half-written: atomic text writes, folders published by rename, and the array
store behind both caches (decoded images and features), safe for processes that fill the same entry at once."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from tlkit.errors import TlkitError

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: every entry holds 0.npy, 1.npy, ... and is published by one rename
META = "meta.json"


# === Atomic files and folders ===

def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, then rename it over ``path``: readers see the old or the new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, value) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, default=str) + "\n")


@contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A fresh temporary folder beside ``target``, private to this process; removed if not published."""
    target = Path(target)
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as error:
        raise TlkitError(f"cannot write in {target.parent}: {error.strerror or error}; choose a writable folder "
                         "(--out for a run, --cache-dir or TLKIT_CACHE_DIR for the caches)") from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, target: Path, replace: bool) -> bool:
    """Rename the filled ``tmp`` to ``target``. With ``replace`` an existing ``target`` goes first; without
    it an existing ``target`` (another process published first) wins and False is returned."""
    if replace and target.exists():
        shutil.rmtree(target)
    try:
        os.rename(tmp, target)
        return True
    except OSError:
        if replace or not target.is_dir():
            raise
        return False


@contextmanager
def atomic_dir(target: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a private temporary folder; once the block ends without error it becomes ``target``."""
    with staging_dir(target) as tmp:
        yield tmp
        if not publish(tmp, Path(target), replace):
            raise TlkitError(f"{target} was created by another process meanwhile; nothing of this one was kept "
                             "(run again, or pick another name)")


# === The cache folder ===

def default_cache_dir() -> Path:
    root = os.environ.get("TLKIT_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tlkit"
    return Path(root).expanduser() / "features"


def memory_budget(fraction: float = 0.5) -> int:
    """Bytes of RAM the caches may hold: a fraction of the memory available now."""
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return int(available * fraction)


def free_disk(path: Path) -> int:
    """Free bytes on the disk that holds ``path`` (or would hold it: its nearest existing folder)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def cache_key(parts: dict) -> str:
    """A short, stable name for what an entry depends on."""
    return hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True,
                                     default=str).encode()).hexdigest()[:24]


@dataclass
class Entry:
    """A cache entry as loaded: its arrays (in RAM or memory-mapped), its metadata, and what happened."""

    arrays: list[np.ndarray]
    meta: dict
    event: dict


class ArrayStore:
    """``.npy`` arrays under ``root/[kind/]KEY``, computed once and published whole by one rename, so processes
    that need the same entry at once each compute it privately and all end up reading one complete copy.
    Loaded into RAM while the budget (shared by every entry of this store) allows, memory-mapped beyond it."""

    def __init__(self, root: Path | None = None, budget_bytes: int | None = None):
        self.root = Path(root) if root else default_cache_dir()
        self.budget = memory_budget() if budget_bytes is None else budget_bytes
        self.used = 0

    def reserve(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more fit the RAM budget; if they do, they count against it from now on."""
        if self.used + nbytes > self.budget:
            return False
        self.used += nbytes
        return True

    def load_or_compute(self, parts: dict, what: str, compute: Callable[[Path], dict], kind: str = "") -> Entry:
        """The entry for ``parts``; if absent, ``compute(folder)`` writes ``0.npy``, ``1.npy``, ... into a
        private folder and returns its metadata (JSON-ready), and the folder is published."""
        key = cache_key(parts)
        folder = self.root / kind / key if kind else self.root / key
        event = {"event": "reused"}
        if (folder / META).is_file():
            with contextlib.suppress(OSError):  # a read-only cache is still reused
                (folder / META).touch()  # last used now, for `tlkit cache clear --older-than`
        else:
            started = time.perf_counter()
            with staging_dir(folder) as tmp:
                meta = {"what": what, **compute(tmp)}
                (tmp / META).write_text(json.dumps(meta))
                if not publish(tmp, folder, replace=False):
                    log.info("%s: another process stored the same entry first; using it", what)
            event = {"event": "computed", "seconds": round(time.perf_counter() - started, 2)}
        meta = json.loads((folder / META).read_text())
        paths = sorted(folder.glob("*.npy"), key=lambda p: int(p.stem))
        arrays = [np.load(path, mmap_mode="r") for path in paths]
        size = sum(a.nbytes for a in arrays)
        where = "disk (memory-mapped)"
        if self.reserve(size):
            arrays = [np.load(path) for path in paths]  # read whole: copying a memory map faults page by page
            where = "RAM"
        event.update(key=key, bytes=size, where=where, folder=str(folder))
        return Entry(arrays, meta, event)


def cache_entries(root: Path | None = None) -> list[dict]:
    """Every entry under a cache folder (features and decoded images), least recently used first; a folder
    left by a computation that never finished is listed as ``incomplete``."""
    root = Path(root) if root else default_cache_dir()
    entries = []
    for folder in [*root.glob("*"), *root.glob("images/*")]:
        if not folder.is_dir() or folder.name == "images":
            continue
        meta = folder / META
        complete = meta.is_file() and not folder.name.startswith(".tmp-")
        kind = "decoded images" if folder.parent.name == "images" else "features"
        what = json.loads(meta.read_text()).get("what", kind) if complete else f"{kind} (incomplete)"
        files = [f for f in folder.rglob("*") if f.is_file()]
        used = (meta if complete else folder).stat().st_mtime
        entries.append({"folder": str(folder), "what": what, "bytes": sum(f.stat().st_size for f in files),
                        "last_used": used})
    return sorted(entries, key=lambda e: e["last_used"])


def clear_cache(root: Path | None = None, older_than_days: float | None = None) -> list[dict]:
    """Delete cache entries (all, or those not used for ``older_than_days``); returns what was deleted."""
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    removed = [e for e in cache_entries(root) if cutoff is None or e["last_used"] < cutoff]
    for entry in removed:
        shutil.rmtree(entry["folder"], ignore_errors=True)
    return removed
