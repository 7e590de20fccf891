"""Atomic writers: all or nothing, and ordinary file permissions."""
import os

import numpy as np
import pytest

from ldm.io import atomic_path, atomic_save_npy, atomic_write_json, atomic_write_text, staged_folder


def test_failed_write_leaves_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "index.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"a": 2, "trunc')
            raise RuntimeError("interrupted")
    assert target.read_text() == '{\n "a": 1\n}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]


def test_written_file_has_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_save_npy(tmp_path / "x.npy", np.arange(3))
    finally:
        os.umask(old)
    assert (tmp_path / "x.npy").stat().st_mode & 0o777 == 0o644
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.arange(3))


class _SyncRecorder:
    """Wraps os.fsync and os.replace: which inodes were fsynced (and how big they were then),
    and which inodes were renamed, in order."""

    def __init__(self, monkeypatch):
        self.events: list[tuple] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd):
            st = os.fstat(fd)
            self.events.append(("fsync", st.st_ino, st.st_size))
            return real_fsync(fd)

        def replace(src, dst):
            self.events.append(("replace", os.stat(src).st_ino, str(dst)))
            return real_replace(src, dst)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def synced_before_replace(self, inode: int) -> tuple[bool, int]:
        """(fsynced before the rename of ``inode``, size when fsynced)."""
        rename = next(i for i, e in enumerate(self.events) if e[0] == "replace" and e[1] == inode)
        sizes = [e[2] for e in self.events[:rename] if e[0] == "fsync" and e[1] == inode]
        return bool(sizes), (sizes[-1] if sizes else -1)

    def synced_after_last_replace(self, inode: int) -> bool:
        last = max(i for i, e in enumerate(self.events) if e[0] == "replace")
        return any(e[0] == "fsync" and e[1] == inode for e in self.events[last + 1:])


def _write_nifti(path):
    import nibabel as nib

    from ldm.io import atomic_save_nifti

    atomic_save_nifti(nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4)), path)


@pytest.mark.parametrize("name, write", [
    ("t.txt", lambda p: atomic_write_text(p, "hello")),
    ("j.json", lambda p: atomic_write_json(p, {"a": [1, 2]})),
    ("a.npy", lambda p: atomic_save_npy(p, np.arange(10))),
    ("v.nii.gz", _write_nifti),
    ("v.nii", _write_nifti),
])
def test_every_writer_fsyncs_the_data_before_the_rename_and_the_folder_after(tmp_path, monkeypatch, name, write):
    # A power cut between a rename and the data reaching the disk leaves an empty file under the
    # final name: the data must be fsynced (at full size) before os.replace, the folder after.
    recorder = _SyncRecorder(monkeypatch)
    target = tmp_path / "out" / name
    write(target)
    inode = target.stat().st_ino
    synced, size = recorder.synced_before_replace(inode)
    assert synced, f"{name}: not fsynced before os.replace"
    assert size == target.stat().st_size
    assert recorder.synced_after_last_replace(target.parent.stat().st_ino)


def test_staged_folder_fsyncs_everything_written_into_it_before_the_rename(tmp_path, monkeypatch):
    final = tmp_path / "P001"
    final.mkdir()
    (final / "old.txt").write_text("previous run")
    recorder = _SyncRecorder(monkeypatch)
    with staged_folder(final) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "a.txt").write_text("plain write, not an atomic writer")
        np.save(tmp / "sub" / "b.npy", np.arange(5))
    assert sorted(p.relative_to(final).as_posix() for p in final.rglob("*")) == ["a.txt", "sub", "sub/b.npy"]
    rename = next(i for i, e in enumerate(recorder.events) if e[0] == "replace" and e[1] == final.stat().st_ino)
    before = {e[1]: e[2] for e in recorder.events[:rename] if e[0] == "fsync"}
    for file in (final / "a.txt", final / "sub" / "b.npy"):
        assert before.get(file.stat().st_ino) == file.stat().st_size, file.name
    assert (final / "sub").stat().st_ino in before and final.stat().st_ino in before
    assert recorder.synced_after_last_replace(tmp_path.stat().st_ino)


def test_an_fsync_error_leaves_the_previous_file(tmp_path, monkeypatch):
    import errno

    target = tmp_path / "index.json"
    atomic_write_json(target, {"a": 1})

    def failing_fsync(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="I/O error"):
        atomic_write_json(target, {"a": 2})
    assert target.read_text() == '{\n "a": 1\n}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]
