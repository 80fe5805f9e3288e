"""Where a `mixer train` command's time went, and the throughput and model FLOPs utilization
(MFU) of its training steps, against a table of peak
dense bf16 FLOP/s of common accelerators (Lightning's table has no plain "NVIDIA H200", the
name torch reports on an H200 SXM, and lists sparse figures for some parts).

MFU = tokens/s x model FLOPs per token / (devices x peak), with the model FLOPs per token as
the trainer counts them (LitGPT: Lightning's `measure_flops` of a forward and backward pass).
The peak is for bf16 (or fp16) tensor-core matmuls without sparsity, so MFU is given for runs
in bf16 or fp16 precision only: a 32-true run on a GPU runs its matmuls in fp32 or TF32, whose
peaks are other numbers.
"""

from __future__ import annotations

# (name, substrings the lower-cased device name must all contain, peak dense bf16 FLOP/s per
# device, source). First match wins, so the specific parts come before the family.
PEAKS: list[tuple[str, tuple[str, ...], float, str]] = [
    ("B200", ("b200",), 2.25e15,
     "NVIDIA HGX B200 datasheet: FP16/BF16 tensor core 4.5 PFLOPS per GPU with 2:4 sparsity, halved for dense"),
    ("H200 NVL", ("h200", "nvl"), 835.5e12,
     "NVIDIA H200 datasheet (H200 NVL): BF16 tensor core 1,671 TFLOPS with sparsity, halved for dense"),
    ("H200", ("h200",), 989.5e12,
     "NVIDIA H200 datasheet (H200 SXM): BF16 tensor core 1,979 TFLOPS with sparsity, halved for dense"),
    ("H100 NVL", ("h100", "nvl"), 835.5e12,
     "NVIDIA H100 datasheet (H100 NVL, per GPU): BF16 tensor core 1,671 TFLOPS with sparsity, halved for dense"),
    ("H100 PCIe", ("h100", "pcie"), 756e12,
     "NVIDIA H100 datasheet (H100 PCIe): BF16 tensor core 1,513 TFLOPS with sparsity, halved for dense"),
    ("H100", ("h100",), 989.5e12,
     "NVIDIA H100 datasheet (H100 SXM, torch's 'NVIDIA H100 80GB HBM3'): BF16 tensor core 1,979 TFLOPS with "
     "sparsity, halved for dense"),
    ("A100", ("a100",), 312e12,
     "NVIDIA A100 datasheet: BF16 tensor core 312 TFLOPS dense (624 with sparsity), SXM and PCIe alike"),
]
MFU_PRECISIONS = ("bf16-mixed", "bf16-true", "16-mixed", "16-true", "bf16", "16")


def peak_flops(device: str | None) -> tuple[str, float, str] | None:
    """(table entry, peak dense bf16 FLOP/s per device, source) for a device name as torch
    reports it (`torch.cuda.get_device_name`), or None when the table has no entry."""
    name = (device or "").lower()
    for entry, parts, flops, source in PEAKS:
        if all(p in name for p in parts):
            return entry, flops, source
    return None


def throughput(tokens: int, seconds: float, flops_per_token: float | None, device: str | None, devices: int,
               precision: str | None) -> dict:
    """run.json's `throughput`: tokens per second over the training steps and, where the table
    knows the device and the precision is bf16/fp16, MFU; `mfu_note` says why it is missing."""
    tps = tokens / seconds if seconds > 0 else None
    out: dict = {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_second": round(tps, 1) if tps else None,
                 "device": device, "devices": devices, "precision": precision,
                 "flops_per_token": flops_per_token, "model_flops_per_second": None, "peak": None, "mfu": None}
    if tps and flops_per_token:
        out["model_flops_per_second"] = tps * flops_per_token
    peak = peak_flops(device)
    if peak is None:
        out["mfu_note"] = f"no peak-FLOPs entry for {device!r} (mixer.training.throughput.PEAKS)"
    elif precision not in MFU_PRECISIONS:
        out["mfu_note"] = f"precision {precision}: the table holds bf16/fp16 tensor-core peaks"
    elif out["model_flops_per_second"]:
        entry, flops, source = peak
        out["peak"] = {"device": entry, "flops_per_second": flops, "source": source}
        out["mfu"] = out["model_flops_per_second"] / (flops * max(1, devices))
    return out


PARTS = ("startup", "compile", "train_steps", "validation", "checkpoints")


def breakdown(trainer: dict | None, training: float, evaluation: float | None, total: float) -> dict:
    """run.json's `time`, in seconds: the command's wall time (`seconds`), its training launch,
    and, from the trainer's account of that launch (`trainer`, None when it gives none), its
    startup, compile, training steps, validation during training and checkpoint writes; then
    the evaluation of the checkpoints afterwards, and the rest (`other`: planning, converting a
    parent checkpoint, reading logs, what the trainer did not account for)."""
    out = {"seconds": round(total, 3), "training": round(training, 3)}
    parts = {k: float(trainer[k]) for k in PARTS if trainer and trainer.get(k) is not None}
    out.update({k: round(v, 3) for k, v in parts.items()})
    out["evaluation"] = round(evaluation, 3) if evaluation is not None else None
    accounted = (sum(parts.values()) if parts else training) + (evaluation or 0.0)
    out["other"] = round(total - accounted, 3)
    if "train_steps" in parts and total > 0:
        out["train_steps_share"] = round(parts["train_steps"] / total, 4)
    return out
