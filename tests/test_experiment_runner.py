"""ldm/experiments/runner.py: a stage runs once, is skipped with the same settings, refused with
others or with a missing output, fails in one line; an experiment folder is refused to another; an
interrupted main.py run is found to be resumed."""
import json
import sys

import pytest

from ldm.experiments.runner import (EXPERIMENT_FILE, LAST_CHECKPOINT, ExperimentError, Runner, Stage, check_folder,
                                    claim_folder, resumable_run)


def _touch_command(path, code=0):
    """A real subprocess that writes ``path`` and exits with ``code``."""
    return [sys.executable, "-c", f"import pathlib, sys; pathlib.Path({str(path)!r}).write_text('x'); sys.exit({code})"]


def test_a_finished_stage_is_skipped_and_other_settings_are_refused(tmp_path, capsys):
    out, record = tmp_path / "result.txt", tmp_path / "records" / "stage.json"
    runner = Runner("[test]")
    stage = Stage("make result", record, {"steps": 20, "paths": (tmp_path,)}, command=_touch_command(out),
                  outputs=[out])
    done = runner.run(stage)
    assert out.is_file() and done["steps"] == 20 and done["paths"] == [str(tmp_path)]
    assert json.loads(record.read_text())["command"][0] == sys.executable and "seconds" in done
    out.write_text("kept")
    assert runner.run(stage)["steps"] == 20 and out.read_text() == "kept"  # skipped: not run again
    assert "make result finished before" in capsys.readouterr().out
    with pytest.raises(ExperimentError, match=r"was made with steps=20, now steps=50"):
        runner.run(Stage("make result", record, {"steps": 50, "paths": (tmp_path,)}, command=_touch_command(out)))
    assert Runner("[test]", rerun=True).run(stage) and out.read_text() == "x"  # --rerun repeats it


def test_a_missing_output_and_a_failing_command_are_one_line(tmp_path):
    out, record = tmp_path / "result.txt", tmp_path / "stage.json"
    runner = Runner("[test]")
    stage = Stage("make result", record, {"k": 1}, command=_touch_command(out), outputs=[out])
    runner.run(stage)
    out.unlink()
    with pytest.raises(ExperimentError) as e:
        runner.run(stage)
    assert str(out) in str(e.value) and str(record) in str(e.value) and "\n" not in str(e.value)
    failing = Stage("broken", tmp_path / "broken.json", command=_touch_command(tmp_path / "b", code=3))
    with pytest.raises(ExperimentError, match="broken failed with exit code 3"):
        runner.run(failing)
    assert not (tmp_path / "broken.json").exists()  # no record for a failed stage
    lazy = Stage("lazy", tmp_path / "lazy.json", command=_touch_command(tmp_path / "c"), outputs=[tmp_path / "never"])
    with pytest.raises(ExperimentError, match="did not write"):
        runner.run(lazy)
    assert not (tmp_path / "lazy.json").exists()


def test_actions_callable_records_and_output_only_stages(tmp_path, capsys):
    calls = []
    runner = Runner("[test]")
    timed = Stage("time it", tmp_path / "timing.json", {"seed": 1},
                  action=lambda: calls.append(1) or {"seconds_per_slice": 0.5})
    assert runner.run(timed)["seconds_per_slice"] == 0.5 and runner.run(timed)["seconds_per_slice"] == 0.5
    assert calls == [1]
    # a record whose place is known once the stage ran (main.py's timestamped run directories)
    run_dir = tmp_path / "logs" / "2025-01-01T00-00-00_x"
    later = Stage("train", lambda: run_dir / "done.json" if run_dir.is_dir() else None,
                  command=[sys.executable, "-c", f"import os; os.makedirs({str(run_dir)!r})"])
    runner.run(later)
    assert (run_dir / "done.json").is_file()
    # no record: finished when its outputs exist, and run every time without outputs
    scored = tmp_path / "scores.csv"
    scored.write_text("x")
    assert runner.run(Stage("score", None, command=_touch_command(tmp_path / "never_run"), outputs=[scored])) == {}
    assert not (tmp_path / "never_run").exists()
    runner.run(Stage("compare", None, command=_touch_command(tmp_path / "every_time")))
    assert (tmp_path / "every_time").is_file()
    # a dry run prints the command and runs nothing
    Runner("[test]", dry_run=True).run(Stage("dry", tmp_path / "dry.json", command=_touch_command(tmp_path / "dry")))
    assert "import pathlib" in capsys.readouterr().out and not (tmp_path / "dry").exists()


def test_an_experiment_folder_is_refused_to_another(tmp_path):
    folder = tmp_path / "study"
    assert check_folder(folder, "study", {"steps": 5}) is False and not folder.exists()
    claim_folder(folder, "study", {"steps": 5})
    assert check_folder(folder, "study", {"steps": 5}) is True
    marker = str(folder / EXPERIMENT_FILE)
    with pytest.raises(ExperimentError, match="steps=5, now steps=6") as e:
        check_folder(folder, "study", {"steps": 6})
    assert marker in str(e.value)
    with pytest.raises(ExperimentError, match="not a 'lambda sweep'"):
        check_folder(folder, "lambda sweep", {})
    unmarked = tmp_path / "other"
    (unmarked / "runs").mkdir(parents=True)
    with pytest.raises(ExperimentError, match="no experiment.json"):
        check_folder(unmarked, "study", {})
    claim_folder(unmarked, "lambda sweep", {}, adopt_unmarked=True)  # a sweep written before markers
    assert json.loads((unmarked / EXPERIMENT_FILE).read_text())["kind"] == "lambda sweep"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExperimentError, match="is a file"):
        check_folder(tmp_path / "file", "study", {})


def test_the_newest_run_with_a_last_checkpoint_is_the_one_to_resume(tmp_path):
    logs = tmp_path / "logs"
    assert resumable_run(logs, "cldm") is None  # no log folder yet
    older, newer = logs / "2025-01-01T00-00-00_cldm", logs / "2025-01-02T00-00-00_cldm"
    (older / LAST_CHECKPOINT).parent.mkdir(parents=True)
    (older / LAST_CHECKPOINT).write_text("weights")
    (logs / "2025-01-03T00-00-00_cldm_pt" / "checkpoints").mkdir(parents=True)  # another run's name
    assert resumable_run(logs, "cldm") == older
    newer.mkdir()  # the newest run has no checkpoint yet: nothing to resume from, the older is not taken
    assert resumable_run(logs, "cldm") is None
    (newer / LAST_CHECKPOINT).parent.mkdir()
    (newer / LAST_CHECKPOINT).write_text("weights")
    assert resumable_run(logs, "cldm") == newer
