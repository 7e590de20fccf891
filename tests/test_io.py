"""Atomic writers: all or nothing, and ordinary file permissions."""
import os

import numpy as np
import pytest

from ldm.io import atomic_path, atomic_save_npy, atomic_write_json


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
