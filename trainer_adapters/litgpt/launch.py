"""`litgpt pretrain --config`, plus what LitGPT's loop lacks: WSD / long-horizon cosine
schedules, early stopping on the validation loss of each saved checkpoint, DDP where FSDP
cannot run (CPU ranks), resuming on another device count, light checkpoints, and a record of
where the process's time went.

    python -m mixer_litgpt.launch pretrain --config RUN/config.yaml

takes the same arguments as `litgpt pretrain`, so that Lightning, which starts ranks 1..N-1
by re-running this process's command line, starts each of them the same way; the hooks are
read from launch.json beside the config (none when it is missing).

The hooks replace or wrap module-level functions of litgpt.pretrain (pinned 0.5.13): `get_lr`
is replaced; `validate` is wrapped to remember the last loss, and `save_checkpoint` to judge it
right after the checkpoint is complete on disk, so the stop never leaves a half-written file.
Each judgement is appended to RUN/early_stopping.jsonl, which also restores the state on
--resume.

Always (`save_light`): a checkpoint folder's lit_model.pth holds the model weights alone, in
the dtype they trained in (a third of LitGPT's file with AdamW: no optimizer state); the
state a resume needs (model, optimizer, loader position, counts: LitGPT's own checkpoint)
goes to resume.pth of a step checkpoint when RESUME_SECONDS of the launch passed since the
last one, and the one before it is deleted once the new one is complete, so one is kept. The
last step writes none (the run ends right after) and `final` is a hard link to the last
step's weights when that step was saved. Every file
is written under a temporary name and renamed, so a killed save never leaves a torn file
that a resume or an evaluation would read. And `timing` appends to RUN/timing.jsonl how
the process spent its time (startup, compile, steps, validation, checkpoint writes).
Otherwise this is `litgpt pretrain --config RUN/config.yaml`, except that a resumed run may
have another number of ranks (`resume_on_any_ranks`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

HOOKS = "launch.json"
TIMING = "timing.jsonl"
WEIGHTS, RESUME = "lit_model.pth", "resume.pth"
# A resume state (LitGPT's whole state: 12 bytes a parameter in float32 with AdamW, 14 GB for
# olmo-1b) is written at a step checkpoint when this many seconds of the launch passed since the
# last one (or since training started): insurance against losing hours, not a cost every short
# finetune pays. MIXER_RESUME_SECONDS=0: at every step checkpoint.
RESUME_SECONDS = 600.0
COMPILE_ITERATIONS = 3  # torch.compile traces and compiles in the first iterations (and re-traces once after eval)


class EarlyStop(Exception):
    pass


def schedule_lr(kind: str, lr: float, it: int, warmup: int, max_iters: int, min_lr: float,
                horizon: int | None = None, decay_fraction: float = 0.2) -> float:
    """Learning rate at micro-batch iteration `it` (LitGPT counts warmup and length in
    iterations): mixer's one definition of the schedules, `mixer.training.schedules.lr_at`."""
    from mixer.training.schedules import lr_at

    return lr_at(it, lr, min_lr, warmup, max_iters, kind, horizon, decay_fraction)


def _require(pretrain, names: tuple[str, ...]) -> None:
    for name in names:
        if not hasattr(pretrain, name):
            raise RuntimeError(f"litgpt.pretrain has no {name}; this launcher supports litgpt 0.5.13")


def use_strategy(name: str) -> None:
    """Train with Lightning's strategy `name` where LitGPT would pick FSDP (more than one rank).

    LitGPT builds `FSDPStrategy(...)` itself; its stand-in returns the strategy's name, which
    Fabric resolves with the cluster environment (gloo on CPU, Slurm's ranks under srun). It
    is no instance of the stand-in, so LitGPT's `isinstance(strategy, FSDPStrategy)` is false
    and it initializes the weights as on one device, which DDP then broadcasts from rank 0.
    """
    from litgpt import pretrain

    _require(pretrain, ("FSDPStrategy",))

    class Chosen:
        def __new__(cls, *args, **kwargs):  # noqa: ARG003 - FSDP's arguments mean nothing to DDP
            return name

    pretrain.FSDPStrategy = Chosen


def resume_on_any_ranks() -> None:
    """Let a run resume on another number of ranks when the global batch is unchanged.

    A checkpoint is saved right after an optimizer step, so the micro-batch iterations it
    counts are its steps times the accumulation of the run that saved it; on another device
    count (or micro-batch) the same point of training is its steps times this run's
    accumulation. LitGPT restores the saved count as is; `fit` starts from the translated one.
    The loader translates its own position (`data.MixLoader.load_state_dict`).
    """
    from litgpt import pretrain

    _require(pretrain, ("fit",))
    orig_fit = pretrain.fit

    def fit(**kwargs):
        state, train = kwargs["state"], kwargs["train"]
        accumulation = train.gradient_accumulation_iters(kwargs["devices"], kwargs.get("num_nodes", 1))
        state["iter_num"] = state["step_count"] * accumulation
        return orig_fit(**kwargs)

    pretrain.fit = fit


