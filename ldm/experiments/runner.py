"""An experiment as a list of stages, each run once: the lambda sweep, the sampler study and the study.

A :class:`Stage` is a command (a subprocess: ``main.py``, ``sample_LDM.py``, ``evaluate.py``, the
commands a user runs by hand) or a function, with the files it must leave (``outputs``) and the
settings that define it. Once it has succeeded and its outputs exist, its settings are written to
its record (a JSON file, atomically). :meth:`Runner.run` skips a stage whose record holds the same
settings, so that an experiment stopped half way and started again repeats nothing it finished; a
record with other settings is refused in one line naming it (the two results would mix in one
table), and a record whose outputs have gone is refused too (naming the missing file) rather than
trusted. A stage without a record is finished when its outputs exist.

An experiment's folder carries ``experiment.json`` (its kind and settings, :func:`claim_folder`):
a folder that holds another kind of experiment, or the same kind with other settings, is refused,
so that two experiments never share runs.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldm.folder_lock import LOCK_FILE
from ldm.io import atomic_write_json
from ldm.util import ConfigError

EXPERIMENT_FILE = "experiment.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"  # what main.py keeps saving in a run directory
ROOT = Path(__file__).resolve().parents[2]


class ExperimentError(ConfigError):
    """A knob out of range, a stage that failed, a record or folder that belongs to other settings
    (one line, exit code 2: :mod:`ldm.cli`)."""


def script(name: str) -> str:
    """A file of this repository as a path from the working directory (where the stages start, so
    that relative data roots in configs mean what they mean for main.py)."""
    return os.path.relpath(ROOT / name)


def show(cmd: Sequence[str]) -> str:
    """A command as one shell line."""
    return " ".join(shlex.quote(str(c)) for c in cmd)


def find_run_dir(logdir: str | Path, name: str) -> Path | None:
    """The newest ``<logdir>/<timestamp>_<name>`` run directory that main.py made, if any."""
    logdir = Path(logdir)
    if not logdir.is_dir():
        return None
    candidates = sorted(p for p in logdir.iterdir() if p.is_dir() and p.name.endswith(f"_{name}"))
    return candidates[-1] if candidates else None


def resumable_run(logdir: str | Path, name: str) -> Path | None:
    """The newest run directory of ``name`` (:func:`find_run_dir`) that holds a ``last.ckpt``, which
    ``main.py -r <run> -t`` resumes from (with the configs it was started with); None if there is none.
    Whether its training finished is its stage record's business."""
    run = find_run_dir(logdir, name)
    return run if run is not None and (run / LAST_CHECKPOINT).is_file() else None


