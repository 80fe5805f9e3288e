"""The README's command-line tour (its data half) runs verbatim on the sample corpora."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def commands(block: str) -> list[str]:
    """The `mixer` command lines of a block, comments cut, `a && b` as two commands."""
    lines = [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("mixer ")]
    return [part.strip() for line in lines for part in line.split("&&")]


def tour() -> list[str]:
    text = README.read_text()
    block = re.search(r"A tour of the command line.*?```\n(.*?)```", text, re.S).group(1)
    return commands(block)


def training_half() -> list[str]:
    text = README.read_text()
    return commands(re.search(r"The training half runs verbatim.*?```\n(.*?)```", text, re.S).group(1))


@pytest.mark.slow
def test_readme_tour_runs(sample_cache, tmp_path):
    commands = tour()
    assert commands[0] == "mixer fetch-samples" and any(c.startswith("mixer audit") for c in commands)
    env = {**os.environ, "MIXER_CACHE": str(sample_cache)}
    training = training_half()
    assert training[0].startswith("mixer train pretrain") and any(c.startswith("mixer report") for c in training)
    for cmd in [*commands, *training]:
        args = shlex.split(cmd)[1:] + (["--quiet"] if cmd.startswith(("mixer build", "mixer verify")) else [])
        p = subprocess.run([sys.executable, "-m", "mixer", *args], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert p.returncode == 0, f"{cmd}: {p.stderr[-2000:]}"
    assert (tmp_path / "mixes/music-f0.02-20M/manifest.json").is_file()
    assert (tmp_path / "report" / "report.md").is_file()
