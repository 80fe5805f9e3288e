"""Where a stage's tasks run: one choice of executor for tokenize, build and audit.

A stage is a list of datatrove `PipelineStep`s over `tasks` ranks; this module turns the
user's flags into datatrove's local, Slurm or Ray executor, the same way for every
command (datatrove owns parallelism, retries and the completion files that let a rerun
skip finished ranks). What we add, and why:

* Slurm job scripts activate the Python environment that submitted them (a venv's
  `activate`, else this interpreter's `bin/` first on PATH): a job that starts in the
  login shell's Python would import another mixer, or none.
* Unset Slurm resources are left out of the job script (the cluster's defaults apply);
  datatrove would write a bare `#SBATCH --partition` and `--qos=normal`, which some
  clusters reject.
* A submitted stage records its job ids in its logging folder; a rerun while any is
  still queued or running submits nothing and says where the jobs stand, instead of
  submitting the unfinished ranks a second time.
* `--ray-address` joins an existing cluster (`ray.init(address=...)`) before datatrove's
  Ray executor, which expects Ray to be initialized; without it a local Ray starts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mixer.errors import MixerError, UsageError

KINDS = ("local", "slurm", "ray")
JOBS_FILE = "slurm_jobs.json"


class JobsPending(MixerError):
    """Jobs of an earlier submission are still queued or running."""


@dataclass(frozen=True)
class Executor:
    kind: str = "local"
    tasks: int = 1
    workers: int | None = None  # ranks at once; None: min(tasks, CPUs) locally, no cap on a cluster
    partition: str | None = None
    cpus_per_task: int = 1
    mem_per_cpu_gb: float = 2.0
    time: str = "24:00:00"
    ray_address: str | None = None

    def validate(self) -> "Executor":
        if self.kind not in KINDS:
            raise UsageError(f"--executor {self.kind}: use one of {', '.join(KINDS)}")
        if self.tasks < 1:
            raise UsageError(f"--tasks {self.tasks}: must be at least 1")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers {self.workers}: must be at least 1")
        if self.cpus_per_task < 1:
            raise UsageError(f"--cpus-per-task {self.cpus_per_task}: must be at least 1")
        if not self.mem_per_cpu_gb > 0:
            raise UsageError(f"--mem-per-cpu {self.mem_per_cpu_gb}: must be positive (GB)")
        if self.ray_address and self.kind != "ray":
            raise UsageError("--ray-address: only with --executor ray")
        if self.kind == "ray" and importlib.util.find_spec("ray") is None:
            raise UsageError("--executor ray needs ray: pip install 'mixer[ray]'")
        if self.kind == "slurm" and shutil.which("sbatch") is None:
            raise UsageError("--executor slurm: sbatch is not on PATH (run from a Slurm login node)")
        return self

    @property
    def inline(self) -> bool:
        """One local task runs in this process: no executor, no logs, no spawn."""
        return self.kind == "local" and self.tasks == 1

    @property
    def local_workers(self) -> int:
        return self.workers or min(self.tasks, os.cpu_count() or 1)

    def with_tasks(self, tasks: int) -> "Executor":
        return replace(self, tasks=tasks)

    def make(self, pipeline: list, logging_dir: Path, job_name: str, depends: Any = None, **resources: Any) -> Any:
        """The datatrove executor for `pipeline`; `resources` override this job's Slurm/Ray
        resources (e.g. a merge job that needs more memory than a tokenizing task)."""
        logs = str(Path(logging_dir).resolve())
        cpus = resources.get("cpus_per_task", self.cpus_per_task)
        mem = resources.get("mem_per_cpu_gb", self.mem_per_cpu_gb)
        tasks = resources.get("tasks", self.tasks)
        if self.kind == "local":
            from datatrove.executor import LocalPipelineExecutor

            from mixer.lifetime import install

            install()  # the workers die with this command (mixer/lifetime.py)
            return LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(tasks, self.local_workers),
                                         logging_dir=logs, depends=depends)
        if self.kind == "ray":
            import ray

            if not ray.is_initialized():
                ray.init(address=self.ray_address, include_dashboard=False, log_to_driver=False)
            from datatrove.executor.ray import RayPipelineExecutor

            return RayPipelineExecutor(pipeline, tasks=tasks, workers=self.workers or -1, logging_dir=logs,
                                       depends=depends, cpus_per_task=cpus, mem_per_cpu_gb=mem)
        from mixer.slurm import SlurmExecutor

        return SlurmExecutor(pipeline, tasks=tasks, workers=self.workers or -1, logging_dir=logs, job_name=job_name,
                      partition=self.partition, cpus_per_task=cpus, mem_per_cpu_gb=mem, time=self.time,
                      qos=None, env_command=environment_command(), depends=depends)

    def run(self, pipeline: list, logging_dir: Path, job_name: str, jobs_file: Path | None = None,
            **resources: Any) -> str:
        """Run (local, Ray) or submit (Slurm) the stage; returns "done" or "submitted".
        `jobs_file` records submitted Slurm jobs where a rerun looks for them (default: in
        `logging_dir`; a stage whose logging folder changes between attempts gives a stable one)."""
        if self.kind == "slurm":
            jobs_file = jobs_file or Path(logging_dir) / JOBS_FILE
            check_pending(jobs_file, job_name)
            ex = self.make(pipeline, logging_dir, job_name, **resources)
            ex.run()
            record_jobs(jobs_file, [ex])
            return "submitted"
        self.make(pipeline, logging_dir, job_name, **resources).run()
        return "done"


def environment_command() -> str:
    """Shell line that puts a Slurm job in this process's Python environment."""
    activate = Path(sys.prefix) / "bin" / "activate"
    if sys.prefix != sys.base_prefix and activate.is_file():
        return f"source {activate}"
    return f"export PATH={Path(sys.executable).parent}:$PATH"


def record_jobs(jobs_file: Path, executors: list) -> None:
    """Remember the Slurm jobs just submitted (a dependency's too), for check_pending."""
    ids = []
    for e in executors:
        ids += [str(j) for j in (getattr(e, "depends_job_id", None), getattr(e, "job_id", None))
                if j not in (None, -1, "-1")]
    if ids:
        from mixer.formats.atomic import write_json

        write_json(jobs_file, {"job_ids": ids})


def check_pending(f: Path, job_name: str) -> None:
    """Refuse to submit again while jobs of an earlier submission are queued or running."""
    if not f.is_file() or shutil.which("squeue") is None:
        return
    ids = json.loads(f.read_text()).get("job_ids", [])
    if not ids:
        return
    p = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T"], capture_output=True, text=True)
    live = [line.split() for line in p.stdout.splitlines() if line.strip()]
    if p.returncode == 0 and live:
        states: dict[str, int] = {}
        for _, state in (x for x in live if len(x) == 2):
            states[state.lower()] = states.get(state.lower(), 0) + 1
        where = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or f"{len(live)} listed"
        raise JobsPending(f"{job_name}: Slurm jobs {', '.join(ids)} are still queued or running ({where}; "
                          f"squeue -j {','.join(ids)}); nothing submitted; re-run this command when they finish")
    f.unlink()