class Clock:
    """Where the training process's time went, from spans the hooks record (rank 0 writes it):
    startup (imports, model and data set-up, resume loading, LitGPT's 2-batch sanity check),
    compile (the first optimizer steps' time beyond a typical step: torch.compile traces and
    compiles there), training steps, validation and checkpoint writes."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.last_resume = self.t0  # when a resume state was last written (or training started)
        self.spans: list[tuple[str, float, float]] = []
        self.marks: list[float] = []  # when each training micro-batch was handed to the loop
        self.fit_end: float | None = None
        self.info: dict = {}  # last_step, accumulation, tokens_per_iteration, device, devices
        self.bytes = 0  # checkpoint bytes written

    def span(self, kind: str, start: float) -> None:
        self.spans.append((kind, start, time.perf_counter()))

    def _within(self, a: float, b: float, kinds: tuple[str, ...]) -> float:
        return sum(e - s for k, s, e in self.spans if k in kinds and a <= s < b)

    def summary(self) -> dict:
        end = time.perf_counter()
        fit_end = self.fit_end or end
        side = ("validation", "checkpoints", "sanity_check")
        first = self.marks[0] if self.marks else fit_end
        durations = []
        for i, a in enumerate(self.marks):
            b = self.marks[i + 1] if i + 1 < len(self.marks) else fit_end
            durations.append((b - a) - self._within(a, b, side))
        median = statistics.median(durations) if durations else 0.0
        warm = COMPILE_ITERATIONS * int(self.info.get("accumulation") or 1)
        compile_s = sum(max(0.0, d - median) for d in durations[:warm])
        steps = sum(durations) - compile_s
        total = end - self.t0
        parts = {"startup": (first - self.t0) - self._within(self.t0, first, ("validation", "checkpoints")),
                 "compile": compile_s, "train_steps": steps,
                 "validation": sum(e - s for k, s, e in self.spans if k == "validation"),
                 "checkpoints": sum(e - s for k, s, e in self.spans if k == "checkpoints")}
        parts["other"] = total - sum(parts.values())
        tokens = len(self.marks) * int(self.info.get("tokens_per_iteration") or 0)
        return {"seconds": round(total, 3), **{k: round(v, 3) for k, v in parts.items()},
                "iterations": len(self.marks), "tokens": tokens,
                "tokens_per_second": round(tokens / steps, 1) if steps > 0 else None,
                "checkpoint_bytes": self.bytes, "device": self.info.get("device"), "devices": self.info.get("devices"),
                "environment": self.info.get("environment"), "finished": time.time()}


class _TimedLoader:
    """The training loader as LitGPT's loop sees it, noting when each batch is handed over."""

    def __init__(self, loader, marks: list[float]) -> None:
        self.loader, self.marks = loader, marks

    def __iter__(self):
        for batch in self.loader:
            self.marks.append(time.perf_counter())
            yield batch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


class EarlyStopping:
    """Patience on the validation loss of each saved step checkpoint; the judgements are in
    RUN/early_stopping.jsonl, which restores the state on --resume: the judgements of the
    checkpoints up to the one resumed from count, later ones (trained again now) are dropped."""

    def __init__(self, patience: int, min_delta: float, log_file: Path, resumed_at: int = 0) -> None:
        self.patience, self.min_delta, self.log_file = patience, min_delta, log_file
        self.best, self.bad = math.inf, 0
        rows = [json.loads(line) for line in log_file.read_text().splitlines()] if log_file.exists() else []
        self.kept = [r for r in rows if _step_of_name(r["checkpoint"]) <= resumed_at]
        self.rewrite = len(self.kept) != len(rows)  # rank 0 rewrites the log before its next line
        for row in self.kept:
            self.best, self.bad = row["best_loss"], row["without_improvement"]

    def judge(self, loss: float) -> bool:
        """Whether to stop after this checkpoint. Every rank evaluates the whole held-out set on
        the same weights, so every rank reaches the same judgement and stops at the same checkpoint."""
        if loss < self.best - self.min_delta:
            self.best, self.bad = loss, 0
        else:
            self.bad += 1
        return self.bad >= self.patience

    def record(self, fabric, name: str, loss: float) -> None:
        if fabric.global_rank != 0:
            return
        if self.rewrite:
            tmp = self.log_file.with_name(f".{self.log_file.name}.partial")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.kept))
            os.replace(tmp, self.log_file)
            self.rewrite = False
        with open(self.log_file, "a") as f:
            f.write(json.dumps({"checkpoint": name, "val_loss": loss, "best_loss": self.best,
                                "without_improvement": self.bad}) + "\n")


