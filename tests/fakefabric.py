"""A stand-in for Lightning's Fabric on one rank, enough for launch.py's checkpoint hooks:
`save` writes what Fabric would (state dicts of modules and optimizers, the rest as is)."""

from __future__ import annotations

from pathlib import Path

import torch


class FakeFabric:
    global_rank = 0
    world_size = 1

    def barrier(self) -> None:
        pass

    def broadcast(self, obj, src: int = 0):
        return obj

    def save(self, path, state: dict) -> None:
        torch.save({k: v.state_dict() if hasattr(v, "state_dict") else v for k, v in state.items()}, path)


def litgpt_save(fabric, state: dict, tokenizer_dir, checkpoint_file) -> None:
    """litgpt.pretrain.save_checkpoint's files: the state, and a config file beside it."""
    Path(checkpoint_file).parent.mkdir(parents=True, exist_ok=True)
    fabric.save(checkpoint_file, state)
    (Path(checkpoint_file).parent / "model_config.yaml").write_text("name: tiny\n")
