"""Files and directories private to the server's account: directories 0700, files 0600, whatever the umask."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """`path` as a directory of mode 0700: made (with any missing parents, 0700 too) when missing, made
    private when it exists with a wider mode (an earlier version's 0755). Existing parents are left as
    they are."""
    path = Path(path)
    missing = []
    for directory in (path, *path.parents):
        if directory.exists():
            break
        missing.append(directory)
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by another process
    if path.stat().st_mode & 0o077:
        os.chmod(path, DIR_MODE)
    return path


def open_private(path: Path, mode: str = "wb") -> IO:
    """`open(path, mode)` for writing, the file of mode 0600 (created so, or made so when it existed)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, mode)


def private_tree(directory: Path) -> None:
    """Everything in `directory` private to this account: no group or other permissions (an earlier
    version left 0755 directories and 0644 files). Symlinks and other accounts' files are left alone."""
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
                if not stat.S_ISLNK(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077:
                    os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077)
            except OSError:
                continue  # gone meanwhile, or not ours to change


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, mode 0600 (written aside, then moved into place)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open_private(tmp, "w") as file:
        file.write(text)
    os.replace(tmp, path)
