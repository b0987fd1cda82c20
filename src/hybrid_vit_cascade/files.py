"""Every file the package writes goes through here: atomic, confined to its folder, readable as umask says.

- `atomic_write(path, write)`: the bytes go to a temp file in the target's folder and are renamed
  over the target, so a crash or a full disk never leaves half a file (the temp file is removed
  on any failure and the old target stays as it was).
- `root=`: the resolved target must lie inside `root` — a name taken from data (a case id, a
  stage name) cannot walk out of its output folder.
- Permissions follow the user's umask (mkstemp/mkdtemp create 0600/0700, which a shared lab
  folder cannot read).
- `safe_component(name, what)`: a name taken from data (manifest, config, DICOM tags) is used as
  a single path component only if it is one; anything else is an error naming the field.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Optional

_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


class UnsafePathError(ValueError):
    """A name from data is not a safe single path component, or a target lies outside its root."""


def _umask() -> int:
    # Linux reports it without changing it; os.umask (set and restore) is the portable fallback,
    # but it briefly sets umask 0 for every thread of the process.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new regular file under the current umask (0644 under umask 022)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """Mode of a new directory under the current umask (0755 under umask 022)."""
    return 0o777 & ~_umask()


def safe_component(name: object, what: str) -> str:
    """`name` if it is one safe path component (letters, digits, . _ -; no leading dot; ≤ 128 chars)."""
    if not isinstance(name, str) or not _SAFE.match(name) or name in (".", ".."):
        raise UnsafePathError(f"{what} {name!r} is not a safe file name (use letters, digits, '.', '_', '-'; "
                              "no '/', no leading '.' or '-', at most 128 characters)")
    return name


def inside(path: str | os.PathLike, root: str | os.PathLike, what: str = "output") -> Path:
    """`path` resolved, if it lies inside `root` (resolved); else UnsafePathError."""
    p, r = Path(path).resolve(), Path(root).resolve()
    if p != r and r not in p.parents:
        raise UnsafePathError(f"{what} {path} lies outside {root}")
    return Path(path)


def make_dirs(path: str | os.PathLike) -> Path:
    """mkdir -p with the umask's mode; a clear error when a parent is a regular file."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(f"cannot create folder {path}: a file of that name is in the way") from None
    except NotADirectoryError:
        raise NotADirectoryError(f"cannot create folder {path}: a parent of it is a regular file") from None
    return path


def check_writable(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create `folder` and prove a file can be written there, so a bad --out fails before any compute."""
    folder = make_dirs(folder)
    try:
        with tempfile.TemporaryFile(dir=folder):  # os.access says yes to root even on a read-only mount
            pass
    except OSError as err:
        raise PermissionError(f"cannot write into {what} {folder}: {err.strerror or err}") from None
    return folder


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any],
                 root: Optional[str | os.PathLike] = None) -> Path:
    """Write `path` through `write(binary file)` into a temp file + rename; `root` confines the target."""
    path = Path(path)
    if root is not None:
        inside(path, root)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the rename must not reach the disk before the data does
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes, root: Optional[str | os.PathLike] = None) -> Path:
    """Atomically write `data` to `path`."""
    return atomic_write(path, lambda f: f.write(data), root)


def write_text_atomic(path: str | os.PathLike, text: str, root: Optional[str | os.PathLike] = None) -> Path:
    """Atomically write UTF-8 `text` to `path`."""
    return write_bytes_atomic(path, text.encode("utf-8"), root)


def write_json_atomic(path: str | os.PathLike, obj: Any, root: Optional[str | os.PathLike] = None,
                      allow_nan: bool = True) -> Path:
    """Atomically write `obj` as indented JSON (with a trailing newline)."""
    return write_text_atomic(path, json.dumps(obj, indent=2, allow_nan=allow_nan) + "\n", root)


def atomic_dir(dst: str | os.PathLike, fill: Callable[[Path], Any], root: Optional[str | os.PathLike] = None) -> Path:
    """Replace the directory `dst` by one that `fill(tmp_dir)` writes, never leaving a half-written `dst`.

    A directory cannot be os.replace'd over a non-empty one: the old `dst` is moved aside to
    `<dst>.old` first and removed after; readers fall back to `.old` if a crash hits between the
    two renames (runtime/checkpoint.resolve_snapshot).
    """
    dst = Path(dst)
    if root is not None:
        inside(dst, root)
    make_dirs(dst.parent)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.tmp-"))
    try:
        fill(tmp)
        fmode, dmode = file_mode(), dir_mode()
        for folder, dirs, names in os.walk(tmp):
            os.chmod(folder, dmode)
            for name in names:
                f = os.path.join(folder, name)
                os.chmod(f, fmode)
                with open(f, "rb") as fh:  # the renames must not reach the disk before the data does
                    os.fsync(fh.fileno())
        old = dst.with_name(dst.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if dst.exists():
            os.replace(dst, old)
        os.replace(tmp, dst)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst
