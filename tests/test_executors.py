"""One executor for every command: flags, job scripts, a build on a (stand-in) Slurm cluster
that matches the local bytes, and reruns while jobs are queued."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixer.errors import UsageError
from mixer.executors import Executor
from tests import fake_slurm
from tests.mixutil import make_stores

SBATCH_LINE = re.compile(r"^#SBATCH --[a-z-]+(=\S+)?$")


def mixer(env, cwd, *args):
    return subprocess.run([sys.executable, "-m", "mixer", *map(str, args)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def mix_bytes(mix: Path) -> dict:
    return {p.relative_to(mix).as_posix(): p.read_bytes() for p in sorted(mix.rglob("*"))
            if p.is_file() and ".build" not in p.parts}


def check_script(script: str) -> None:
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    directives = [x for x in lines if x.startswith("#SBATCH")]
    assert directives and all(SBATCH_LINE.match(x) or x == "#SBATCH --requeue" for x in directives), directives
    assert not any(x.startswith(("#SBATCH --partition", "#SBATCH --qos")) and "=" not in x for x in directives)
    assert f"source {sys.prefix}/bin/activate" in script or f"export PATH={Path(sys.executable).parent}" in script


def test_flags_are_validated():
    for bad, flag in ((Executor(tasks=0), "--tasks"), (Executor(workers=0), "--workers"),
                      (Executor(mem_per_cpu_gb=0), "--mem-per-cpu"), (Executor(ray_address="auto"), "--ray-address"),
                      (Executor(kind="lsf"), "--executor")):
        with pytest.raises(UsageError, match=flag):
            bad.validate()


def test_build_on_slurm_matches_local_bytes(tmp_path):
    stores = make_stores(tmp_path / "stores")
    env = fake_slurm.install(tmp_path, "run")
    common = ["build", "--stores", stores, "--domain", "music", "--fraction", "0.05", "--tokens", "40K",
              "--seq-len", "32", "--samples-per-shard", "200", "--quiet"]
    p = mixer(env, tmp_path, *common, "--out", tmp_path / "slurm", "--executor", "slurm", "--tasks", "3",
              "--partition", "cpu", "--cpus-per-task", "2", "--mem-per-cpu", "2.5", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout)["status"] == "done"  # the stand-in runs jobs as they are submitted
    scripts = fake_slurm.job_scripts(env)
    for s in scripts:
        check_script(s)
    assert "#SBATCH --partition=cpu" in scripts[0] and "#SBATCH --cpus-per-task=2" in scripts[0]
    assert "#SBATCH --mem-per-cpu=2560M" in scripts[0]
    p = mixer(env, tmp_path, *common, "--out", tmp_path / "slurm", "--executor", "slurm", "--tasks", "3", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["shards_written"] == 0, p.stderr[-2000:]
    assert len(fake_slurm.job_scripts(env)) == len(scripts)  # nothing left to submit
    p = mixer(env, tmp_path, *common, "--out", tmp_path / "local")
    assert p.returncode == 0, p.stderr
    assert mix_bytes(tmp_path / "slurm") == mix_bytes(tmp_path / "local")


def test_rerun_while_jobs_are_queued_submits_nothing(tmp_path):
    stores = make_stores(tmp_path / "stores")
    env = fake_slurm.install(tmp_path, "hold")
    args = ["build", "--stores", stores, "--domain", "music", "--fraction", "0.05", "--tokens", "40K", "--seq-len",
            "32", "--samples-per-shard", "200", "--out", tmp_path / "mix", "--executor", "slurm", "--tasks", "2",
            "--quiet"]
    assert mixer(env, tmp_path, *args).returncode == 0
    submitted = len(fake_slurm.job_scripts(env))
    p = mixer(env, tmp_path, *args)
    assert p.returncode == 1 and "still queued or running" in p.stderr and "PENDING".lower() in p.stderr
    assert p.stderr.count("\n") == 1 and len(fake_slurm.job_scripts(env)) == submitted
    fake_slurm.run_held(env)
    p = mixer(env, tmp_path, *args, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["status"] == "done", p.stderr[-2000:]
    assert len(fake_slurm.job_scripts(env)) == submitted


def test_tokenize_on_slurm_matches_local_bytes(tmp_path):
    """The tasks, then the merge as a job that depends on them, on the stand-in cluster."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["a b c d e f"], trainers.WordLevelTrainer(special_tokens=["[UNK]", "<|endoftext|>"]))
    tok.save(str(tmp_path / "tok.json"))
    for k in range(3):
        (tmp_path / f"d{k}.jsonl").write_text("".join(
            json.dumps({"text": " ".join("abcdef"[(i * j + k) % 6] for j in range(i % 9 + 2)), "id": f"{k}-{i}"}) + "\n"
            for i in range(60)))
    env = fake_slurm.install(tmp_path, "run")
    args = ["tokenize", "--source", "d", "--role", "domain", "--input", tmp_path / "d*.jsonl", "--tokenizer",
            tmp_path / "tok.json"]
    p = mixer(env, tmp_path, *args, "--stores", tmp_path / "slurm", "--executor", "slurm", "--tasks", "2", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout)["sources"][0]["status"] == "submitted"
    scripts = fake_slurm.job_scripts(env)
    for s in scripts:
        check_script(s)
    assert any("mixer-tokenize-d" in s and "--array=0-1" in s for s in scripts)
    assert any("mixer-merge-d" in s for s in scripts)
    p = mixer(env, tmp_path, *args, "--stores", tmp_path / "local")
    assert p.returncode == 0, p.stderr
    slurm, local = tmp_path / "slurm" / "d", tmp_path / "local" / "d"
    assert sorted(x.name for x in slurm.iterdir()) == sorted(x.name for x in local.iterdir())
    for f in local.iterdir():
        if f.name != "store.json":
            assert f.read_bytes() == (slurm / f.name).read_bytes(), f.name
    a, b = (json.loads((d / "store.json").read_text()) for d in (slurm, local))
    assert a["checksums"]["files"] == b["checksums"]["files"] and a["splits"] == b["splits"]


