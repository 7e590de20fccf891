"""The output-folder lock with real processes (docs/data.md, "Output-folder lock"): a second run into a
folder a live run writes is refused by one line naming the folder and the holder (pid, host), for
preprocessing as for any holder; a lock left by a killed run is taken over; two real preprocessing
runs into one folder leave one complete index, not a mix."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from ldm.data.preprocessing.pipeline import main
from ldm.data.record import INDEX_FILE, load_index
from ldm.folder_lock import LOCK_FILE, FolderBusy, folder_lock
from tests.helpers.lock_holder import hold
from tests.helpers.raw_patients import write_raw_patient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("error:")]


def test_a_live_holder_refuses_others_and_a_killed_holders_lock_is_taken_over(tmp_path):
    out = tmp_path / "out"
    child = hold(out, "sampling")
    try:
        with pytest.raises(FolderBusy) as busy:
            with folder_lock(out, "preprocessing"):
                pass
        message = str(busy.value)
        assert message.startswith(f"output folder {str(out)!r} is being written by sampling (pid {child.pid} on "
                                  f"{socket.gethostname()}, since ")
        assert "\n" not in message
        raw = tmp_path / "raw"
        write_raw_patient(raw / "P001", 1)
        done = subprocess.run([sys.executable, "-m", "ldm.data.preprocessing", "--input_dir", str(raw), "--output_dir",
                               str(out), "--size", "32", "32"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and _error_lines(done.stderr) == [f"error: {message}"]
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written beside the holder's lock
    finally:
        child.send_signal(signal.SIGKILL)  # killed holding it: the file stays, the kernel drops the lock
        child.wait()
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == child.pid
    with folder_lock(out, "preprocessing") as taken:
        assert taken.previous.pid == child.pid
        assert taken.describe(out) == (f"took over the lock of {str(out)!r} left by sampling (pid {child.pid} on "
                                       f"{socket.gethostname()}, since {taken.previous.since}), no longer running "
                                       f"(a killed run)")
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (out / LOCK_FILE).exists()  # released: a finished folder holds no lock file
    child = hold(out)  # a holder that finishes releases it for the next
    child.stdin.close()
    assert child.wait(timeout=30) == 0
    with folder_lock(out, "preprocessing") as taken:
        assert taken is None


SLOW_RUN = """
import pathlib, sys, time
import ldm.data.preprocessing.pipeline as preprocessing
go = pathlib.Path(sys.argv[1])
original = preprocessing._worker
def slow(job):  # a long run: each patient waits until the test says go
    while not go.exists():
        time.sleep(0.05)
    return original(job)
preprocessing._worker = slow
sys.exit(preprocessing.main(sys.argv[2:]))
"""


def test_two_real_preprocessing_runs_into_one_folder(tmp_path, capsys):
    raw_a, raw_b, out, go = tmp_path / "a", tmp_path / "b", tmp_path / "npy", tmp_path / "go"
    for pid, seed in (("A1", 1), ("A2", 2)):
        write_raw_patient(raw_a / pid, seed)
    write_raw_patient(raw_b / "B1", 3)
    first = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(go), "--input_dir", str(raw_a), "--output_dir",
                              str(out), "--size", "32", "32"], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (out / LOCK_FILE).is_file() or not (out / LOCK_FILE).read_text():
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.05)
        assert main(["--input_dir", str(raw_b), "--output_dir", str(out), "--size", "32", "32"]) == 2
        error = _error_lines(capsys.readouterr().err)
        assert len(error) == 1 and f"output folder {str(out)!r} is being written by preprocessing (pid {first.pid} " \
            in error[0]
        go.touch()
        stdout, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
    assert "preprocessed 2/2 patients" in stdout
    assert sorted(load_index(out)) == ["A1", "A2"]
    assert sorted(p.name for p in out.iterdir()) == ["A1", "A2", "cohort_report.csv", INDEX_FILE, "reference.json"]
    assert main(["--input_dir", str(raw_b), "--output_dir", str(out), "--size", "32", "32"]) == 0  # now it may
    assert sorted(load_index(out)) == ["B1"]
