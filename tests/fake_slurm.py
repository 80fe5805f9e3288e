"""A stand-in Slurm on PATH (sbatch, srun, squeue) for tests on a machine without one.

`srun` runs its command once, or, given --ntasks-per-node (and --nodes), as a job step of
that many tasks per node, all on this machine, each with SLURM_PROCID/LOCALID/NODEID/NTASKS.

`sbatch` (with `srun`, `squeue` and `scontrol show hostnames`) saves every job script it is given (so tests can read them) and either runs the
job's array tasks at once, in submission order (mode "run": datatrove submits a job's
dependencies first, so order is enough), or holds them (mode "hold": `squeue` then lists
them as PENDING until `run_held` runs them, as a busy cluster would).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SBATCH = r'''
import json, os, re, subprocess, sys
from pathlib import Path
state = Path(os.environ["FAKE_SLURM_DIR"])
args, script = sys.argv[1:-1], Path(sys.argv[-1]).read_text()
n = len(list((state / "jobs").glob("*.sh"))) + 1000
job = state / "jobs" / f"{n}.sh"
job.write_text(script)
env = {}
for a in args:
    if a.startswith("--export=ALL,"):
        env.update(kv.split("=", 1) for kv in a[len("--export=ALL,"):].split(","))
m = re.search(r"^#SBATCH --array=(\d+)-(\d+)", script, re.M)
tasks = list(range(int(m[1]), int(m[2]) + 1)) if m else [0]
(state / "jobs" / f"{n}.json").write_text(json.dumps({"id": n, "tasks": tasks, "env": env, "state": "PENDING"}))
if os.environ.get("FAKE_SLURM_MODE", "run") == "run":
    from importlib.machinery import SourceFileLoader
    SourceFileLoader("fake_slurm", os.environ["FAKE_SLURM_MODULE"]).load_module().run_job(state, n)
print(f"Submitted batch job {n}")
'''

SRUN = r'''
import os, subprocess, sys
args, opts, i = sys.argv[1:], {}, 0
while i < len(args) and args[i].startswith("-"):
    key, sep, value = args[i].partition("=")
    if not sep and key in ("-n", "-N", "--nodes", "--ntasks-per-node"):
        value, i = args[i + 1], i + 1
    opts[key] = value
    i += 1
if "--ntasks-per-node" not in opts:
    os.execvp(args[i], args[i:])
# A job step of nodes x ntasks-per-node tasks, all on this machine, each with the variables
# srun gives a task; the step fails when a task fails.
nodes, per_node = int(opts.get("--nodes", opts.get("-N", 1))), int(opts["--ntasks-per-node"])
procs = []
for node in range(nodes):
    for local in range(per_node):
        env = {**os.environ, "SLURM_NTASKS": str(nodes * per_node), "SLURM_NTASKS_PER_NODE": str(per_node),
               "SLURM_NNODES": str(nodes), "SLURM_NODEID": str(node), "SLURM_LOCALID": str(local),
               "SLURM_PROCID": str(node * per_node + local), "SLURM_STEP_NODELIST": "localhost"}
        procs.append(subprocess.Popen(args[i:], env=env))
codes = [p.wait() for p in procs]
sys.exit(next((c for c in codes if c), 0))
'''

SQUEUE = r'''
import json, os, sys
from pathlib import Path
state = Path(os.environ["FAKE_SLURM_DIR"])
ids = sys.argv[sys.argv.index("-j") + 1].split(",") if "-j" in sys.argv else None
for f in sorted((state / "jobs").glob("*.json")):
    job = json.loads(f.read_text())
    if job["state"] == "PENDING" and (ids is None or str(job["id"]) in ids):
        print(f"{job['id']} PENDING")
'''


SCONTROL = r'''
import sys
if sys.argv[1:3] == ["show", "hostnames"]:
    print("localhost")
'''


def install(root: Path, mode: str = "run") -> dict[str, str]:
    """Write the fake commands under root/bin; returns the environment to run mixer in."""
    bin_dir, state = root / "fake-slurm-bin", root / "fake-slurm"
    (state / "jobs").mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in (("sbatch", SBATCH), ("srun", SRUN), ("squeue", SQUEUE), ("scontrol", SCONTROL)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(state),
            "FAKE_SLURM_MODE": mode, "FAKE_SLURM_MODULE": __file__}


def run_job(state: Path, n: int) -> None:
    job = json.loads((state / "jobs" / f"{n}.json").read_text())
    script = state / "jobs" / f"{n}.sh"
    for t in job["tasks"]:
        env = {**os.environ, **job["env"], "SLURM_ARRAY_TASK_ID": str(t), "SLURM_ARRAY_JOB_ID": str(n),
               "SLURM_JOB_ID": str(n), "SLURM_NODELIST": "localhost"}
        p = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"fake slurm job {n} task {t} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    job["state"] = "COMPLETED"
    (state / "jobs" / f"{n}.json").write_text(json.dumps(job))


def run_held(env: dict[str, str]) -> None:
    """The cluster gets to the held jobs: run them in submission order."""
    state = Path(env["FAKE_SLURM_DIR"])
    for f in sorted((state / "jobs").glob("*.json"), key=lambda p: int(p.stem)):
        if json.loads(f.read_text())["state"] == "PENDING":
            saved = dict(os.environ)
            os.environ.update(env)
            try:
                run_job(state, int(f.stem))
            finally:
                os.environ.clear()
                os.environ.update(saved)


def job_scripts(env: dict[str, str]) -> list[str]:
    state = Path(env["FAKE_SLURM_DIR"])
    return [p.read_text() for p in sorted((state / "jobs").glob("*.sh"), key=lambda p: int(p.stem))]