# ---- nothing a user types reaches a job script unchecked or unquoted -------------------------

INJECTIONS = [
    ({"MIXER_SLURM_PARTITION": "gpu\ntouch INJECTED"}, []),
    ({}, ["--partition", "gpu\ntouch INJECTED"]),
    ({}, ["--time", "1:00:00\ntouch INJECTED"]),
    ({}, ["--account", "lab;touch INJECTED"]),
    ({}, ["--qos", "$(touch INJECTED)"]),
    ({}, ["--sbatch-arg", "--comment=x\ntouch INJECTED"]),
    ({}, ["--sbatch-arg", "--output=/tmp/elsewhere"]),
    ({}, ["--out", "mix\ntouch INJECTED"]),
]


@pytest.mark.parametrize("env_more,flags", INJECTIONS)
def test_values_that_would_inject_commands_are_refused(tmp_path, env_more, flags):
    stores = make_stores(tmp_path / "stores")
    env = {**fake_slurm.install(tmp_path, "run"), **env_more}
    p = mixer(env, tmp_path, "build", "--stores", stores, "--domain", "music", "--fraction", "0.05", "--tokens",
              "40K", "--seq-len", "32", "--out", tmp_path / "mix", "--executor", "slurm", "--tasks", "2", *flags)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "mixer: error:" in p.stderr, p.stderr
    assert not list(tmp_path.rglob("INJECTED")) and fake_slurm.job_scripts(env) == []
    assert not (tmp_path / "mix").exists() and [p.name for p in tmp_path.iterdir() if "mix" in p.name] == []


