"""Trainer adapters: one folder per training framework, each with a `trainer.py` whose
`TRAINER` implements `mixer.training.trainer.Trainer`. `litgpt/` is the one we ship.

Adapters depend on mixer, never the reverse: mixer reaches them only by name, through
`mixer.training.registry` (docs/trainers.md). What runs inside a trainer's own process
reads a mix with `mixer.formats.mix` (numpy alone), so it needs nothing else of mixer.
"""
