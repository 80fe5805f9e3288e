"""Training on several devices and nodes, on CPU: LitGPT's ranks as DDP over gloo.

The slow tests really train with 2 ranks (one node of 2 devices, or 2 Slurm "nodes" of 1
device under the stand-in srun of tests/fake_slurm.py) and read MIXER_SAMPLE_TRACE, where
every rank logs the samples it read, to check that the ranks together train every sample
once, in stored order, also after a resume on the same or another device count.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mixutil import EOS, build, make_stores, markov_docs, run_cli

from mixer import api
from mixer.errors import MixerError, UsageError
from mixer.formats.store import seal_store
from mixer.training import registry
from mixer_litgpt import cluster, launch
from mixer_litgpt.config import Machine
from mixer_litgpt.presets import get_preset

SEQ = "32"
GLOBAL = 16  # the tiny preset's global batch


@pytest.fixture(scope="module")
def mixes(tmp_path_factory):
    root = tmp_path_factory.mktemp("multidevice")
    stores = make_stores(root / "stores", general_docs=600, domain_docs=30)
    return {"root": root,
            "spt": build(stores, root / "spt", "--fraction", "0.1", "--tokens", "20K", "--seq-len", SEQ),
            "ft": build(stores, root / "ft", "--epochs", "12", "--seq-len", SEQ),
            "replay": build(stores, root / "replay", "--epochs", "2", "--replay", "0.3", "--seq-len", SEQ)}


def mixer(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "mixer", *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})})
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def trace(folder: Path) -> dict[int, list[tuple[int, int, int]]]:
    """rank -> [(global micro-batch, first sample, end sample)] as the rank read them."""
    return {int(f.stem.split("-")[1]): [tuple(map(int, line.split())) for line in f.read_text().splitlines()]
            for f in sorted(folder.glob("rank-*.txt"))}


def assert_stored_order(rows: dict[int, list], ranks: int, micro: int, start: int, end: int) -> None:
    """Each rank read its micro-slice of global micro-batches start..end-1, in order, and the
    ranks together read samples [start*G, end*G) each exactly once."""
    per = ranks * micro
    assert sorted(rows) == list(range(ranks))
    for r, got in rows.items():
        assert got == [(i, i * per + r * micro, i * per + (r + 1) * micro) for i in range(start, end)], r
    covered = np.concatenate([np.arange(lo, hi) for got in rows.values() for _, lo, hi in got])
    np.testing.assert_array_equal(np.sort(covered), np.arange(start * per, end * per))


def evals(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "evals.jsonl").read_text().splitlines()]


def steps_of(run: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run / "out").glob("step-*"))


# -- without training ---------------------------------------------------------------------


def test_dry_run_on_two_cpu_ranks_and_two_nodes(mixes, capsys, tmp_path):
    code, out, err = run_cli(capsys, "train", "pretrain", str(mixes["spt"]), "--model", "tiny", "--out",
                             str(tmp_path / "r"), "--devices", "2", "--num-nodes", "2", "--dry-run")
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert (cfg["devices"], cfg["num_nodes"]) == (2, 2)
    assert cfg["train"]["global_batch_size"] == GLOBAL and cfg["train"]["micro_batch_size"] == GLOBAL // 4
    plan = api.pretrain_plan(mixes["spt"], tmp_path / "r", model="tiny", devices=2, nodes=2, dry_run=True)
    assert plan.job.hooks["strategy"] == "ddp"  # FSDP needs GPUs
    # 10x the run's 39 steps, in micro-batch iterations per rank: 4 ranks of 4 samples make one step
    assert plan.meta["hparams"]["steps"] == 39 and plan.job.hooks["schedule"]["horizon_iters"] == 390
    one = api.pretrain_plan(mixes["spt"], tmp_path / "r", model="tiny", dry_run=True)
    assert "strategy" not in one.job.hooks and one.job.hooks["schedule"]["horizon_iters"] == 390
    gpus = Machine("bf16-mixed", 8, compile=True, nodes=2, cuda=True)
    assert gpus.ranks == 16 and gpus.strategy is None  # LitGPT's FSDP


@pytest.mark.parametrize("args, message", [
    (["--num-nodes", "0"], "--num-nodes 0: must be at least 1"),
    (["--devices", "0"], "--devices 0: must be at least 1"),
    (["--devices", "3"], "split evenly over 3 devices"),
])
def test_bad_device_counts_are_one_line(mixes, capsys, tmp_path, args, message):
    code, _, err = run_cli(capsys, "train", "pretrain", str(mixes["spt"]), "--model", "tiny", "--out",
                           str(tmp_path / "r"), "--dry-run", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_trainer_without_nodes_refuses_several(mixes, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "TRAINERS", dict(registry.TRAINERS))
    monkeypatch.setattr(registry, "_loaded", {})
    registry.register("count", "count_trainer:TRAINER")
    code, _, err = run_cli(capsys, "train", "pretrain", str(mixes["spt"]), "--model", "bigram", "--trainer", "count",
                           "--out", str(tmp_path / "r"), "--num-nodes", "2", "--dry-run")
    assert code == 2 and "--num-nodes 2: trainer count trains on one node" in err


def test_one_node_script_runs_the_launcher_with_litgpts_arguments(tmp_path):
    text = cluster.launch_script(tmp_path / "config.yaml", Machine("32-true", 2, compile=False, threads=1))
    lines = text.splitlines()
    assert lines[0] == "#!/usr/bin/env bash" and "set -euo pipefail" in lines
    assert "unset SLURM_NTASKS" in lines  # inside sbatch, Lightning still starts its own ranks
    assert "export TORCH_COMPILE_DISABLE=1 OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1" in lines
    assert lines[-1] == (f"exec {sys.executable} -m mixer_litgpt.launch pretrain "
                         f"--config {tmp_path / 'config.yaml'}")
    assert "srun" not in text


def test_several_nodes_script_is_one_srun_task_per_device(tmp_path):
    text = cluster.launch_script(tmp_path / "config.yaml", Machine("bf16-mixed", 8, compile=True, nodes=4,
                                                                  cuda=True))
    lines = text.splitlines()
    assert ': "${SLURM_JOB_ID:?run inside a Slurm allocation of 4 nodes (sbatch --nodes 4)}"' in lines
    assert ('export MASTER_ADDR="${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}"'
            in lines)
    assert 'export MASTER_PORT="${MASTER_PORT:-$((15000 + SLURM_JOB_ID % 10000))}"' in lines
    assert "export PYTHONUNBUFFERED=1" in lines and "TORCH_COMPILE_DISABLE" not in text
    assert "export SLURM_JOB_NAME=mixer-train" in lines  # under salloc ("interactive") Lightning would ignore Slurm
    assert lines[-1] == (f"exec srun --nodes=4 --ntasks-per-node=8 --kill-on-bad-exit=1 --export=ALL "
                         f"--job-name=mixer-train {sys.executable} -m mixer_litgpt.launch pretrain "
                         f"--config {tmp_path / 'config.yaml'}")
    assert "unset SLURM_NTASKS" not in text  # srun sets each task's
    # bash runs it as written: the variables Lightning reads, as srun's tasks would see them
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/usr/bin/env bash\necho "$MASTER_ADDR $MASTER_PORT $*"\n')
    (fake / "scontrol").write_text("#!/usr/bin/env bash\nprintf 'gpu-a07\\ngpu-a08\\n'\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    (tmp_path / "launch.sh").write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    env.update(PATH=f"{fake}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_ID="123456", SLURM_JOB_NODELIST="gpu-a[07-08]")
    out = subprocess.run(["bash", str(tmp_path / "launch.sh")], env=env, capture_output=True, text=True)
    assert out.stdout.startswith("gpu-a07 18456 --nodes=4 --ntasks-per-node=8"), out.stderr
    env["SLURM_JOB_NAME"] = "interactive"  # salloc's: what srun's tasks see is the neutral name
    (fake / "srun").write_text('#!/usr/bin/env bash\necho "$SLURM_JOB_NAME"\n')
    out = subprocess.run(["bash", str(tmp_path / "launch.sh")], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "mixer-train", out.stderr
    with pytest.raises(UsageError, match="control character"):
        cluster.launch_script(tmp_path / "config.yaml", Machine("bf16-mixed\ntouch x", 8, compile=True, nodes=4))
    env.pop("SLURM_JOB_ID")
    out = subprocess.run(["bash", str(tmp_path / "launch.sh")], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "run inside a Slurm allocation of 4 nodes" in out.stderr


def test_several_nodes_need_an_allocation_of_that_many(tmp_path, mixes, capsys, monkeypatch):
    machine = Machine("32-true", 1, compile=False, nodes=2)
    with pytest.raises(MixerError, match="inside a Slurm allocation of 2 nodes; submit it"):
        cluster.check_allocation(machine, {"PATH": os.environ["PATH"]})
    with pytest.raises(MixerError, match=r"has 1 node\(s\); submit with --nodes 2"):
        cluster.check_allocation(machine, {"SLURM_JOB_ID": "5", "SLURM_JOB_NUM_NODES": "1"})
    with pytest.raises(MixerError, match="srun is not on PATH"):
        cluster.check_allocation(machine, {"SLURM_JOB_ID": "5", "SLURM_JOB_NUM_NODES": "2", "PATH": str(tmp_path)})
    cluster.check_allocation(Machine("32-true", 2, compile=False), {})  # one node needs nothing
    # through the CLI: one line, nothing trained, the run marked failed
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    code, _, err = run_cli(capsys, "train", "pretrain", str(mixes["spt"]), "--model", "tiny", "--out",
                           str(tmp_path / "r"), "--num-nodes", "2")
    assert code == 1 and "--num-nodes 2: mixer train runs the nodes with srun" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r" / "out").exists()
    assert json.loads((tmp_path / "r" / "run.json").read_text())["status"] == "failed"


def test_resuming_keeps_the_global_batch_on_any_device_count(mixes, capsys, tmp_path):
    run = tmp_path / "r"
    plan = api.pretrain_plan(mixes["spt"], run, model="tiny", devices=2)
    run.mkdir()
    (run / "run.json").write_text(json.dumps({**plan.meta, "status": "running"}))
    again = api.pretrain_plan(mixes["spt"], run, model="tiny", devices=1)  # same batch, other devices: resumes
    assert again.spec.resume and again.spec.micro_batch == GLOBAL
    code, _, err = run_cli(capsys, "train", "pretrain", str(mixes["spt"]), "--model", "tiny", "--out", str(run),
                           "--batch-size", "8")
    assert code == 2 and "was started with a global batch of 16 samples; resume it with --batch-size 16" in err
    assert len(err.strip().splitlines()) == 1


def test_launcher_takes_litgpts_arguments_and_finds_the_hooks_beside_the_config(tmp_path, monkeypatch):
    """Lightning starts ranks 1..N-1 by re-running the launcher's command line, so that line
    must be complete: `pretrain --config RUN/config.yaml`, hooks from RUN/launch.json."""
    got = {}
    monkeypatch.setattr(launch, "install", lambda hooks, log, clock, resumed_at: got.update(hooks=hooks, log=log))
    monkeypatch.setattr(launch, "resume_on_any_ranks", lambda: got.update(resume=True))
    import litgpt.__main__

    monkeypatch.setattr(litgpt.__main__, "main", lambda: got.update(argv=list(sys.argv)))
    (tmp_path / "launch.json").write_text(json.dumps({"strategy": "ddp"}))
    monkeypatch.setattr(sys, "argv", ["launch.py", "pretrain", "--config", str(tmp_path / "config.yaml")])
    assert launch.main(sys.argv[1:]) == 0
    assert got == {"hooks": {"strategy": "ddp"}, "log": tmp_path / "early_stopping.jsonl", "resume": True,
                   "argv": ["launch.py", "pretrain", "--config", str(tmp_path / "config.yaml")]}
    assert launch.config_path(["pretrain", f"--config={tmp_path}/c.yaml"]) == tmp_path / "c.yaml"
    with pytest.raises(SystemExit, match="usage"):
        launch.main([str(tmp_path / "config.yaml"), str(tmp_path / "launch.json")])  # the old form


def test_ddp_stands_in_for_fsdp_and_weights_are_initialized_as_on_one_device(monkeypatch):
    from litgpt import pretrain

    monkeypatch.setattr(pretrain, "FSDPStrategy", pretrain.FSDPStrategy)
    launch.use_strategy("ddp")
    chosen = pretrain.FSDPStrategy(auto_wrap_policy=set(), state_dict_type="full", sharding_strategy="HYBRID_SHARD")
    assert chosen == "ddp" and not isinstance(chosen, pretrain.FSDPStrategy)


def test_resume_translates_the_iteration_count_to_this_runs_accumulation(monkeypatch):
    from litgpt import pretrain
    from litgpt.args import TrainArgs

    seen = []
    monkeypatch.setattr(pretrain, "fit", lambda **kw: seen.append(kw["state"]["iter_num"]))
    launch.resume_on_any_ranks()
    train = TrainArgs(global_batch_size=16, micro_batch_size=4)
    # saved by 1 device at step 5 (4 micro-batches a step: iteration 20); resumed on 2 devices, 2 a step
    pretrain.fit(state={"iter_num": 20, "step_count": 5}, train=train, devices=2, num_nodes=1)
    pretrain.fit(state={"iter_num": 10, "step_count": 5}, train=train, devices=1, num_nodes=1)
    pretrain.fit(state={"iter_num": 0, "step_count": 0}, train=train, devices=2, num_nodes=2)
    assert seen == [10, 20, 0]


# -- vocabulary ---------------------------------------------------------------------------

LLAMA3 = 128_256


def llama3_sized_stores(root: Path) -> Path:
    """Markov stores whose ids sit at the top of a 128,256-id vocabulary (uint32 stores)."""
    high = lambda docs: [np.where(d == EOS, LLAMA3 - 1, d + 128_000) for d in docs]  # noqa: E731
    for name, role, splits in (
        ("prose", "general", {"train": markov_docs(600, 1, 100), "val": markov_docs(40, 2, 100)}),
        ("music", "domain", {"train": markov_docs(30, 3, 200), "test": markov_docs(40, 4, 200),
                             "val": markov_docs(30, 5, 200)}),
    ):
        d = root / name
        d.mkdir(parents=True)
        meta = {}
        for split, docs in splits.items():
            toks = np.concatenate([np.append(t, LLAMA3 - 1) for t in high(docs)]).astype("<u4")
            toks.tofile(d / f"{split}.ds")
            np.cumsum([len(t) + 1 for t in docs], dtype=np.uint64).astype("<u8").tofile(d / f"{split}.ds.index")
            (d / f"{split}.ids").write_text("".join(f"{name}/{split}/{i}\n" for i in range(len(docs))))
            meta[split] = {"documents": len(docs), "tokens": int(len(toks))}
        (d / "store.json").write_text(json.dumps({
            "format": "mixer-store/1", "source": name, "role": role, "dtype": "<u4", "splits": meta,
            "tokenizer": {"name": "llama-3-sized", "sha256": "l3", "vocab_size": LLAMA3, "eos_id": LLAMA3 - 1},
            "mixer_version": "test"}))
        seal_store(d)
    return root


@pytest.fixture(scope="module")
def big_vocab_mix(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    return build(llama3_sized_stores(root / "stores"), root / "mix", "--fraction", "0.1", "--tokens", "8K",
                 "--seq-len", SEQ)


def test_ids_above_65535_reach_the_loader(big_vocab_mix):
    from mixer_litgpt import MixData

    data = MixData(mix=big_vocab_mix, max_tokens=16 * int(SEQ))
    data.connect(batch_size=16, max_seq_length=int(SEQ))
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert batch.dtype == torch.int64 and int(batch.min()) >= 128_000 and int(batch.max()) == LLAMA3 - 1


@pytest.mark.parametrize("model, padded", [("olmo-1b", LLAMA3), ("olmo-300m", LLAMA3), ("tiny", LLAMA3)])
def test_every_preset_takes_the_mix_tokenizers_vocabulary(big_vocab_mix, tmp_path, model, padded):
    plan = api.pretrain_plan(big_vocab_mix, tmp_path / "r", model=model, dry_run=True, batch=16, micro=8)
    cfg = yaml.safe_load(plan.config_text())["model_config"]
    assert (cfg["vocab_size"], cfg["padded_vocab_size"]) == (LLAMA3, padded)
    if model == "olmo-1b":  # the paper's 1B shape; its tied embedding grows by the extra rows
        from mixer_litgpt.trainer import LitGPTJob

        paper = replace(plan.job.settings, model_config=get_preset(model).model_config(50_280, 2048))
        grown = plan.job.model_params() - LitGPTJob(plan.run_dir, paper, {}).model_params()
        assert grown == (LLAMA3 - 50_304) * 2048


def test_olmo_padding_reproduces_the_reference_models():
    olmo = get_preset("olmo-1b")
    # OLMo-1B (the paper's), OLMo 2, Llama 3: LitGPT pads each to the reference model's rows
    for ids, rows in ((50_280, 50_304), (100_278, 100_352), (128_256, 128_256), (50_257, 50_304)):
        assert olmo.model_config(ids, 2048)["padded_vocab_size"] == rows


@pytest.mark.slow
def test_a_128k_vocabulary_trains(big_vocab_mix, tmp_path):
    """Token ids above 65,535 reach the model: uint32 shards, a 128,256-row embedding."""
    run = tmp_path / "r"
    mixer("train", "pretrain", str(big_vocab_mix), "--model", "tiny", "--out", str(run), "--tokens", "3K",
          "--checkpoints", "1", "--eval-samples", "8")
    rows = evals(run)
    assert rows[-1]["checkpoint"] == "final" and np.isfinite(rows[-1]["general_val_loss"])
    assert rows[-1]["general_val_loss"] < np.log(LLAMA3)  # it learned which 129 ids occur


# -- training on 2 CPU ranks ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(mixes):
    """A 2-rank pretrain (the default 10x-horizon cosine: through launch.py), started as if by
    sbatch: a Slurm job's variables in the environment must not stop Lightning starting its ranks."""
    root = mixes["root"]
    run, traced = root / "runs" / "spt", root / "trace-spt"
    mixer("train", "pretrain", str(mixes["spt"]), "--model", "tiny", "--out", str(run), "--devices", "2",
          "--checkpoints", "3", "--eval-samples", "16",
          env={"MIXER_SAMPLE_TRACE": str(traced), "SLURM_JOB_ID": "77", "SLURM_NTASKS": "1",
               "SLURM_JOB_NAME": "study"})
    return run, traced


