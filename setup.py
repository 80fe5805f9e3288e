"""Packaging that pyproject.toml cannot say: each trainer adapter folder trainer_adapters/<name>/
installs under mixer's namespace as the package `mixer_<name>` (the repository keeps the folder
its design names) and registers itself in the entry point group `mixer.trainers`, where
third-party trainers register too (mixer.training.registry reads the group)."""

from pathlib import Path

from setuptools import find_packages, setup

ADAPTERS = sorted(p.parent.name for p in (Path(__file__).parent / "trainer_adapters").glob("*/trainer.py"))

setup(
    packages=[*find_packages(include=["mixer", "mixer.*"], exclude=["mixer.recipes", "mixer.recipes.*"]),
              *(f"mixer_{name}" for name in ADAPTERS)],
    package_dir={f"mixer_{name}": f"trainer_adapters/{name}" for name in ADAPTERS},
    entry_points={"console_scripts": ["mixer = mixer.cli:main"],
                  "mixer.trainers": [f"{name} = mixer_{name}.trainer:TRAINER" for name in ADAPTERS]},
)
