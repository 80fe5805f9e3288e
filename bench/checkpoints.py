"""Bytes (and write time) of a LitGPT checkpoint as mixer writes it, for a model preset, on CPU.

Instantiates the preset (GPT-2's vocabulary), sets it up with a real Lightning Fabric in the
given precision, gives AdamW its state (one step on zero gradients: the moments exist, as after
any step), and saves one step checkpoint through launch.save_light, the hook every run uses:
lit_model.pth (the weights alone) and resume.pth (LitGPT's whole state: what every checkpoint
held before). Prints both sizes and times.

    python bench/checkpoints.py --model olmo-1b --precision bf16-true                  # peak RSS 14 GB
    python bench/checkpoints.py --model olmo-1b --precision 32-true --weights-only
    python bench/checkpoints.py --model olmo-1b --precision 32-true                    # ~28 GB

Zero gradients are expanded views of one element (no memory) and AdamW runs per tensor; the
peak RSS measured was still twice the state (14.2 GB for bf16-true's 7.1 GB). bf16-mixed keeps
float32 weights: its files are 32-true's.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/ holds tokenize.py, which would shadow the standard library's for everything imported here
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="olmo-1b")
    ap.add_argument("--precision", default="32-true", choices=["32-true", "bf16-true", "bf16-mixed"])
    ap.add_argument("--vocab", type=int, default=50257, help="tokenizer ids (GPT-2's by default)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    ap.add_argument("--weights-only", action="store_true",
                    help="no optimizer state and no resume.pth: the weights file alone (half the memory)")
    a = ap.parse_args()

    import lightning as L
    import torch
    from litgpt.model import GPT, Config
    from litgpt.utils import save_config

    from mixer_litgpt import launch
    from mixer_litgpt.presets import get_preset

    fabric = L.Fabric(accelerator="cpu", devices=1, precision=a.precision)
    cfg = get_preset(a.model).model_config(a.vocab, 2048 if a.model.startswith("olmo") else 128)
    t = time.perf_counter()
    with fabric.init_module():
        model = GPT(Config(**cfg))
    model.transformer.wte.weight = model.lm_head.weight  # tied, as pretraining (the paper's) has them
    params = sum(p.numel() for p in model.parameters())
    model = fabric.setup(model)
    optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=4e-4, foreach=False))
    if not a.weights_only:
        for p in model.parameters():
            p.grad = torch.zeros(1, dtype=p.dtype).expand_as(p)
        optimizer.step()
        for p in model.parameters():
            p.grad = None
    print(f"{a.model} ({params / 1e9:.3f}B parameters, tied embeddings, vocab {cfg['padded_vocab_size']}), "
          f"{a.precision}, weights {next(model.parameters()).dtype}: set up in {time.perf_counter() - t:.1f} s",
          flush=True)

    def litgpt_files(fabric, state, tokenizer_dir, checkpoint_file):  # litgpt's save_checkpoint less its argv dump
        fabric.save(checkpoint_file, state)
        save_config(state["model"].config, Path(checkpoint_file).parent)

    root = Path(tempfile.mkdtemp(prefix="mixer-ckpt-", dir=a.dir))
    try:
        state = {"model": model, "optimizer": optimizer, "train_dataloader": {"iteration": 0}, "iter_num": 1,
                 "step_count": 1}
        folder = root / "out" / "step-00000001"
        t = time.perf_counter()
        launch.save_light(fabric, state, None, folder, litgpt_files, resume=not a.weights_only, last_step=None)
        seconds = time.perf_counter() - t
        light = (folder / "lit_model.pth").stat().st_size
        print(f"weights only (lit_model.pth): {light:,} bytes ({light / 1e9:.2f} GB, {light / params:.2f} B/param)")
        if not a.weights_only:
            full = (folder / "resume.pth").stat().st_size
            print(f"full state (resume.pth, LitGPT's own checkpoint): {full:,} bytes ({full / 1e9:.2f} GB, "
                  f"{full / params:.2f} B/param); ratio full / weights {full / light:.2f}x")
        print(f"written in {seconds:.1f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