@pytest.mark.slow
def test_two_ranks_pretrain_every_sample_once_in_stored_order(pretrained):
    run, traced = pretrained
    meta = json.loads((run / "run.json").read_text())
    steps = meta["hparams"]["steps"]
    assert meta["status"] == "done" and meta["tokens"] == steps * GLOBAL * int(SEQ)
    assert "All distributed processes registered. Starting with 2 processes" in (run / "train.log").read_text()
    assert_stored_order(trace(traced), ranks=2, micro=8, start=0, end=steps)
    assert evals(run)[-1]["tokens"] == meta["tokens"] and (run / "out" / "final" / "lit_model.pth").is_file()


@pytest.fixture(scope="module")
def killed(mixes):
    """The same 2-rank pretrain killed (SIGKILL to every rank) once its first resume state is
    complete; the step it resumes from."""
    from interrupt import kill_mid_run

    run = mixes["root"] / "runs" / "killed"
    last = kill_mid_run([sys.executable, "-m", "mixer", "train", "pretrain", str(mixes["spt"]), "--model", "tiny",
                         "--out", str(run), "--devices", "2", "--checkpoints", "3", "--eval-samples", "16"], run)
    return run, last


@pytest.mark.slow
@pytest.mark.parametrize("devices", [2, 1])
def test_a_resumed_run_trains_the_rest_once_on_the_same_or_another_device_count(mixes, pretrained, killed, tmp_path,
                                                                                  devices):
    """A 2-rank run killed while training, resumed on 2 ranks, or on 1 device with the same global
    batch of 16: the run reads the samples after its checkpoint, each once, in order, and ends
    where the uninterrupted run did."""
    original, traced = pretrained
    run = tmp_path / "spt"
    shutil.copytree(killed[0], run)
    last = killed[1]
    resumed = tmp_path / "trace"
    mixer("train", "pretrain", str(mixes["spt"]), "--model", "tiny", "--out", str(run), "--devices", str(devices),
          "--checkpoints", "3", "--eval-samples", "16", env={"MIXER_SAMPLE_TRACE": str(resumed)})
    assert f"Resuming training from {run}/out/step-{last:08d}/resume.pth" in (run / "train.log").read_text()
    steps = json.loads((run / "run.json").read_text())["hparams"]["steps"]
    assert_stored_order(trace(resumed), ranks=devices, micro=GLOBAL // devices, start=last, end=steps)
    before = {r: [row for row in rows if row[0] < last] for r, rows in trace(traced).items()}
    assert_stored_order(before, ranks=2, micro=8, start=0, end=last)  # together: every sample once
    final = {r["checkpoint"]: r for r in evals(run)}["final"]
    assert final["tokens"] == evals(original)[-1]["tokens"]
    # the same samples, rates and optimizer state: the model the uninterrupted run ended with
    assert final["general_val_loss"] == pytest.approx(evals(original)[-1]["general_val_loss"], abs=2e-3)


@pytest.mark.slow
def test_a_finetune_on_two_ranks_stops_early_once_on_every_rank(mixes, pretrained, tmp_path):
    run, traced = tmp_path / "ft", tmp_path / "trace"
    p = mixer("train", "finetune", str(mixes["ft"]), "--from", str(pretrained[0]), "--out", str(run), "--devices",
              "2", "--lr-ratio", "3", "--patience", "1", "--eval-every", "4", "--eval-samples", "16",
              env={"MIXER_SAMPLE_TRACE": str(traced)})
    log = (run / "train.log").read_text()
    assert "Starting with 2 processes" in log, p.stdout
    judged = [json.loads(x) for x in (run / "early_stopping.jsonl").read_text().splitlines()]
    assert [j["checkpoint"] for j in judged] == [f"step-{s:08d}" for s in steps_of(run)]  # rank 0 alone writes
    stop = steps_of(run)[-1]
    assert log.count("mixer: early stop at") == 1 and judged[-1]["without_improvement"] == 1
    assert stop < json.loads((run / "run.json").read_text())["hparams"]["steps"]
    assert_stored_order(trace(traced), ranks=2, micro=8, start=0, end=stop)


@pytest.mark.slow
def test_a_replay_on_two_ranks_trains_its_mix_once_in_order(mixes, pretrained, tmp_path):
    run, traced = tmp_path / "replay", tmp_path / "trace"
    mixer("train", "replay", str(mixes["replay"]), "--from", str(pretrained[0]), "--out", str(run), "--devices", "2",
          "--lr-ratio", "0.25", "--patience", "0", "--eval-samples", "16", env={"MIXER_SAMPLE_TRACE": str(traced)})
    meta = json.loads((run / "run.json").read_text())
    assert meta["kind"] == "replay" and meta["status"] == "done"
    assert_stored_order(trace(traced), ranks=2, micro=8, start=0, end=meta["hparams"]["steps"])


@pytest.mark.slow
def test_two_nodes_under_srun_keep_the_runs_bookkeeping(mixes, tmp_path):
    """2 "nodes" of 1 CPU rank each: the stand-in srun starts 2 tasks with Slurm's variables,
    Lightning takes its ranks from them; the one mixer process plans, records and evaluates."""
    from fake_slurm import install

    env = install(tmp_path)
    env.update(SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="localhost", SLURM_JOB_NUM_NODES="2",
               MIXER_SAMPLE_TRACE=str(tmp_path / "trace"))
    for k in ("MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    run = tmp_path / "spt"
    mixer("train", "pretrain", str(mixes["spt"]), "--model", "tiny", "--out", str(run), "--num-nodes", "2",
          "--checkpoints", "2", "--eval-samples", "16", env=env)
    assert "exec srun --nodes=2 --ntasks-per-node=1" in (run / "launch.sh").read_text()
    log = (run / "train.log").read_text()
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert (cfg["devices"], cfg["num_nodes"]) == (1, 2)
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "done" and evals(run)[-1]["tokens"] == meta["tokens"]
    assert_stored_order(trace(tmp_path / "trace"), ranks=2, micro=8, start=0, end=meta["hparams"]["steps"])


def test_sbatch_script_is_a_ready_job_for_the_planned_run(tmp_path):
    """RUN/sbatch.sh allocates the run's nodes and GPUs and runs the same `mixer train`
    command there; values the user typed are one quoted word each, and a newline is refused."""
    machine = Machine("bf16-mixed", 8, compile=True, nodes=4, cuda=True)
    argv = ["train", "pretrain", str(tmp_path / "my mix"), "--model", "olmo-1b", "--out", str(tmp_path / "run"),
            "--num-nodes", "4", "--devices", "8", "--dry-run"]
    text = cluster.sbatch_script(argv, machine, tmp_path / "run", {"account": "lab", "qos": "high"}, time="2-00:00:00",
                                 cwd=tmp_path)
    lines = text.splitlines()
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --account=lab", "#SBATCH --qos=high", "#SBATCH --time=2-00:00:00",
                 f"#SBATCH --output={tmp_path / 'run'}/slurm-%j.out"):
        assert line in lines, line
    assert lines[-1] == "exec " + " ".join([sys.executable, "-m", "mixer", "train", "pretrain",
                                            f"'{tmp_path / 'my mix'}'", "--model", "olmo-1b", "--out",
                                            str(tmp_path / "run"), "--num-nodes", "4", "--devices", "8"])
    assert "--dry-run" not in text
    p = subprocess.run(["bash", "-n", "-c", text], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    with pytest.raises(UsageError, match="control character"):
        cluster.sbatch_script([*argv, "--out", "x\ntouch y"], machine, tmp_path / "run")
