"""LitGPT adapter: `trainer.TRAINER` implements mixer's trainer protocol
(`mixer.training.trainer.Trainer`; registered as `litgpt`), and `MixData` is the DataModule
LitGPT loads by class_path (`mixer_litgpt.MixData`) from a run's config.yaml.

Only `data` is imported here: LitGPT imports this package inside its own process, and the
rest (the trainer, presets, config writing, checkpoints) is for mixer's side.
"""

from .data import MixData, MixLoader, MixStream

__all__ = ["MixData", "MixLoader", "MixStream"]
