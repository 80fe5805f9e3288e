"""LitGPT's checkpoints in a run: RUN/out/step-*/ and RUN/out/final/, each holding
lit_model.pth (the model weights in their training dtype, with step_count and iter_num) and
model_config.yaml; the latest step checkpoint of an unfinished run also holds resume.pth
(LitGPT's whole pretrain state: model, optimizer, loader position, counts), which launch.py
writes and deletes (docs/trainers.md). Runs of an older mixer hold the whole state in every
lit_model.pth. Finetunes start from a parent checkpoint converted once with LitGPT's
convert_pretrained_checkpoint into PARENT/converted/<checkpoint>/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mixer.errors import MixerError

WEIGHTS, MODEL_CONFIG, RESUME = "lit_model.pth", "model_config.yaml", "resume.pth"


def _step_number(p: Path) -> int:
    return int(p.name.split("-")[1])


def checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders in training order: out/step-*, then out/final."""
    out = Path(run_dir) / "out"
    steps = sorted(out.glob("step-*"), key=_step_number)
    final = out / "final"
    return steps + ([final] if final.is_dir() else [])


def resume_point(run_dir: Path) -> Path | None:
    """The state an interrupted run resumes from: the latest step checkpoint's resume.pth (written
    whole under a temporary name, so never torn); for a run of an older mixer, whose every
    lit_model.pth held the whole state, the last one that does. None: start from the beginning."""
    out = Path(run_dir) / "out"
    latest = max(out.glob(f"step-*/{RESUME}"), key=lambda p: _step_number(p.parent), default=None)
    if latest is not None:
        return latest
    older = max(out.glob(f"step-*/{WEIGHTS}"), key=lambda p: _step_number(p.parent), default=None)
    return older if older is not None and "optimizer" in _load_state(older) else None


def drop_resume_states(run_dir: Path) -> list[Path]:
    """After a run finished: the resume states and torn temporary files nothing will read."""
    out = Path(run_dir) / "out"
    gone = [*out.glob(f"step-*/{RESUME}"), *out.glob(f"*/.{WEIGHTS}.partial"), *out.glob(f"*/.{RESUME}.partial")]
    for f in gone:
        f.unlink(missing_ok=True)
    return gone


def _load_state(weights: Path) -> dict:
    import torch

    if not weights.is_file():
        raise MixerError(f"{weights}: missing; the checkpoint is incomplete (was the run killed while saving?)")
    try:
        return torch.load(weights, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        raise MixerError(f"{weights}: cannot read the checkpoint ({why})") from None


def step_of(ckpt: Path) -> int:
    """Optimizer steps of a pretraining checkpoint (a converted one has no count: refused)."""
    state = _load_state(Path(ckpt) / WEIGHTS)
    if "model" not in state:
        raise MixerError(f"{ckpt}: not a LitGPT pretraining checkpoint (no optimizer step count); pass a step-*/final "
                         "folder of a mixer run")
    return int(state.get("step_count", 0))


def model_config(ckpt: Path) -> dict:
    import yaml

    f = Path(ckpt) / MODEL_CONFIG
    if not f.is_file():
        raise MixerError(f"{f}: missing; the checkpoint is incomplete (was the run killed while saving?)")
    return yaml.safe_load(f.read_text())


def load_checkpoint(ckpt_dir: Path, device: str):
    """(GPT model in eval mode, optimizer step count); one-line errors for missing or corrupt files."""
    from litgpt.model import GPT, Config

    weights = Path(ckpt_dir) / WEIGHTS
    cfg = model_config(ckpt_dir)
    state = _load_state(weights)
    try:
        config = Config(**cfg)
    except Exception as e:  # noqa: BLE001 - Config raises TypeError/ValueError for a foreign file
        why = f"{type(e).__name__}: {e}"
        raise MixerError(f"{Path(ckpt_dir) / MODEL_CONFIG}: not a LitGPT model config ({why})") from None
    params = state.get("model", state)  # raw pretrain checkpoint or converted state dict
    params = {k.replace("_orig_mod.", ""): v for k, v in params.items()}
    model = GPT(config)
    try:
        model.load_state_dict(params)
    except RuntimeError as e:
        raise MixerError(f"{weights}: does not fit its model_config.yaml ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), int(state.get("step_count", 0))


def convert_checkpoint(src: Path, dest: Path) -> None:
    """LitGPT's convert_pretrained_checkpoint into a temporary folder, then renamed: done once per
    parent checkpoint and shared by every finetune (and grid point) that starts from it."""
    if (dest / WEIGHTS).is_file():
        return
    from litgpt.scripts.convert_pretrained_checkpoint import convert_pretrained_checkpoint

    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")  # concurrent finetunes of one parent each convert
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        convert_pretrained_checkpoint(src, tmp)
    except Exception as e:  # noqa: BLE001
        shutil.rmtree(tmp, ignore_errors=True)
        raise MixerError(f"{src}: LitGPT could not convert the checkpoint ({type(e).__name__}: {e})") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(dest)
    except OSError:  # another finetune renamed its identical copy first
        shutil.rmtree(tmp, ignore_errors=True)
