"""One writer per output folder: a lock that a second run is refused by, and that a killed run leaves
behind harmlessly (docs/data.md, "Output-folder lock").

``OUT/.lock`` is held with ``flock`` (the kernel drops it when its process dies, however it dies) and
names its holder: pid, host, what it does and since when. A second run into ``OUT`` is refused with
one line naming the folder and that holder; a lock file whose process is gone (a killed run) is
taken over, and the caller is told whose it was. Released, the file is removed: a finished folder
holds no lock file, and a folder the lock created is removed again when nothing was written into it.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = ".lock"


class FolderBusy(RuntimeError):
    """Another live run is writing the folder (one line naming the folder and the holder)."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a folder's lock."""

    pid: int
    host: str
    purpose: str
    since: str

    def describe(self) -> str:
        return f"{self.purpose} (pid {self.pid} on {self.host}, since {self.since})"

    def alive(self) -> bool | None:
        """Whether the process still runs (None: on another host, cannot tell)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # it exists, under another user
            return True
        return True


def _read_holder(fd: int) -> Holder | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode(errors="replace")
    try:
        data = json.loads(text)
        return Holder(int(data["pid"]), str(data["host"]), str(data.get("purpose", "a run")),
                      str(data.get("since", "?")))
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class TakenOver:
    """The lock a killed run left, now ours (None in ``previous`` when the file said nothing)."""

    previous: Holder | None

    def describe(self, folder: Path) -> str:
        if self.previous is None:
            return f"took over the lock of {str(folder)!r} left by a run killed before it wrote its name"
        gone = ", no longer running" if self.previous.alive() is False else ""
        return f"took over the lock of {str(folder)!r} left by {self.previous.describe()}{gone} (a killed run)"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, purpose: str) -> Iterator[TakenOver | None]:
    """Hold ``folder``'s lock while the block runs (the folder is created when missing, and removed
    again on release when it is still empty).

    Yields None, or :class:`TakenOver` when a killed run's lock was taken over (say so). Raises
    :class:`FolderBusy` when a live run holds it.
    """
    folder = Path(folder)
    created = not folder.exists()
    path = folder / LOCK_FILE
    for _ in range(10):  # retried only when the file was replaced between open and lock
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = "another run" if holder is None else holder.describe()
            if holder is not None and holder.alive() is False:  # forked workers inherit the lock
                who += " whose process is gone but a child of it still runs"
            raise FolderBusy(f"output folder {str(folder)!r} is being written by {who}: wait for it to finish "
                             f"or choose another folder") from None
        try:  # the file we locked must still be the one at the path (a releasing run removes it)
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        raise FolderBusy(f"output folder {str(folder)!r}: its lock file keeps changing; is another run starting?")
    try:
        previous = _read_holder(fd) if os.fstat(fd).st_size else None
        taken = TakenOver(previous) if os.fstat(fd).st_size else None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        os.fsync(fd)
        yield taken
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while still locked: a run waiting on this file sees it gone and retries
        if created:  # a run refused before it wrote anything leaves no folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        os.close(fd)
