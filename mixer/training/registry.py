"""Trainers by name: the one place mixer names a trainer adapter.

`mixer train --trainer NAME` (default `litgpt`) records NAME in run.json (`trainer`), so
`mixer eval`, resumes and finetunes of that run find the same trainer: the name a trainer is
found by is its identity. A name resolves to "module:attribute", imported only when a run
needs it (mixer's other commands never pay for a training framework); the attribute is an
object satisfying `mixer.training.trainer.Trainer`, or a class whose no-argument instance does.

Where a name resolves, first match wins:
1. `register(name, target)` in this process (tests, plugins loaded by hand);
2. the entry point group `mixer.trainers` of the installed packages: mixer's own adapters
   (each `trainer_adapters/<name>/` of this repository installs as `mixer_<name>`, setup.py)
   and any package that declares `[project.entry-points."mixer.trainers"]`;
3. the convention `mixer_<name>.trainer:TRAINER` (a checkout run without installing it).
See docs/trainers.md.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from mixer.errors import MixerError, UsageError
from mixer.training.trainer import Trainer

DEFAULT = "litgpt"
GROUP = "mixer.trainers"
TRAINERS: dict[str, str] = {}  # registered in this process
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_loaded: dict[str, Trainer] = {}


def register(name: str, target: str) -> None:
    """Make `name` resolve to "module:attribute" (replacing what it resolved to)."""
    if not _NAME.match(name) or target.count(":") != 1:
        raise ValueError(f"trainer {name!r} -> {target!r}: expected a lowercase name and 'module:attribute'")
    TRAINERS[name] = target
    _loaded.pop(name, None)


def entry_points() -> dict[str, str]:
    """name -> "module:attribute" of the trainers installed packages declare."""
    from importlib.metadata import entry_points as installed

    return {ep.name: ep.value for ep in installed(group=GROUP) if _NAME.match(ep.name)}


def target_of(name: str) -> str:
    return TRAINERS.get(name) or entry_points().get(name) or f"mixer_{name}.trainer:TRAINER"


def get_trainer(name: str | None = None, where: str = "--trainer") -> Trainer:
    """The trainer called `name` (default litgpt); a one-line error starting with `where` when
    it is unknown or its framework is not installed."""
    name = name or DEFAULT
    if name in _loaded:
        return _loaded[name]
    bad = UsageError if where == "--trainer" else MixerError  # a flag is usage; run.json is data
    if not isinstance(name, str) or not _NAME.match(name):
        raise bad(f"{where} {name!r}: not a trainer name (lowercase letters, digits, _)")
    module, attr = target_of(name).split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if module == missing or module.startswith(missing + "."):  # the adapter itself is not there
            raise bad(f"{where} {name}: unknown trainer (no module {module}; known: {', '.join(known())})") from None
        raise MixerError(f"{where} {name}: {module} needs the package {missing!r}, which is not installed "
                         f"(install the trainer's extra, e.g. pip install 'mixer[litgpt]')") from None
    obj = getattr(mod, attr, None)
    if obj is None:
        raise MixerError(f"{where} {name}: {module} has no {attr}")
    trainer = obj() if isinstance(obj, type) else obj
    if not isinstance(trainer, Trainer):
        raise MixerError(f"{where} {name}: {module}:{attr} does not implement mixer.training.trainer.Trainer")
    _loaded[name] = trainer
    return trainer


def name_of(meta: dict) -> str:
    """The name of the trainer that made a run (run.json `trainer`; runs from before the field: litgpt)."""
    return meta.get("trainer") or DEFAULT


def trainer_of(meta: dict, run_dir: Path | str) -> Trainer:
    """The trainer that made a run."""
    return get_trainer(name_of(meta), where=f"{Path(run_dir) / 'run.json'}: trainer")


def known() -> list[str]:
    """Registered and installed trainer names (found without importing them)."""
    return sorted({DEFAULT, *TRAINERS, *entry_points()})
