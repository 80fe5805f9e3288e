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
  Ray executor, which expects Ray to be initialized; without it a local Ray starts. A
  failed connection names its innermost cause (a token-auth head answers with an auth
  error that Ray wraps in a bare ConnectionError).
* Every value that reaches a job script is checked here (no control characters, Slurm
  times and names parsed) and quoted where the script is written (mixer.slurm): a
  partition named "gpu\ntouch x" is refused, never run.
* Cluster options pass through: --account, --qos, --gres, --constraint and any
  `--sbatch-arg=--key=value`; a submission prints its job ids and where their logs are,
  and `--wait` blocks until the jobs have left the queue.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

from mixer.errors import MixerError, UsageError

ExecutorKind = Literal["local", "slurm", "ray"]
KINDS: tuple[str, ...] = get_args(ExecutorKind)
JOBS_FILE = "slurm_jobs.json"


class JobsPending(MixerError):
    """Jobs of an earlier submission are still queued or running."""


# Slurm's time formats: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes, days-hours:minutes:seconds (sbatch --time), or no limit.
_SLURM_TIME = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d{1,2}(:\d{1,2}){0,2}|unlimited|infinite)$", re.I)
# Partition, account, QOS, GRES and constraint names: Slurm's own characters for them
# (constraints combine features with & | [ ] * ( ) !; GRES reads gpu:a100:2), no blanks or quotes.
_SLURM_NAME = re.compile(r"^[A-Za-z0-9_.,:+*=|&!()\[\]@%/-]+$")
_SBATCH_ARG = re.compile(r"^--(?P<key>[a-z][a-z0-9-]*)(=(?P<value>.*))?$", re.S)
# What mixer itself sets in every job script, so the jobs find their work and logs.
_OWN_SBATCH = {"array", "output", "error", "job-name", "dependency", "export"}


