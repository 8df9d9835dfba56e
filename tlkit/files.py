"""Which files a folder offers as images, for every command alike: hidden and system entries are never data,
and symbolic links are followed safely (each real folder once, each real file once, dangling links listed)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

SYSTEM_NAMES = {"thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx", "@eadir", "$recycle.bin"}


def is_hidden(name: str) -> bool:
    """Hidden and system entries that are never data: dotfiles (``.DS_Store``, ``._x.jpg``), Thumbs.db, ..."""
    return name.startswith(".") or name.lower() in SYSTEM_NAMES


def visible_dirs(folder: Path) -> list[Path]:
    """The visible sub-folders of ``folder`` (links to folders included), sorted by name."""
    return sorted(d for d in Path(folder).iterdir() if not is_hidden(d.name) and d.is_dir())


def loose_files(folder: Path) -> list[Path]:
    """The visible files directly in ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if not is_hidden(p.name) and p.is_file())


class Walker:
    """Lists visible files below folders, following symbolic links: a real folder is entered once (a link
    loop, or a second link to a folder already listed, is skipped), a real file is listed once (a second
    path to it is skipped), and every skipped path is kept in ``skipped`` with its reason."""

    def __init__(self):
        self.skipped: list[tuple[Path, str]] = []
        self._dirs: dict[tuple[int, int], Path] = {}
        self._files: dict[tuple[int, int], Path] = {}

    def files(self, folder: Path) -> list[Path]:
        """Every visible file below ``folder``, depth first in name order."""
        found = []
        folder = Path(folder)
        if not self._enter(folder, folder.stat()):
            return found
        stack = [folder]
        while stack:
            directory = stack.pop()
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError as error:
                self.skipped.append((directory, f"cannot read folder: {error.strerror or error}"))
                continue
            subfolders = []
            for entry in entries:
                if is_hidden(entry.name):
                    continue
                path = Path(entry.path)
                try:
                    info = path.stat()  # follows links
                except FileNotFoundError:
                    self.skipped.append((path, "dangling symbolic link (its target does not exist)"))
                    continue
                except OSError as error:
                    self.skipped.append((path, f"cannot read: {error.strerror or error}"))
                    continue
                if stat.S_ISDIR(info.st_mode):
                    if self._enter(path, info):
                        subfolders.append(path)
                elif not stat.S_ISREG(info.st_mode):
                    self.skipped.append((path, "not a regular file"))
                elif (info.st_dev, info.st_ino) in self._files:
                    self.skipped.append((path, f"same file as {self._files[(info.st_dev, info.st_ino)]}"))
                else:
                    self._files[(info.st_dev, info.st_ino)] = path
                    found.append(path)
            stack += reversed(subfolders)
        return found

    def _enter(self, path: Path, info: os.stat_result) -> bool:
        """Whether ``path`` is a real folder not listed yet (recorded as listed); a repeat is skipped."""
        key = (info.st_dev, info.st_ino)
        if key in self._dirs:
            first = self._dirs[key]
            why = "symbolic link loop" if path.is_relative_to(first) else "second path to a folder already listed"
            self.skipped.append((path, f"{why} ({first})"))
            return False
        self._dirs[key] = path
        return True


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
            missing.append((item, "file not found"))
    return files, missing + walker.skipped
