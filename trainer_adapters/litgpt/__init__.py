"""LitGPT adapter: the DataModule (`trainer_adapters.litgpt.MixData`, loadable by
class_path from a LitGPT YAML), model presets, the config writer, the launcher and the
log reader used by `mixer train` / `mixer eval`.

Only `data` is imported here: LitGPT imports this package inside its own process, and the
rest (presets, config writing) is for mixer's side.
"""

from .data import MixData, MixLoader, MixStream

__all__ = ["MixData", "MixLoader", "MixStream"]