def check_text(flag: str, value: str) -> str:
    """A value that will be written into a shell or job script: no control characters (a
    newline would start a new command), no quotes or backslashes (which Slurm's #SBATCH
    parser would read)."""
    bad = next((c for c in value if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise UsageError(f"{flag} {value!r}: holds a control character ({bad!r}); a job script cannot hold it")
    if any(c in value for c in "\"'"):
        raise UsageError(f"{flag} {value!r}: quotes and backslashes are not allowed in job script values")
    return value


def parse_sbatch_arg(text: str) -> tuple[str, str]:
    """`--key=value` or `--key` (also without the dashes) -> (key, value)."""
    m = _SBATCH_ARG.match(text if text.startswith("--") else f"--{text}")
    if not m:
        raise UsageError(f"--sbatch-arg {text!r}: expected --key=value (an sbatch option, e.g. --sbatch-arg=--exclusive)")
    key, value = m["key"], m["value"] or ""  # "" writes a bare flag (--exclusive)
    if key in _OWN_SBATCH:
        raise UsageError(f"--sbatch-arg {text!r}: mixer sets --{key} itself")
    check_text("--sbatch-arg", text)
    return key, value


@dataclass(frozen=True)
class Executor:
    kind: ExecutorKind = "local"
    tasks: int = 1
    workers: int | None = None  # ranks at once; None: min(tasks, CPUs) locally, no cap on a cluster
    partition: str | None = None
    cpus_per_task: int = 1
    mem_per_cpu_gb: float = 2.0
    time: str = "24:00:00"
    ray_address: str | None = None
    account: str | None = None
    qos: str | None = None
    gres: str | None = None
    constraint: str | None = None
    sbatch_args: tuple[str, ...] = ()  # extra sbatch options, "--key=value"
    wait: bool = False  # Slurm: block until the submitted jobs have left the queue

    def slurm_args(self) -> dict[str, str]:
        """The sbatch options a cluster needs beyond mixer's own, validated."""
        out: dict[str, str] = {k: v for k, v in (("account", self.account), ("qos", self.qos),
                                                         ("gres", self.gres), ("constraint", self.constraint)) if v}
        out.update(parse_sbatch_arg(a) for a in self.sbatch_args)
        return out

    def validate(self) -> "Executor":
        for flag, value in (("--partition", self.partition), ("--account", self.account), ("--qos", self.qos),
                            ("--gres", self.gres), ("--constraint", self.constraint)):
            if value is not None and not _SLURM_NAME.match(check_text(flag, value)):
                raise UsageError(f"{flag} {value!r}: not a Slurm name (letters, digits and _.,:+*=|&!()[]@%/- only)")
        if not _SLURM_TIME.match(check_text("--time", self.time)):
            raise UsageError(f"--time {self.time!r}: not a Slurm time (e.g. 90, 4:00:00, 2-12:00:00)")
        self.slurm_args()
        if self.wait and self.kind != "slurm":
            raise UsageError("--wait: only with --executor slurm (local and Ray runs finish before the command does)")
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
                connect_ray(self.ray_address)
            from datatrove.executor.ray import RayPipelineExecutor

            return RayPipelineExecutor(pipeline, tasks=tasks, workers=self.workers or -1, logging_dir=logs,
                                       depends=depends, cpus_per_task=cpus, mem_per_cpu_gb=mem)
        from mixer.slurm import SlurmExecutor

        check_text("a job script path", logs)
        return SlurmExecutor(pipeline, tasks=tasks, workers=self.workers or -1, logging_dir=logs,
                             job_name=job_name_for_slurm(job_name), partition=self.partition, cpus_per_task=cpus,
                             mem_per_cpu_gb=mem, time=self.time, qos=None, env_command=environment_command(),
                             depends=depends, sbatch_args=self.slurm_args())

    def run(self, pipeline: list, logging_dir: Path, job_name: str, jobs_file: Path | None = None,
            wait: bool | None = None, **resources: Any) -> dict:
        """Run (local, Ray) or submit (Slurm) the stage; returns {"status": "done"}, or
        {"status": "submitted", "job_ids", "logs"} (with `wait`, or --wait, only once the
        jobs have left the queue). `jobs_file` records submitted Slurm jobs where a rerun
        looks for them (default: in `logging_dir`; a stage whose logging folder changes
        between attempts gives a stable one)."""
        if self.kind == "slurm":
            jobs_file = jobs_file or Path(logging_dir) / JOBS_FILE
            check_pending(jobs_file, job_name)
            ex = self.make(pipeline, logging_dir, job_name, **resources)
            ex.run()
            ids = record_jobs(jobs_file, [ex])
            logs = str(Path(ex.slurm_logs_folder))
            if ids:
                sys.stderr.write(f"mixer: submitted Slurm job{'s' if len(ids) > 1 else ''} {', '.join(ids)} "
                                 f"({job_name}); logs in {logs}\n")
            if ids and (self.wait if wait is None else wait):
                wait_for_jobs(ids, job_name)
                return {"status": "done", "job_ids": ids, "logs": logs}
            return {"status": "submitted" if ids else "done", "job_ids": ids, "logs": logs}
        self.make(pipeline, logging_dir, job_name, **resources).run()
        return {"status": "done"}


def job_name_for_slurm(name: str) -> str:
    """A job name is a label (in squeue, in the script's echo line): characters outside a
    plain set become "_" rather than reach the script."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)[:128] or "mixer"


def connect_ray(address: str | None) -> None:
    """ray.init, with a failure named by its innermost cause."""
    import ray

    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except Exception as e:  # noqa: BLE001 - every failure to connect becomes one line naming its cause
        root = e
        while (root.__cause__ or root.__context__) is not None and len(str(root)) < 2000:
            root = root.__cause__ or root.__context__
        cause = f"{type(root).__name__}: {root}" if root is not e else f"{type(e).__name__}: {e}"
        hint = "; check RAY_AUTH_TOKEN / the cluster's token" if "auth" in cause.lower() else ""
        raise MixerError(f"--ray-address {address}: cannot join the Ray cluster ({cause.strip()}){hint}") from None


def environment_command() -> str:
    """Shell line that puts a Slurm job in this process's Python environment (quoted: a
    venv path may hold blanks)."""
    activate = Path(sys.prefix) / "bin" / "activate"
    if sys.prefix != sys.base_prefix and activate.is_file():
        return f"source {shlex.quote(check_text('the venv path', str(activate)))}"
    return f'export PATH={shlex.quote(check_text("the Python path", str(Path(sys.executable).parent)))}:"$PATH"'


POLL_SECONDS = float(os.environ.get("MIXER_SLURM_POLL", "30"))


def wait_for_jobs(ids: list[str], job_name: str) -> None:
    """Block until none of `ids` is queued or running (squeue), showing where they stand."""
    import time

    from tqdm import tqdm

    with tqdm(desc=f"waiting for {job_name} ({', '.join(ids)})", bar_format="{desc}: {postfix} [{elapsed}]",
              disable=None) as bar:
        while True:
            live = _queued(ids)
            if not live:
                return
            bar.set_postfix_str(", ".join(f"{n} {s}" for s, n in sorted(live.items())))
            time.sleep(POLL_SECONDS)


def _queued(ids: list[str]) -> dict[str, int]:
    p = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T"], capture_output=True, text=True)
    states: dict[str, int] = {}
    for line in p.stdout.splitlines() if p.returncode == 0 else []:
        parts = line.split()
        if len(parts) == 2:
            states[parts[1].lower()] = states.get(parts[1].lower(), 0) + 1
    return states


def record_jobs(jobs_file: Path, executors: list) -> list[str]:
    """Remember the Slurm jobs just submitted (a dependency's too), for check_pending."""
    ids = []
    for e in executors:
        ids += [str(j) for j in (getattr(e, "depends_job_id", None), getattr(e, "job_id", None))
                if j not in (None, -1, "-1")]
    if ids:
        from mixer.formats.atomic import write_json

        write_json(jobs_file, {"job_ids": ids})
    return ids


def check_pending(f: Path, job_name: str) -> None:
    """Refuse to submit again while jobs of an earlier submission are queued or running."""
    if not f.is_file() or shutil.which("squeue") is None:
        return
    from mixer.formats.atomic import read_json

    record = read_json(f)
    ids = [str(i) for i in record.get("job_ids", [])] if isinstance(record, dict) else []
    if not ids:
        return
    states = _queued(ids)
    if states:
        where = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        raise JobsPending(f"{job_name}: Slurm jobs {', '.join(ids)} are still queued or running ({where}; "
                          f"squeue -j {','.join(ids)}); nothing submitted; re-run this command when they finish")
    f.unlink()
