"""Runs: `RUN/run.json` + `RUN/evals.jsonl` (docs/formats.md, Run), the one place they are read.

`mixer train` writes run.json and `mixer eval` appends to evals.jsonl (`append_eval`); both,
and the report and fit, read them back through `read_run_meta` and `read_evals`, and pick
the early-stopping winner with `best_eval`.

A finetune grid is one RUN folder whose grid points are sub-runs (`RUN/lr=...,warmup=.../`);
the parent's evaluations are those of all its grid points, and the winner is the checkpoint
with the lowest loss on the split the run selects on (`select_on`): the domain validation
split by default, the test split for the paper's own protocol and for runs made before mixer
had a domain validation split.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Literal, get_args

from mixer.errors import MixerError
from mixer.formats.atomic import read_versioned, write_versioned
from mixer.formats.mix import MixFiles

RUN_FORMAT = "mixer-run/1"
RUN_FILE, EVALS_FILE = "run.json", "evals.jsonl"
RunKind = Literal["pretrain", "finetune", "replay"]
KINDS: tuple[str, ...] = get_args(RunKind)
LOSSES = ("domain_test_loss", "domain_train_loss", "general_val_loss", "domain_val_loss")
SelectOn = Literal["val", "test"]
SELECT_ON: tuple[str, ...] = get_args(SelectOn)
LOGGED = ("train_loss", "lr")  # from the trainer's log at the checkpoint, where it has them


@dataclass(frozen=True)
class Eval:
    """One evaluated checkpoint. Losses are None where the mix has no such source."""

    checkpoint: str
    step: int
    tokens: int
    domain_test_loss: float | None
    domain_train_loss: float | None
    general_val_loss: float | None
    train_loss: float | None = None
    lr: float | None = None
    domain_val_loss: float | None = None  # the domain validation split (selection), where the store has one
    domain_train_sample: str | None = None  # which documents domain_train_loss is on (heldout.TrainSample.describe)
    heldout: dict[str, float | None] | None = None  # every held-out set of the run's chain of mixes, by name

    def as_row(self) -> dict:
        """The evals.jsonl line."""
        return asdict(self)


@dataclass
class Run:
    path: Path
    meta: dict = field(repr=False)
    evals: list[Eval] = field(default_factory=list, repr=False)
    subruns: list[Run] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.path.name)

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def model(self) -> str:
        return str(self.meta.get("model") or "?")

    @property
    def model_params(self) -> int | None:
        p = self.meta.get("model_params")
        return int(p) if p is not None else None

    @property
    def domain(self) -> str | None:
        return self.meta.get("domain")

    @property
    def general(self) -> str | None:
        return self.meta.get("general")

    @property
    def fraction(self) -> float:
        """Domain share of this run's mix; a mix without a domain source is 0 (NPT)."""
        f = self.meta.get("fraction")
        return 0.0 if f is None or self.domain is None else float(f)

    @property
    def window(self) -> tuple[float, float]:
        w = self.meta.get("window") or [0.0, 1.0]
        return (float(w[0]), float(w[1]))

    @property
    def full_window(self) -> bool:
        return self.window == (0.0, 1.0)

    @property
    def seed(self) -> int:
        return int(self.meta.get("seed") or 0)

    @property
    def tokens(self) -> int:
        return int(self.meta.get("tokens") or (self.evals[-1].tokens if self.evals else 0))

    @property
    def pretrain_tokens(self) -> int:
        return int(self.meta.get("pretrain_tokens") or self.tokens)

    @property
    def parent(self) -> str | None:
        return self.meta.get("parent")

    def all_evals(self) -> list[Eval]:
        """This run's evaluations and those of its grid points."""
        return self.evals + [e for s in self.subruns for e in s.all_evals()]

    @property
    def select_on(self) -> str:
        """The split checkpoints and grid points are chosen on: run.json `select_on`; runs
        made before the field selected on the test split."""
        return str(self.meta.get("select_on") or "test")

    def best_eval(self) -> Eval | None:
        """The early-stopping winner over checkpoints (and grid points), chosen on `select_on`."""
        return best_eval(self.all_evals(), self.select_on)

    def eval_at(self, checkpoint: str | None = None, tokens: int | None = None) -> Eval | None:
        """The evaluation of a named checkpoint (basename compared), else the one at `tokens`."""
        if checkpoint:
            base = Path(checkpoint).name
            for e in self.evals:
                if e.checkpoint == base:
                    return e
        if tokens is not None:
            for e in self.evals:
                if e.tokens == tokens:
                    return e
        return None


