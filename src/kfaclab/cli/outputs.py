"""Output paths, checked before any work starts, and a result write that never loses the result.

A sweep or a training run may take hours; finding out at the end that ``--out`` names a folder,
a read-only place or a name the file system refuses would lose all of it. So every command checks
its output paths first, with a real probe (a file created and removed where the output will go:
permission bits say nothing to root, nor about read-only mounts), and refuses with one line that
names the flag, the rule and the path.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kfaclab import atomic
from kfaclab.errors import UsageError


def _describe(path: Path) -> str:
    """What is at ``path``, for messages: 'an existing folder', 'a character device', ..."""
    mode = path.lstat().st_mode
    for test, text in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "an existing folder"),
        (stat.S_ISREG, "an existing file"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return text
    return "not a regular file"


def _check_names(path: Path, flag: str) -> None:
    """Every component within the file system's name limit (else ENAMETOOLONG, mid-run)."""
    anchor = _existing_ancestor(path)
    try:
        limit = os.pathconf(anchor, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    total = len(os.fsencode(str(path.absolute())))
    if total >= 4096:  # PATH_MAX on Linux, with room for the temporary files' suffixes
        raise UsageError(f"{flag} must be a path under 4096 bytes, got one of {total} bytes")
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise UsageError(
                f"{flag} must use names of at most {limit} bytes, got one of "
                f"{len(os.fsencode(part))} bytes ({part[:40]}…)"
            )


def _exists(path: Path) -> bool:
    """Like Path.exists, but False (not OSError) for a name too long or a loop of links."""
    try:
        path.lstat()
    except OSError:
        return False
    return True


def _existing_ancestor(path: Path) -> Path:
    current = path.absolute()
    while not _exists(current) and current != current.parent:
        current = current.parent
    return current


def _inside_git(path: Path) -> bool:
    return ".git" in path.absolute().resolve().parts


def _make_dir(folder: Path, flag: str, shown: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(
            f"{flag} must be a folder, got {str(shown)!r} (a file is in the way)"
        ) from None
    except OSError as exc:
        raise UsageError(f"{flag}: cannot create {str(folder)!r} ({_reason(exc)})") from None


def _probe(folder: Path, flag: str, shown: Path) -> None:
    """Create and remove a file in ``folder``: the only honest test that writing will work."""
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".kfaclab-probe-")
    except OSError as exc:
        raise UsageError(f"{flag} must be writable, got {str(shown)!r} ({_reason(exc)})") from None
    os.close(fd)
    os.unlink(name)


def _reason(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, "") or type(exc).__name__


def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """An output folder: existing or creatable, writable, not inside a .git folder. Creates it."""
    if str(path) == "":  # Path("") is "."; an empty --out is a slip, not the working folder
        raise UsageError(f"{flag} must name a path, got ''")
    folder = Path(path)
    _check_names(folder, flag)
    if folder.is_symlink() and not folder.exists():
        raise UsageError(f"{flag} must be a folder, got {str(path)!r} (a dangling symbolic link)")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} must be a folder, got {str(path)!r} ({_describe(folder)})")
    if _inside_git(folder):
        raise UsageError(f"{flag} must not be inside a .git folder, got {str(path)!r}")
    _make_dir(folder, flag, folder)
    _probe(folder, flag, folder)
    return folder


def check_out_file(path: str | Path, flag: str = "--out", *, overwrite: bool = True) -> Path:
    """An output file: a new path (its folder is created) or, if ``overwrite``, an existing
    regular file; never a folder, a device or a symbolic link; its folder writable."""
    if str(path) == "":
        raise UsageError(f"{flag} must name a path, got ''")
    out = Path(path)
    _check_names(out, flag)
    if out.is_symlink() or (out.exists() and not out.is_file()):
        raise UsageError(f"{flag} must be a regular file, got {str(path)!r} ({_describe(out)})")
    if out.exists() and not overwrite:
        raise UsageError(f"{flag} must not exist yet, got {str(path)!r} (an existing file)")
    owned = study_owned(out)
    if owned is not None:
        raise UsageError(
            f"{flag} must not be a file a study owns, got {str(path)!r} ({owned}); "
            "choose another file name"
        )
    if _inside_git(out.parent):
        raise UsageError(f"{flag} must not be inside a .git folder, got {str(path)!r}")
    _make_dir(out.parent, flag, out)
    _probe(out.parent, flag, out)
    return out


# Names of the files and folders a study keeps in its folder (study/storage/journal.py,
# study/artifacts.py, base.cell_lock); any command's output there would destroy the study.
_STUDY_NAMES = ("studies.journal", "studies.journal.lock")
_STUDY_FOLDERS = ("artifacts", ".locks")


def study_owned(out: Path) -> str | None:
    """What study file ``out`` is, if any (None: not one), whatever command writes it: a
    sweep's journal or lock by name, a record or lock inside a sweep folder's artifacts/ or
    .locks/, and, by content, any Optuna journal or SQLite database (a storage named otherwise)."""
    if out.name in _STUDY_NAMES:
        return "a sweep's journal or its lock"
    absolute = out.absolute()
    for folder in absolute.parents:
        if folder.name in _STUDY_FOLDERS and (folder.parent / "studies.journal").exists():
            return f"inside the {folder.name}/ folder of the sweep in {folder.parent}"
    try:
        with out.open("rb") as handle:
            head = handle.read(200)
    except OSError:
        return None
    if head.startswith(b"SQLite format 3\x00"):
        return "a SQLite database, perhaps a study storage"
    if head.startswith(b'{"op_code":') or head.startswith(b'{"op_code": '):
        return "an Optuna journal"
    return None


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a fresh temporary file beside ``path`` and rename it over ``path``
    (kfaclab.atomic): readers see the old file or the new one, never half of one, and a symbolic
    link planted at ``path`` or at a temporary name is replaced or avoided, never followed."""
    atomic.write_text(path, text)


def fallback_path(stem: str) -> Path:
    """Where a result goes when its --out cannot take it: the temp folder, a unique name."""
    name = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
    return Path(tempfile.gettempdir()) / name


def save_result(data: dict[str, Any], out: Path, stem: str = "kfaclab-result") -> Path:
    """Write ``data`` as JSON to ``out``; if that fails (disk full, folder removed meanwhile),
    to ``fallback_path``, then raise a one-line ``UsageError`` that says where it went. The
    result of a finished run is never lost to an output problem found at the very end."""
    text = json.dumps(data) + "\n"
    try:
        if out.exists() and not out.is_file():  # a device or pipe: write into it, never replace it
            with out.open("w", encoding="utf-8") as f:
                f.write(text)
        else:
            write_atomic(out, text)
        return out
    except atomic.OutputError as exc:
        problem = exc.reason
    except OSError as exc:
        problem = _reason(exc)
    for spot in (fallback_path(stem), Path.cwd() / fallback_path(stem).name):
        try:
            write_atomic(spot, text)
        except (OSError, atomic.OutputError):
            continue
        raise UsageError(f"--out: cannot write {str(out)!r} ({problem}); result saved to {spot}")
    sys.stdout.write(text)  # the last resort: nowhere on disk takes it, the terminal does
    raise UsageError(f"--out: cannot write {str(out)!r} ({problem}); result printed above")
