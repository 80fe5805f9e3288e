"""Installed as users install it: the wheel, in a fresh environment, outside the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.mixutil import make_stores

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(REPO)], check=True, capture_output=True, cwd=tmp_path)
    wheel = next(wheels.glob("mixer-*.whl"))
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    # The dependencies come from this environment's site-packages (no network in tests); the
    # .pth line adds that folder only, not its editable-install hooks, so `mixer` itself can
    # only come from the wheel.
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True)
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MIXER_RECIPES")}
    mixer = [str(py), "-m", "mixer"]

    where = subprocess.check_output([str(py), "-c", "import mixer; print(mixer.__file__)"], cwd=run_dir, env=env,
                                    text=True)
    assert where.startswith(str(env_dir)), where
    # the LitGPT adapter installs under mixer's namespace and registers as a trainer; the
    # repository's folder name is not a top-level package of the install
    probe = ("import importlib.util as u, json; from mixer.training.registry import entry_points; "
             "import mixer_litgpt; print(json.dumps([entry_points(), mixer_litgpt.__file__, "
             "u.find_spec('trainer_adapters') is None]))")
    eps, adapter, no_generic = json.loads(subprocess.check_output([str(py), "-c", probe], cwd=run_dir, env=env,
                                                                  text=True))
    assert eps == {"litgpt": "mixer_litgpt.trainer:TRAINER"} and adapter.startswith(str(env_dir)) and no_generic
    listing = json.loads(subprocess.check_output(mixer + ["recipes", "--json"], cwd=run_dir, env=env, text=True))
    names = {r["recipe"] for r in listing["recipes"]}
    assert {"samples", "dolma", "stages/spt", "stages/compute-matched"} <= names

    # a small tokenize and build with the installed package
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["a b c d e f g h"], trainers.WordLevelTrainer(special_tokens=["[UNK]", "<|endoftext|>"]))
    tok.save(str(run_dir / "tokenizer.json"))
    for name, role in (("dom", "domain"), ("web", "general")):
        with open(run_dir / f"{name}.jsonl", "w") as f:
            for i in range(300):
                f.write(json.dumps({"id": f"{name}{i}", "text": " ".join("abcdefgh"[(i * j) % 8] for j in range(30))}) + "\n")
        p = subprocess.run(mixer + ["tokenize", "--source", name, "--role", role, "--input", f"{name}.jsonl",
                                    "--tokenizer", "tokenizer.json"], cwd=run_dir, env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
    p = subprocess.run(mixer + ["build", "--domain", "dom", "--fraction", "0.1", "--tokens", "4K", "--seq-len", "16",
                                "--quiet"], cwd=run_dir, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (run_dir / "mixes" / "dom-f0.1-4K" / "manifest.json").is_file()


def test_recipes_resolve_by_name_from_the_package():
    from mixer.recipe_catalog import find_recipe, recipes_dir

    assert find_recipe("stages/spt") == recipes_dir() / "stages" / "spt.toml"
    assert find_recipe("spt") == recipes_dir() / "stages" / "spt.toml"
    assert (recipes_dir() / "samples.toml").read_text() == (REPO / "recipes" / "samples.toml").read_text()
