"""`litgpt pretrain --config`, plus what LitGPT's loop lacks: WSD / long-horizon cosine
schedules, early stopping on the validation loss of each saved checkpoint, DDP where FSDP
cannot run (CPU ranks), and resuming on another device count.

    python -m trainer_adapters.litgpt.launch pretrain --config RUN/config.yaml

takes the same arguments as `litgpt pretrain`, so that Lightning, which starts ranks 1..N-1
by re-running this process's command line, starts each of them the same way; the hooks are
read from launch.json beside the config (none when it is missing).

The hooks replace or wrap module-level functions of litgpt.pretrain (pinned 0.5.13): `get_lr`
is replaced; `validate` is wrapped to remember the last loss, and `save_checkpoint` to judge it
right after the checkpoint is complete on disk, so the stop never leaves a half-written file.
Each judgement is appended to RUN/early_stopping.jsonl, which also restores the state on
--resume. Without hooks this is exactly `litgpt pretrain --config RUN/config.yaml`, except
that a resumed run may have another number of ranks (`resume_on_any_ranks`).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

HOOKS = "launch.json"


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


def install(hooks: dict, log_file: Path) -> None:
    from litgpt import pretrain

    _require(pretrain, ("get_lr", "validate", "save_checkpoint"))
    if hooks.get("strategy"):
        use_strategy(hooks["strategy"])

    sched = hooks.get("schedule")
    if sched:
        def get_lr(learning_rate: float, it: int, warmup_iters: int, max_iters: int, min_lr: float) -> float:
            return schedule_lr(sched["kind"], learning_rate, it, warmup_iters, max_iters, min_lr,
                               sched.get("horizon_iters"), sched.get("decay_fraction", 0.2))

        pretrain.get_lr = get_lr

    stop = hooks.get("early_stopping")
    if not stop:
        return
    patience, min_delta = int(stop["patience"]), float(stop.get("min_delta", 0.0))
    state = {"best": math.inf, "bad": 0, "last": None}
    if log_file.exists():  # resuming: the judgements so far still count
        for line in log_file.read_text().splitlines():
            row = json.loads(line)
            state["best"], state["bad"] = row["best_loss"], row["without_improvement"]

    orig_validate, orig_save = pretrain.validate, pretrain.save_checkpoint

    def validate(fabric, model, val_dataloader, max_iters, verbose=True):
        loss = orig_validate(fabric, model, val_dataloader, max_iters, verbose)
        if verbose:  # verbose=False is LitGPT's 2-batch sanity check, not an evaluation
            state["last"] = float(loss)
        return loss

    def save_checkpoint(fabric, train_state, tokenizer_dir, checkpoint_file):
        orig_save(fabric, train_state, tokenizer_dir, checkpoint_file)
        name = Path(checkpoint_file).parent.name
        loss, state["last"] = state["last"], None
        if not name.startswith("step-") or loss is None:
            return
        # Every rank evaluates the whole held-out set on the same weights, so every rank
        # reaches the same judgement and stops at the same checkpoint.
        if loss < state["best"] - min_delta:
            state["best"], state["bad"] = loss, 0
        else:
            state["bad"] += 1
        if fabric.global_rank == 0:
            with open(log_file, "a") as f:
                f.write(json.dumps({"checkpoint": name, "val_loss": loss, "best_loss": state["best"],
                                    "without_improvement": state["bad"]}) + "\n")
        if state["bad"] >= patience:
            raise EarlyStop(f"early stop at {name}: no improvement in {patience} evaluations "
                            f"(best val loss {state['best']:.4f})")

    pretrain.validate, pretrain.save_checkpoint = validate, save_checkpoint


def config_path(argv: list[str]) -> Path:
    """RUN/config.yaml from `pretrain --config RUN/config.yaml` (or `--config=...`)."""
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if a.startswith("--config="):
            return Path(a.split("=", 1)[1])
    raise SystemExit("usage: python -m trainer_adapters.litgpt.launch pretrain --config RUN/config.yaml")


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def main(argv: list[str]) -> int:
    if argv[:1] != ["pretrain"]:
        raise SystemExit("usage: python -m trainer_adapters.litgpt.launch pretrain --config RUN/config.yaml")
    hooks_file = config_path(argv).parent / HOOKS
    hooks = json.loads(hooks_file.read_text()) if hooks_file.is_file() else {}
    install(hooks, hooks_file.parent / "early_stopping.jsonl")
    resume_on_any_ranks()
    from litgpt.__main__ import main as litgpt_main

    # LitGPT parses sys.argv, and re-parses it as `litgpt pretrain ...` to save
    # hyperparameters.yaml; Lightning re-runs it to start the other ranks. It is left as is.
    try:
        litgpt_main()
    except EarlyStop as e:
        if _rank() == 0:
            print(f"mixer: {e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
