"""Atomic file output: a reader never sees a half-written file.

Every writer goes to a temporary file in the destination's folder and renames it into place
(``os.replace`` is atomic on POSIX within one file system). On an exception the temporary file
is removed and the destination is left as it was.

The rename alone is atomic for readers but not across a power cut: the file system may commit the
rename before the data, leaving an empty or truncated file under the final name. So the data are
fsynced before the rename, and the folder after it (so that the rename itself is on disk). An
fsync costs about half a millisecond per file here.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    ``suffix`` is kept on the temporary name (writers such as nibabel choose the format from it);
    by default the full suffix of ``path`` (e.g. ``.nii.gz``) is used.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        # mkstemp creates 0600; give the file the mode an ordinary open() would (0666 & ~umask)
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


# File systems that cannot fsync (some network and FUSE mounts) say so with these; any other error
# (EIO: the data did not reach the disk) is raised, so that the rename does not happen.
_FSYNC_UNSUPPORTED = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)


def _fsync_file(path: Path) -> None:
    """Flush ``path``'s data to disk, so that a rename after it never exposes an empty file."""
    # Windows' fsync (_commit) needs a handle open for writing; POSIX fsyncs a read-only one.
    fd = os.open(path, os.O_RDONLY if os.name == "posix" else os.O_RDWR)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename into it) to disk, where the platform can: best effort."""
    if os.name != "posix":  # os.open cannot open a folder on Windows
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (files first, then folders bottom-up)."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            file = Path(folder) / name
            if file.is_file() and not file.is_symlink():
                _fsync_file(file)
        _fsync_dir(Path(folder))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent))


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array, allow_pickle=False)


def atomic_save_nifti(image: Any, path: str | os.PathLike) -> None:
    """Write a nibabel image atomically (the temporary name keeps ``.nii``/``.nii.gz``)."""
    import nibabel as nib

    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))


TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def staged_folder(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden folder beside ``final``; on success it replaces ``final`` (a folder) whole.

    Same file system, so the rename is atomic: a reader sees the old folder or the complete new
    one, never a half-written one; on an exception the staging folder is removed and ``final`` is
    left as it was. Everything in the folder is fsynced before the rename (whatever wrote it) and
    the parent after it, as for single files. ``os.mkdir`` honours the umask, unlike
    ``tempfile.mkdtemp``'s private 0700.
    """
    import shutil
    import uuid

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.exists():
            old = final.with_name(f"{TMP_PREFIX}old-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
            _fsync_dir(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_staging(folder: str | os.PathLike) -> None:
    """Remove staging folders that a killed run left in ``folder``."""
    import shutil

    for stale in Path(folder).glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