def _step_of_name(name: str) -> int:
    return int(name.split("-")[1]) if name.startswith("step-") else 0


def resume_step(config: Path) -> int:
    """The step a run resumes from: that of config.yaml's `resume` checkpoint (0: a fresh start)."""
    import yaml

    resume = (yaml.safe_load(config.read_text()) or {}).get("resume") if config.is_file() else None
    return _step_of_name(Path(resume).parent.name) if isinstance(resume, str) and resume else 0


def _link_checkpoint(src: Path, dest: Path) -> bool:
    """`dest` as hard links of `src`'s weights and copies of its small files (the final
    checkpoint after a saved last step is the same model); False where links are impossible."""
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".{WEIGHTS}.partial"
    try:
        tmp.unlink(missing_ok=True)
        os.link(src / WEIGHTS, tmp)
        for f in src.iterdir():
            if f.is_file() and not f.name.startswith(".") and f.name not in (WEIGHTS, RESUME):
                shutil.copyfile(f, dest / f.name)
        os.replace(tmp, dest / WEIGHTS)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False


def save_light(fabric, state: dict, tokenizer_dir, folder: Path, orig_save, resume: bool,
               last_step: int | None, clock: Clock | None = None) -> None:
    """The checkpoint in `folder`: lit_model.pth with the weights alone (in their training dtype),
    and, for a step checkpoint that a resume may need, resume.pth with LitGPT's whole state,
    after which the previous resume.pth is deleted. Collective: every rank calls it."""
    rank0 = fabric.global_rank == 0
    step = int(state["step_count"])
    same = folder.parent / f"step-{step:08d}"
    if folder.name == "final" and (same / WEIGHTS).is_file():
        fabric.barrier()  # every rank has seen the file before rank 0 links it
        if fabric.broadcast(_link_checkpoint(same, folder) if rank0 else None, src=0):
            return
    folder.mkdir(parents=True, exist_ok=True)
    weights = {"model": state["model"], "iter_num": state["iter_num"], "step_count": step,
               "mixer": {"weights_only": True}}
    tmp = folder / f".{WEIGHTS}.partial"
    orig_save(fabric, weights, tokenizer_dir, tmp)  # LitGPT's: the file and the config files beside it
    if rank0:
        if clock is not None:
            clock.bytes += tmp.stat().st_size
        os.replace(tmp, folder / WEIGHTS)
    if resume and folder.name.startswith("step-") and (last_step is None or step < last_step):
        tmp = folder / f".{RESUME}.partial"
        fabric.save(tmp, state)
        if rank0:
            if clock is not None:
                clock.bytes += tmp.stat().st_size
            os.replace(tmp, folder / RESUME)
            for old in folder.parent.glob(f"step-*/{RESUME}"):
                if old.parent != folder:
                    old.unlink(missing_ok=True)
        if clock is not None:
            clock.last_resume = time.perf_counter()
    fabric.barrier()


