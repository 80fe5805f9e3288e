"""Model presets: architecture plus the training defaults that go with it.

Every preset takes its vocabulary from the mix's tokenizer (the manifest's vocab_size),
padded by LitGPT's `Config` to a multiple of `padding_multiple`. `tiny`/`small` are CPU
models for tests and the laptop study. The `olmo-*` presets are the paper's OLMo-1B shape
(2048 wide, 16 heads, SwiGLU 8192, non-parametric LayerNorm, RoPE, no biases, 2048 context)
with depth varied for the 300M/600M/3B sizes; their padding multiple, 128, gives OLMo's
50280 ids the paper's 50304 rows, and Llama 3's 128256 and OLMo 2's 100278 ids the 128256
and 100352 of those models. With the paper's settings: AdamW
(0.9, 0.95), eps 1e-5, clip 1.0, pretraining cosine 4e-4 -> 4e-5 with weight decay 0.1
and tied embeddings, finetuning batch 512 with weight decay 1e-7 and untied embeddings.

No preset sets a finetuning learning rate: mixer finetunes at multiples of the rate the
parent's pretraining had reached (`mixer.training.schedules`), the paper's regime whatever
the model's own pretraining rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mixer.errors import MixerError, UsageError
from mixer.training.schedules import PAPER_WARMUPS


@dataclass(frozen=True)
class Preset:
    name: str
    model: dict  # litgpt.Config fields but vocab_size, which is the mix's
    pretrain: dict = field(default_factory=dict)  # lr, min_lr, warmup_fraction, batch, micro_batch, weight_decay
    finetune: dict = field(default_factory=dict)  # warmup (steps, or a grid of them), batch, micro_batch, weight_decay

    def model_config(self, vocab_size: int, seq_len: int) -> dict:
        """The LitGPT model_config for a mix with this vocabulary and sample length, with the
        padded vocabulary LitGPT's Config derives written out (config.yaml says every size)."""
        from litgpt.config import Config

        cfg = dict(self.model, vocab_size=vocab_size)
        cfg["padded_vocab_size"] = Config(**cfg).padded_vocab_size
        if seq_len > cfg["block_size"]:
            raise MixerError(
                f"model {self.name}: context {cfg['block_size']} is shorter than the mix's samples ({seq_len} tokens); "
                f"build the mix with --seq-len {cfg['block_size']} or less"
            )
        return cfg


ADAM = {"betas": [0.9, 0.95], "eps": 1e-5}  # the paper's AdamW settings


def _cpu(name: str, n_layer: int, n_embd: int, n_head: int, block: int) -> Preset:
    model = dict(name=f"mixer-{name}", block_size=block, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                 padding_multiple=64, rotary_percentage=1.0, parallel_residual=False, bias=False,
                 norm_class_name="LayerNorm", mlp_class_name="GptNeoxMLP", intermediate_size=4 * n_embd)
    # Small models want larger learning rates than the paper's 1B; the 10x cosine floor is the paper's.
    # One finetuning warmup, not the paper's grid of 50-200 steps: a CPU finetune is tens of steps.
    return Preset(name, model,
                  pretrain=dict(lr=3e-3, min_lr=3e-4, warmup_fraction=0.05, batch=16, micro_batch=16, weight_decay=0.1,
                                tie_embeddings=True),
                  finetune=dict(warmup=5, batch=16, micro_batch=16, weight_decay=1e-7, tie_embeddings=False))


def _olmo(name: str, n_layer: int) -> Preset:
    model = dict(name=f"OLMo-{name}-mixer", block_size=2048, n_layer=n_layer, n_embd=2048, n_head=16,
                 padding_multiple=128, rotary_percentage=1.0, parallel_residual=False, bias=False,
                 norm_class_name="LayerNorm", mlp_class_name="LLaMAMLP", intermediate_size=8192)
    # "OLMo" in the name makes LitGPT use the non-parametric LayerNorm of OLMo.
    return Preset(f"olmo-{name.lower()}", model,
                  pretrain=dict(lr=4e-4, min_lr=4e-5, warmup_fraction=0.01, batch=2048, micro_batch=8,
                                weight_decay=0.1, tie_embeddings=True),
                  finetune=dict(warmup=PAPER_WARMUPS, batch=512, micro_batch=8, weight_decay=1e-7,
                                tie_embeddings=False))


PRESETS: dict[str, Preset] = {p.name: p for p in [
    _cpu("tiny", n_layer=2, n_embd=64, n_head=4, block=128),
    _cpu("small", n_layer=4, n_embd=128, n_head=4, block=256),
    _olmo("300M", n_layer=3),   # ~0.30B with tied embeddings
    _olmo("600M", n_layer=7),   # ~0.57B
    _olmo("1B", n_layer=16),    # the paper's model, ~1.18B
    _olmo("3B", n_layer=44),    # ~3.05B
]}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UsageError(f"--model: unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    return PRESETS[name]