def load_run(path: Path | str) -> Run:
    """Read one RUN folder with its evaluations; a one-line MixerError naming the file when
    something is wrong or nothing was evaluated."""
    path = Path(path)
    if path.name == RUN_FILE and path.is_file():
        path = path.parent  # `mixer report runs/*/run.json` names the same runs
    meta = read_run_meta(path)
    subruns = [load_run(p.parent) for p in sorted(path.glob(f"*/{RUN_FILE}"))]
    evals_file = path / EVALS_FILE
    if not evals_file.is_file() and not subruns:
        raise MixerError(f"{evals_file}: missing; evaluate the run first with `mixer eval {path}`")
    run = Run(path=path, meta=meta, evals=read_evals(path), subruns=subruns)
    if not run.all_evals():
        raise MixerError(f"{evals_file}: no evaluated checkpoints; run `mixer eval {path}`")
    return run


def load_runs(paths: list[Path | str]) -> list[Run]:
    if not paths:
        raise MixerError("no runs given (pass RUN folders, e.g. runs/*)", exit_code=2)
    return [load_run(p) for p in paths]


def find_parent(run: Run, runs: list[Run]) -> Run | None:
    """The run a finetune started from: among `runs` and their grid points by path, then by
    the longest shared tail of its recorded path, then on disk.

    A relative `parent` (what `relocate` writes into published runs) is read from the run's
    own folder. Matching by the path's tail lets a study folder be moved or copied whole:
    `runs/music/s1/npt` finds the copy of `/old/place/runs/music/s1/npt`, not another
    seed's `npt`; a finetune of a post-training grid point finds that grid point. A tie
    between runs is ambiguous and matches none of them.
    """
    if not run.parent:
        return None
    want = run_path(run.path, run.parent)
    candidates = [c for r in runs for c in _with_grid_points(r) if c is not run]
    for r in candidates:
        if r.path.resolve() == want.resolve():
            return r
    scored = [(_shared_tail(r.path.resolve().parts, want.parts), r) for r in candidates]
    top = max((n for n, _ in scored), default=0)
    tied = [r for n, r in scored if n == top and top > 0]
    if len(tied) > 1:  # e.g. only the folder name is shared: a pretraining run is the usual parent
        tied = [r for r in tied if r.kind == "pretrain"]
    if len(tied) == 1:
        return tied[0]
    if (want / RUN_FILE).is_file():
        return load_run(want)
    return None


def _with_grid_points(run: Run) -> list[Run]:
    return [run] + [g for s in run.subruns for g in _with_grid_points(s)]


# The paths run.json records that code follows: relative in a published copy (relocate),
# resolved against the run folder when read (run_path).
RUN_PATHS = ("parent", "parent_checkpoint", "mix")


def run_path(run_dir: Path | str, value: str | os.PathLike) -> Path:
    """A path from run.json (`parent`, `parent_checkpoint`, `mix`): as written when absolute,
    else relative to the run folder, as `relocate` writes them."""
    path = Path(value)
    return path if path.is_absolute() else Path(run_dir) / path


def relocate(meta: dict, run_dir: Path) -> dict:
    """run.json with every path it records (RUN_PATHS, and a recipe stage's recipe file)
    relative to `run_dir`, for a copy of a whole study folder (published results): the copy
    then finds its parents inside itself wherever it lies, and never reads the place the
    study ran in (a mix that was not copied is then simply not there)."""
    out = dict(meta)
    for key in RUN_PATHS:
        if out.get(key) and Path(out[key]).is_absolute():
            out[key] = os.path.relpath(out[key], run_dir)
    stage = out.get("stage")
    if isinstance(stage, dict) and stage.get("recipe") and Path(stage["recipe"]).is_absolute():
        out["stage"] = {**stage, "recipe": os.path.relpath(stage["recipe"], run_dir)}
    return out