def _plain(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples become lists, paths strings), for comparisons."""
    return json.loads(json.dumps(value, default=str))


def _differing(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [k for k in new if _plain(new[k]) != old.get(k, _MISSING)]


_MISSING = object()


def _describe_keys(settings: Mapping[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={settings.get(k, 'nothing')!r}" for k in keys)


@dataclass
class Stage:
    """One step of an experiment (see the module docstring).

    ``record`` is the JSON file that says it finished with ``settings`` (a callable when its place is
    known only once it ran, as main.py's timestamped run directories; None: finished when its
    ``outputs`` exist, and run every time without outputs). ``outputs`` may be a callable for the
    same reason. Exactly one of ``command`` (run as a subprocess, with ``env`` added to the
    environment) and ``action`` (called; the mapping it returns is recorded beside the settings).
    ``info`` is recorded too but not compared (where a run went, the accelerator it used).
    ``verb`` and ``describe`` word a refusal: "<record> was <verb> with <describe(old)>, now ...".
    """

    name: str
    record: Path | Callable[[], Path | None] | None
    settings: Mapping[str, Any] = field(default_factory=dict)
    command: Sequence[str] | None = None
    action: Callable[[], Mapping[str, Any] | None] | None = None
    env: Mapping[str, str] | None = None
    outputs: Sequence[Path] | Callable[[], Sequence[Path]] = ()
    info: Mapping[str, Any] = field(default_factory=dict)
    verb: str = "made"
    describe: Callable[[Mapping[str, Any]], str] | None = None
    advice: str = "remove it to run the stage again, or choose another folder"

    def __post_init__(self) -> None:
        if (self.command is None) == (self.action is None):
            which = "both" if self.command else "neither"
            raise ValueError(f"stage {self.name!r}: give a command or an action, not {which}")

    def record_path(self) -> Path | None:
        return self.record() if callable(self.record) else self.record

    def output_paths(self) -> list[Path]:
        return [Path(p) for p in (self.outputs() if callable(self.outputs) else self.outputs)]


class Runner:
    """Runs stages in order, skipping finished ones; prints one line per stage with ``prefix``.

    ``dry_run`` prints each command that would run (nothing else on that line, so it can be pasted)
    and runs nothing; ``rerun`` runs every stage again.
    """

    def __init__(self, prefix: str, dry_run: bool = False, rerun: bool = False) -> None:
        self.prefix = prefix
        self.dry_run = dry_run
        self.rerun = rerun

    def say(self, text: str) -> None:
        print(f"{self.prefix} {text}", flush=True)

    def finished(self, stage: Stage) -> dict | None:
        """The record of a stage that finished before with the same settings; None if it has to run.

        Raises :class:`ExperimentError` when the record holds other settings or an output is missing.
        """
        if self.rerun:
            return None
        path = stage.record_path()
        if path is None:
            outputs = stage.output_paths()
            if stage.record is None and outputs and all(p.exists() for p in outputs):
                return {}
            return None
        if not path.is_file():
            return None
        try:
            old = json.loads(path.read_text())
        except ValueError as e:
            raise ExperimentError(f"{path}: not a stage record ({e}); {stage.advice}") from e
        differ = _differing(old, stage.settings)
        if differ:
            describe = stage.describe or (lambda s: _describe_keys(s, differ))
            now = describe(_plain(stage.settings))
            raise ExperimentError(f"{path} was {stage.verb} with {describe(old)}, now {now}: {stage.advice}")
        missing = next((p for p in stage.output_paths() if not p.exists()), None)
        if missing is not None:
            raise ExperimentError(f"{missing} is missing, yet {path} says that {stage.name} finished: "
                                  f"remove {path} to run the stage again")
        return old

    def run(self, stage: Stage) -> dict:
        """Run ``stage`` unless it finished before; return its record ({} in a dry run)."""
        done = self.finished(stage)
        if done is not None:
            where = stage.record_path() or ", ".join(str(p) for p in stage.output_paths())
            self.say(f"{stage.name} finished before ({where}): skipped")
            return done
        if self.dry_run:
            if stage.command is not None:
                print(show(stage.command), flush=True)
            else:
                self.say(f"{stage.name}: would run")
            return {}
        start = time.time()
        result: Mapping[str, Any] = {}
        if stage.command is not None:
            self.say(f"{stage.name}: {show(stage.command)}")
            env = None if stage.env is None else {**os.environ, **stage.env}
            returncode = subprocess.run([str(c) for c in stage.command], env=env).returncode
            if returncode != 0:
                raise ExperimentError(f"{stage.name} failed with exit code {returncode}: {show(stage.command)}")
        else:
            self.say(f"{stage.name}")
            result = stage.action() or {}
        seconds = time.time() - start
        missing = next((p for p in stage.output_paths() if not p.exists()), None)
        if missing is not None:
            raise ExperimentError(f"{stage.name} finished but did not write {missing}")
        path = stage.record_path()
        record = {**_plain(dict(stage.info)), **_plain(dict(stage.settings)), **_plain(dict(result))}
        if stage.command is not None:
            record["command"] = [str(c) for c in stage.command]
        record["seconds"] = round(seconds, 1)
        if path is not None:
            atomic_write_json(path, record)
        elif stage.record is not None:  # a callable record that cannot say where, even after the run
            raise ExperimentError(f"{stage.name} finished but left no place for its record")
        self.say(f"{stage.name} took {seconds:.0f} s")
        return record


def check_folder(folder: str | Path, kind: str, settings: Mapping[str, Any], adopt_unmarked: bool = False) -> bool:
    """Whether ``folder`` may hold this experiment (True: it already does); writes nothing.

    Refused (:class:`ExperimentError` naming the file): a file in the folder's place; a marker of
    another kind of experiment, or of this kind with other settings; a non-empty folder without a
    marker, unless ``adopt_unmarked`` (folders written before markers existed).
    """
    folder = Path(folder)
    marker = folder / EXPERIMENT_FILE
    if folder.exists() and not folder.is_dir():
        raise ExperimentError(f"{folder} is a file, not a folder for the {kind}")
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())
        except ValueError as e:
            raise ExperimentError(f"{marker}: not an experiment marker ({e}); choose another folder") from e
        if old.get("kind") != kind:
            raise ExperimentError(f"{marker} says the folder holds a {old.get('kind')!r}, not a {kind!r}: "
                                  f"choose another folder")
        differ = _differing(old.get("settings", {}), settings)
        if differ:
            before = _describe_keys(old.get("settings", {}), differ)
            now = _describe_keys(_plain(dict(settings)), differ)
            raise ExperimentError(f"{marker} holds a {kind} with {before}, now {now}: its runs would mix with these; "
                                  f"choose another folder")
        return True
    # the output-folder lock (ldm/folder_lock.py) of the run that is claiming it does not count
    if folder.is_dir() and any(p.name != LOCK_FILE for p in folder.iterdir()) and not adopt_unmarked:
        raise ExperimentError(f"{folder} holds files but no {EXPERIMENT_FILE}: it is not a {kind} folder; "
                              f"choose another folder")
    return False


def claim_folder(folder: str | Path, kind: str, settings: Mapping[str, Any], adopt_unmarked: bool = False) -> None:
    """:func:`check_folder`, then mark the folder as this experiment's."""
    if not check_folder(folder, kind, settings, adopt_unmarked):
        atomic_write_json(Path(folder) / EXPERIMENT_FILE, {"kind": kind, "settings": _plain(dict(settings))})