def test_an_out_path_with_blanks_and_shell_characters_is_quoted_and_never_run(tmp_path):
    """A folder name is the user's to choose; in the job script it is one quoted word."""
    stores = make_stores(tmp_path / "stores")
    env = fake_slurm.install(tmp_path, "run")
    out = tmp_path / "my mixes $(touch INJECTED)" / "m"
    common = ["build", "--stores", stores, "--domain", "music", "--fraction", "0.05", "--tokens", "40K", "--seq-len",
              "32", "--samples-per-shard", "200", "--quiet"]
    p = mixer(env, tmp_path, *common, "--out", out, "--executor", "slurm", "--tasks", "2", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout)["status"] == "done" and (out / "manifest.json").is_file()
    assert not list(tmp_path.rglob("INJECTED"))
    script = fake_slurm.job_scripts(env)[0]
    assert "'" in script.splitlines()[-1] and '#SBATCH --output="' in script


def test_cluster_options_pass_through_and_the_manifest_comes_from_a_dependent_job(tmp_path):
    stores = make_stores(tmp_path / "stores")
    env = fake_slurm.install(tmp_path, "hold")
    args = ["build", "--stores", stores, "--domain", "music", "--fraction", "0.05", "--tokens", "40K", "--seq-len",
            "32", "--samples-per-shard", "200", "--out", tmp_path / "mix", "--executor", "slurm", "--tasks", "2",
            "--quiet", "--account", "lab1", "--qos", "high", "--gres", "gpu:a100:1", "--constraint", "a100&ib",
            "--sbatch-arg=--exclusive", "--sbatch-arg", "--comment=mixer study"]
    p = mixer(env, tmp_path, *args, "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout)
    assert r["status"] == "submitted" and len(r["job_ids"]) == 2 and "logs" in r
    assert f"submitted Slurm jobs {', '.join(r['job_ids'])}" in p.stderr and r["logs"] in p.stderr
    scripts = fake_slurm.job_scripts(env)
    for line in ("#SBATCH --account=lab1", "#SBATCH --qos=high", "#SBATCH --gres=gpu:a100:1",
                 "#SBATCH --constraint=a100&ib", "#SBATCH --exclusive", '#SBATCH --comment="mixer study"'):
        assert all(line in s for s in scripts), line
    assert not (tmp_path / "mix" / "manifest.json").exists()
    fake_slurm.run_held(env)  # the cluster runs the shard tasks, then the job that depends on them
    assert (tmp_path / "mix" / "manifest.json").is_file()  # without a second mixer command
    p = mixer(env, tmp_path, "verify", tmp_path / "mix")
    assert p.returncode == 0, p.stderr


def test_wait_blocks_until_the_jobs_are_done(tmp_path):
    import threading

    stores = make_stores(tmp_path / "stores")
    env = {**fake_slurm.install(tmp_path, "hold"), "MIXER_SLURM_POLL": "0.2"}
    args = ["build", "--stores", stores, "--domain", "music", "--fraction", "0.05", "--tokens", "40K", "--seq-len",
            "32", "--samples-per-shard", "200", "--out", tmp_path / "mix", "--executor", "slurm", "--tasks", "2",
            "--quiet", "--wait", "--json"]
    proc = subprocess.Popen([sys.executable, "-m", "mixer", *map(str, args)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "mix" / ".build" / "slurm_jobs.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # every job of the submission is recorded
    time.sleep(1)
    assert proc.poll() is None  # still waiting for the held jobs
    threading.Thread(target=fake_slurm.run_held, args=(env,)).start()
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-2000:]
    assert json.loads(out)["status"] == "done"


def test_wait_is_only_for_slurm():
    with pytest.raises(UsageError, match="--wait"):
        Executor(wait=True).validate()


def test_a_ray_connection_failure_names_its_cause(monkeypatch):
    ray = pytest.importorskip("ray")
    from mixer.errors import MixerError
    from mixer.executors import connect_ray

    class InvalidAuthToken(Exception):
        pass

    def refuse(**_):
        try:
            raise InvalidAuthToken("the head rejected the token")
        except InvalidAuthToken as e:
            raise ConnectionError("could not connect") from e

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(MixerError, match=r"InvalidAuthToken: the head rejected the token.*token"):
        connect_ray("ray://head:10001")
