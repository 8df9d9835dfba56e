"""Which files a folder offers as images, for every command alike: hidden and system entries are never data,
and symbolic links are followed safely (each real folder once, each real file once, dangling links listed)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

SYSTEM_NAMES = {"thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx", "@eadir", "$recycle.bin"}

# Reasons for paths that repeat something already listed (not problems with a file: nothing is lost)
LOOP = "symbolic link loop"
SECOND_PATH = "second path to a folder already listed"
SAME_FILE = "same file as"


def is_hidden(name: str) -> bool:
    """Hidden and system entries that are never data: dotfiles (``.DS_Store``, ``._x.jpg``), Thumbs.db, ..."""
    return name.startswith(".") or name.lower() in SYSTEM_NAMES


def repeated(reason: str) -> bool:
    """Whether a skip reason says the path repeats a folder or file already listed (a loop, a second link)."""
    return reason.startswith((LOOP, SECOND_PATH, SAME_FILE))


def visible_dirs(folder: Path) -> list[Path]:
    """The visible sub-folders of ``folder`` (links to folders included), sorted by name."""
    return sorted(d for d in Path(folder).iterdir() if not is_hidden(d.name) and d.is_dir())


class Walker:
    """Lists visible files below folders, following symbolic links: a real folder is entered once (a link
    loop, or a second link to a folder already listed, is skipped), a real file is listed once (a second
    path to it is skipped), and every skipped path is kept in ``skipped`` with its reason."""

    def __init__(self):
        self.skipped: list[tuple[Path, str]] = []
        self._dirs: dict[tuple[int, int], Path] = {}
        self._files: dict[tuple[int, int], Path] = {}

    def entries(self, folder: Path) -> tuple[list[Path], list[Path]]:
        """The visible sub-folders and regular files directly in ``folder``, in name order (links followed;
        files are not checked against earlier ones here); entries that are neither are skipped with the reason."""
        dirs, files = self._scan(folder)
        return dirs, [path for path, _ in files]

    def _scan(self, folder: Path) -> tuple[list[Path], list[tuple[Path, os.stat_result]]]:
        try:
            names = sorted(entry.name for entry in os.scandir(folder))
        except OSError as error:
            self.skipped.append((Path(folder), f"cannot read folder: {error.strerror or error}"))
            return [], []
        dirs, files = [], []
        for name in names:
            if is_hidden(name):
                continue
            path = Path(folder) / name
            info = self._stat(path)
            if info is None:
                continue
            if stat.S_ISDIR(info.st_mode):
                dirs.append(path)
            elif stat.S_ISREG(info.st_mode):
                files.append((path, info))
            else:
                self.skipped.append((path, "not a regular file"))
        return dirs, files

    def claim(self, folder: Path) -> bool:
        """Whether ``folder`` is a real folder not listed yet under another path (it is recorded as listed);
        a loop or a repeat is skipped with the reason."""
        folder = Path(folder)
        info = self._stat(folder)
        if info is None:
            return False
        key = (info.st_dev, info.st_ino)
        first = self._dirs.setdefault(key, folder)
        if first == folder:
            return True
        why = LOOP if folder.is_relative_to(first) else SECOND_PATH
        self.skipped.append((folder, f"{why} ({first})"))
        return False

    def files(self, folder: Path) -> list[Path]:
        """Every visible file below ``folder`` not listed before, depth first in name order (in each folder,
        files before links: a file and a link to it beside it list the file)."""
        found = []
        stack = [Path(folder)] if self.claim(folder) else []
        while stack:
            dirs, files = self._scan(stack.pop())
            for path, info in sorted(files, key=lambda pair: pair[0].is_symlink()):  # a file before links to it
                first = self._files.setdefault((info.st_dev, info.st_ino), path)
                if first == path:
                    found.append(path)
                else:
                    self.skipped.append((path, f"{SAME_FILE} {first}"))
            stack += reversed([d for d in dirs if self.claim(d)])
        return found

    def _stat(self, path: Path) -> os.stat_result | None:
        """``path``'s status through links, or None with the reason recorded (dangling link, unreadable)."""
        try:
            return path.stat()
        except FileNotFoundError:
            reason = "dangling symbolic link (its target does not exist)" if path.is_symlink() else "file vanished"
            self.skipped.append((path, reason))
        except OSError as error:
            self.skipped.append((path, f"cannot read: {error.strerror or error}"))
        return None


def files_in(inputs: list[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files named and visible files found in folders named, each real file once; missing inputs and every
    path skipped while walking are returned with the reason."""
    walker, files = Walker(), []
    missing = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += walker.files(item)
        elif item.is_file():
            files.append(item)
        else:
            reason = "dangling symbolic link (its target does not exist)" if item.is_symlink() else "file not found"
            missing.append((item, reason))
    return files, missing + walker.skipped