def install(hooks: dict, log_file: Path, clock: Clock | None = None, resumed_at: int = 0) -> None:
    """Every hook: the optional ones launch.json asks for, light checkpoints and timing always.
    `resumed_at`: the step the run resumes from (0: from the start)."""
    from litgpt import pretrain

    _require(pretrain, ("get_lr", "validate", "save_checkpoint", "fit"))
    clock = clock or Clock()
    if hooks.get("strategy"):
        use_strategy(hooks["strategy"])

    sched = hooks.get("schedule")
    if sched:
        def get_lr(learning_rate: float, it: int, warmup_iters: int, max_iters: int, min_lr: float) -> float:
            return schedule_lr(sched["kind"], learning_rate, it, warmup_iters, max_iters, min_lr,
                               sched.get("horizon_iters"), sched.get("decay_fraction", 0.2))

        pretrain.get_lr = get_lr

    stop = hooks.get("early_stopping")
    judge = EarlyStopping(int(stop["patience"]), float(stop.get("min_delta", 0.0)), log_file, resumed_at) if stop \
        else None
    every = float(os.environ.get("MIXER_RESUME_SECONDS", RESUME_SECONDS))
    orig_validate, orig_save, orig_fit = pretrain.validate, pretrain.save_checkpoint, pretrain.fit
    last: dict = {"loss": None}

    def validate(fabric, model, val_dataloader, max_iters, verbose=True):
        start = time.perf_counter()
        loss = orig_validate(fabric, model, val_dataloader, max_iters, verbose)
        clock.span("validation" if verbose else "sanity_check", start)  # verbose=False: LitGPT's 2-batch check
        if verbose:
            last["loss"] = float(loss)
        return loss

    def save_checkpoint(fabric, train_state, tokenizer_dir, checkpoint_file):
        folder = Path(checkpoint_file).parent
        loss, last["loss"] = last["loss"], None
        judged = judge is not None and folder.name.startswith("step-") and loss is not None
        stopping = judged and judge.judge(loss)
        start = time.perf_counter()
        # one decision for all ranks (a clock's is its own): saving the state is collective under FSDP
        due = fabric.broadcast(start - clock.last_resume >= every, src=0)
        save_light(fabric, train_state, tokenizer_dir, folder, orig_save, due and not stopping,
                   clock.info.get("last_step"), clock)
        clock.span("checkpoints", start)
        if judged:  # recorded once the checkpoint is complete on disk
            judge.record(fabric, folder.name, loss)
        if stopping:
            raise EarlyStop(f"early stop at {folder.name}: no improvement in {judge.patience} evaluations "
                            f"(best val loss {judge.best:.4f})")

    def fit(**kwargs):
        fabric, train, state = kwargs["fabric"], kwargs["train"], kwargs["state"]
        accumulation = train.gradient_accumulation_iters(kwargs["devices"], kwargs.get("num_nodes", 1))
        per_iteration = train.micro_batch_size * state["model"].max_seq_length
        max_iters = (train.max_tokens // fabric.world_size) // per_iteration  # LitGPT's loop bound
        device = fabric.device
        clock.info.update(last_step=max_iters // accumulation, accumulation=accumulation,
                          tokens_per_iteration=per_iteration * fabric.world_size, devices=fabric.world_size,
                          device=_device_name(device), environment=environment(device))
        kwargs["train_dataloader"] = _TimedLoader(kwargs["train_dataloader"], clock.marks)
        clock.last_resume = time.perf_counter()
        try:
            return orig_fit(**kwargs)
        finally:
            clock.fit_end = time.perf_counter()

    pretrain.validate, pretrain.save_checkpoint, pretrain.fit = validate, save_checkpoint, fit


def _device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def environment(device) -> dict:
    """What decides a run's bits besides its inputs: two runs agree bitwise on CPU only with the
    same torch, thread count and processor (docs/trainers.md, Reproducibility)."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"device": _device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "threads": torch.get_num_threads(), "cpu": cpu, "python": platform.python_version()}


def config_path(argv: list[str]) -> Path:
    """RUN/config.yaml from `pretrain --config RUN/config.yaml` (or `--config=...`)."""
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if a.startswith("--config="):
            return Path(a.split("=", 1)[1])
    raise SystemExit("usage: python -m mixer_litgpt.launch pretrain --config RUN/config.yaml")


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def main(argv: list[str]) -> int:
    if argv[:1] != ["pretrain"]:
        raise SystemExit("usage: python -m mixer_litgpt.launch pretrain --config RUN/config.yaml")
    clock = Clock()
    config = config_path(argv)
    run_dir = config.parent
    hooks_file = run_dir / HOOKS
    hooks = json.loads(hooks_file.read_text()) if hooks_file.is_file() else {}
    install(hooks, run_dir / "early_stopping.jsonl", clock, resume_step(config))
    resume_on_any_ranks()
    from litgpt.__main__ import main as litgpt_main

    # LitGPT parses sys.argv, and re-parses it as `litgpt pretrain ...` to save
    # hyperparameters.yaml; Lightning re-runs it to start the other ranks. It is left as is.
    try:
        litgpt_main()
    except EarlyStop as e:
        if _rank() == 0:
            print(f"mixer: {e}", flush=True)
    if _rank() == 0:
        with open(run_dir / TIMING, "a") as f:
            f.write(json.dumps(clock.summary()) + "\n")
    _leave()
    return 0


def _leave() -> None:
    """Leave a run of several ranks without the interpreter's teardown. Every rank waits for
    the others at a barrier (nothing is in flight after it; each rank's files are closed or
    flushed), then exits at once. Left to the interpreter, the destructors of gloo's and the
    store's C++ threads sometimes abort a finished CPU run ("terminate called without an
    active exception", exit 134): seen in CI after the last checkpoint was written, once with
    the process group left to exit and once after destroying it explicitly."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
