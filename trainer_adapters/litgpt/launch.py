"""`litgpt pretrain --config`, plus the two things LitGPT's loop lacks: WSD / long-horizon
cosine schedules, and early stopping on the validation loss of each saved checkpoint.

    python -m trainer_adapters.litgpt.launch RUN/config.yaml RUN/launch.json

Both hook module-level functions of litgpt.pretrain (pinned 0.5.13): `get_lr` is replaced;
`validate` is wrapped to remember the last loss, and `save_checkpoint` to judge it right
after the checkpoint is complete on disk, so the stop never leaves a half-written file.
Each judgement is appended to RUN/early_stopping.jsonl, which also restores the state on
--resume. Without hooks this is exactly `litgpt pretrain --config RUN/config.yaml`.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


class EarlyStop(Exception):
    pass


def schedule_lr(kind: str, lr: float, it: int, warmup: int, max_iters: int, min_lr: float,
                horizon: int | None = None, decay_fraction: float = 0.2) -> float:
    """Learning rate at micro-batch iteration `it` (LitGPT counts warmup and length in
    iterations): mixer's one definition of the schedules, `mixer.training.schedules.lr_at`."""
    from mixer.training.schedules import lr_at

    return lr_at(it, lr, min_lr, warmup, max_iters, kind, horizon, decay_fraction)


def install(hooks: dict, log_file: Path) -> None:
    from litgpt import pretrain

    for name in ("get_lr", "validate", "save_checkpoint"):
        if not hasattr(pretrain, name):
            raise RuntimeError(f"litgpt.pretrain has no {name}(); this launcher supports litgpt 0.5.13")

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


def main(argv: list[str]) -> int:
    config, hooks_file = Path(argv[0]), Path(argv[1])
    hooks = json.loads(hooks_file.read_text())
    install(hooks, hooks_file.parent / "early_stopping.jsonl")
    from litgpt.__main__ import main as litgpt_main

    # litgpt saves hyperparameters.yaml by re-parsing sys.argv as `litgpt pretrain ...`.
    sys.argv = ["litgpt", "pretrain", "--config", str(config)]
    try:
        litgpt_main()
    except EarlyStop as e:
        print(f"mixer: {e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