def _shared_tail(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def write_run_meta(run_dir: Path | str, meta: dict) -> Path:
    """RUN/run.json, atomically: the one writer of the file `read_run_meta` reads (the format
    and kind checked on the way out too, so no stage writes a run.json mixer cannot read)."""
    if meta.get("kind") not in KINDS:
        raise ValueError(f"run.json: kind {meta.get('kind')!r}: not a {RUN_FORMAT} run (kinds: {', '.join(KINDS)})")
    return write_versioned(run_dir, RUN_FILE, meta, RUN_FORMAT)


def read_run_meta(path: Path | str) -> dict:
    """RUN/run.json, checked; a one-line MixerError naming the file when it is missing or wrong."""
    path = Path(path)
    meta_file = path / RUN_FILE
    if not path.is_dir():
        what = "a file" if path.exists() else "no such directory"
        raise MixerError(f"{path}: not a run folder ({what}); pass the folder that holds {RUN_FILE}")
    if not meta_file.is_file():
        raise MixerError(f"{meta_file}: missing; {path} is not a run made by mixer train")
    meta = read_versioned(meta_file, RUN_FORMAT, "run")
    if meta.get("kind") not in KINDS:
        raise MixerError(f"{meta_file}: kind is {meta.get('kind')!r}; expected one of {', '.join(KINDS)}")
    f = meta.get("fraction")
    if f is not None and (not isinstance(f, (int, float)) or not 0 <= f <= 1):
        raise MixerError(f"{meta_file}: fraction {f!r} must be a number in [0, 1] (a fraction, not percent)")
    on = meta.get("select_on")
    if on is not None and on not in SELECT_ON:
        raise MixerError(f"{meta_file}: select_on {on!r} must be one of {', '.join(SELECT_ON)}")
    w = meta.get("window")
    if w is not None and (not isinstance(w, list) or len(w) != 2 or not 0 <= w[0] < w[1] <= 1):
        raise MixerError(f"{meta_file}: window {w!r} must be [start, end] with 0 <= start < end <= 1")
    return meta


def read_evals(run_dir: Path | str) -> list[Eval]:
    """RUN/evals.jsonl in training order (tokens, then step; `final` after the step it repeats);
    a later line for the same checkpoint wins. [] when nothing was evaluated yet."""
    evals_file = Path(run_dir) / EVALS_FILE
    if not evals_file.is_file():
        return []
    by_ckpt: dict[str, Eval] = {}
    for lineno, line in enumerate(evals_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise MixerError(f"{evals_file}:{lineno}: not valid JSON ({e.msg}); remove the line and re-run "
                             "mixer eval") from None
        if not isinstance(row, dict) or not isinstance(row.get("tokens"), (int, float)):
            raise MixerError(f"{evals_file}:{lineno}: needs a numeric 'tokens' field")
        ckpt = str(row.get("checkpoint") or f"tokens-{int(row['tokens'])}")
        by_ckpt[ckpt] = Eval(
            checkpoint=ckpt,
            step=int(row.get("step") or 0),
            tokens=int(row["tokens"]),
            **{k: _loss(row.get(k), evals_file, lineno, k) for k in LOSSES + LOGGED},
            domain_train_sample=row.get("domain_train_sample"),
            heldout=_heldout(row.get("heldout"), evals_file, lineno),
        )
    return sorted(by_ckpt.values(), key=lambda e: (e.tokens, e.step))


def append_eval(run_dir: Path | str, e: Eval) -> None:
    """One more line of RUN/evals.jsonl, written as soon as it is computed: an interrupted
    `mixer eval` resumes after the last complete line."""
    with open(Path(run_dir) / EVALS_FILE, "a") as f:
        f.write(json.dumps(e.as_row()) + "\n")


def best_eval(evals: Iterable[Eval], on: str = "test") -> Eval | None:
    """The early-stopping winner: the lowest domain loss on split `on` (val or test); None
    where no checkpoint has one."""
    if on not in SELECT_ON:
        raise ValueError(f"select on {on!r}: expected one of {', '.join(SELECT_ON)}")
    key = f"domain_{on}_loss"
    have = [e for e in evals if getattr(e, key) is not None and math.isfinite(getattr(e, key))]
    return min(have, key=lambda e: getattr(e, key)) if have else None


def _heldout(v: object, f: Path, lineno: int) -> dict[str, float | None] | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise MixerError(f"{f}:{lineno}: heldout is {v!r}; expected an object of losses by held-out set")
    return {str(k): _loss(x, f, lineno, f"heldout.{k}") for k, x in v.items()}


def _loss(v: object, f: Path, lineno: int, key: str) -> float | None:
    if v is None:
        return None
    if not isinstance(v, (int, float)):
        raise MixerError(f"{f}:{lineno}: {key} is {v!r}; expected a number or null")
    # A diverged checkpoint (NaN/inf) has no usable loss; treat it as not evaluated.
    return float(v) if math.isfinite(v) else None


def mix_domain_tokens(run: Run) -> int | None:
    """Domain train tokens D of the run's mix (from its manifest), for epochs E = T d / D.

    None when the mix is gone or has no domain source: D is context for the forecast, and a
    report on runs copied without their mixes must still work.
    """
    try:
        src = MixFiles.open(run_path(run.path, run.meta.get("mix") or "")).source("domain")
    except MixerError:
        return None
    return int(src["train_tokens"]) if src and src.get("train_tokens") else None
