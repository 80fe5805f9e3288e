"""RUN/launch.sh: the command that starts a run's training processes, written into the run
so that what ran is on record and can be re-run by hand.

On one node it runs launch.py once and Lightning starts the other ranks by re-running that
command line. On several nodes `mixer train` must itself run inside a Slurm allocation of
that many nodes (sbatch): the script runs one `srun` task per device on every node, and
Lightning takes each task's rank from Slurm (SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID,
SLURM_NTASKS) and the rendezvous from MASTER_ADDR (the allocation's first node) and
MASTER_PORT, which the script sets. The mixer process stays the one that plans, writes
run.json and evaluates: the run's bookkeeping is the same on one node or many.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from mixer.errors import MixerError
from mixer.executors import check_text

from .config import Machine

SCRIPT = "launch.sh"
JOB_NAME = "mixer-train"  # what Lightning's Slurm detection sees (it ignores "bash" and "interactive")
MODULE = "mixer_litgpt.launch"


def training_command(config: Path) -> list[str]:
    """One training process: the arguments of `litgpt pretrain`, so Lightning can re-run it."""
    return [sys.executable, "-m", MODULE, "pretrain", "--config", str(config)]


def _exports(machine: Machine) -> str:
    return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in machine.exports().items())


def launch_script(config: Path, machine: Machine) -> str:
    check_text("--precision", machine.precision)  # it is written into a comment line below
    cmd = shlex.join(training_command(config))
    where = f"{machine.nodes} node{'s' if machine.nodes > 1 else ''} x {machine.devices} device" \
            f"{'s' if machine.devices > 1 else ''}, precision {machine.precision}"
    head = [
        "#!/usr/bin/env bash",
        f"# Written by mixer train: LitGPT on {where}. mixer runs it and keeps the run's bookkeeping",
        "# (run.json, evaluation); run alone, it trains from config.yaml as planned.",
        "set -euo pipefail",
    ]
    if machine.nodes == 1:
        return "\n".join([
            *head,
            "# One node: Lightning starts the ranks itself, so it must not take a Slurm job's tasks for them.",
            "unset SLURM_NTASKS",
            _exports(machine),
            f"exec {cmd}",
        ]) + "\n"
    n, d = machine.nodes, machine.devices
    return "\n".join([
        *head,
        f': "${{SLURM_JOB_ID:?run inside a Slurm allocation of {n} nodes (sbatch --nodes {n})}}"',
        "# Rank 0 runs on the allocation's first node and serves the rendezvous there.",
        'export MASTER_ADDR="${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}"',
        'export MASTER_PORT="${MASTER_PORT:-$((15000 + SLURM_JOB_ID % 10000))}"',
        _exports(machine),
        "# A neutral job name: under salloc (job name \"interactive\") Lightning would ignore Slurm and hang.",
        f"export SLURM_JOB_NAME={JOB_NAME}",
        f"exec srun --nodes={n} --ntasks-per-node={d} --kill-on-bad-exit=1 --export=ALL --job-name={JOB_NAME} {cmd}",
    ]) + "\n"


def check_allocation(machine: Machine, env: dict[str, str] | None = None) -> None:
    """Several nodes need a Slurm allocation of at least that many nodes, and srun."""
    if machine.nodes == 1:
        return
    env = os.environ if env is None else env
    n, d = machine.nodes, machine.devices
    submit = (f"e.g. sbatch --nodes {n} --ntasks-per-node {d} --gpus-per-node {d} "
              f"--wrap 'mixer train ... --num-nodes {n} --devices {d}'")
    if "SLURM_JOB_ID" not in env:
        raise MixerError(f"--num-nodes {n}: mixer train runs the nodes with srun, inside a Slurm allocation of "
                         f"{n} nodes; submit it ({submit})")
    have = env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES")
    if have and int(have) < n:
        raise MixerError(f"--num-nodes {n}: this Slurm allocation (job {env['SLURM_JOB_ID']}) has {have} node(s); "
                         f"submit with --nodes {n}")
    if not shutil.which("srun", path=env.get("PATH")):
        raise MixerError(f"--num-nodes {n}: srun is not on PATH")


SBATCH = "sbatch.sh"


def sbatch_script(argv: list[str], machine: Machine, run_dir: Path, slurm: dict[str, str] | None = None,
                  time: str = "24:00:00", cwd: Path | None = None) -> str:
    """RUN/sbatch.sh: a ready-to-submit job that runs this `mixer train` command (`argv`, its
    arguments after `mixer`) inside an allocation of the run's nodes and devices. A run that
    is planned but unfinished resumes, so the job is the same command whether it starts the
    run or continues it. Every value is checked and quoted (mixer.executors.check_text)."""
    from mixer.executors import environment_command, job_name_for_slurm
    from mixer.slurm import sbatch_line

    args = [a for a in argv if a != "--dry-run"]
    for a in args:
        check_text("a mixer train argument", a)
    run_dir = Path(run_dir).resolve()
    directives = {"job-name": job_name_for_slurm(f"mixer-train-{run_dir.name}"), "nodes": machine.nodes,
                  "ntasks-per-node": machine.devices if machine.nodes > 1 else 1, "time": time,
                  "output": str(run_dir / "slurm-%j.out")}
    if machine.cuda:
        directives["gpus-per-node"] = machine.devices
    directives.update(slurm or {})
    lines = [
        "#!/bin/bash",
        "# Written by mixer train: `sbatch " + shlex.quote(str(run_dir / SBATCH)) + "` runs this run's training in",
        f"# an allocation of {machine.nodes} node(s) x {machine.devices} device(s); an unfinished run resumes.",
        *(sbatch_line(k, v) for k, v in directives.items()),
        "set -euo pipefail",
        environment_command(),
        f"cd {shlex.quote(str(Path(cwd or Path.cwd()).resolve()))}",
        f"exec {shlex.join([sys.executable, '-m', 'mixer', *args])}",
    ]
    return "\n".join(lines) + "\n"
