"""`mixer build`: write a mix's shards (any subset, any executor), then its manifest.

Each shard is an independent task computed from the MixSpec alone, so datatrove's
executors (local, Slurm, Ray) own parallelism and retries; we only add per-shard
sidecars so a re-run skips finished shards whatever executor wrote them.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from datatrove.pipeline.base import PipelineStep
from tqdm import tqdm

from mixer import __version__
from mixer.formats.atomic import write_json
from mixer.errors import MixerError, UsageError
from mixer.formats.mix import MIX_FORMAT
from mixer.mixing.spec import MixPlan, MixSpec, resolve, spec_digest
from mixer.mixing.shards import persist_shard, read_sidecar, shard_samples, write_eval, write_shard


class WriteShards(PipelineStep):
    """A datatrove step with no documents in or out: rank r writes every world_size-th pending shard."""

    name = "🧩 mix shards"
    type = "✍️ - WRITER"

    def __init__(self, spec: dict, out_dir: str, shard_ids: list[int]) -> None:
        super().__init__()
        self.spec, self.out_dir, self.shard_ids = spec, out_dir, shard_ids

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        plan = resolve(MixSpec.from_json(self.spec))
        out = Path(self.out_dir)
        for k in self.shard_ids[rank::world_size]:
            if read_sidecar(out, k) is None:
                with self.track_time():
                    rec = write_shard(plan, k, out)
                self.stat_update("shards")
                self.stat_update("samples", value=rec["samples"])
        yield from ()


def parse_shards(text: str | None, n_shards: int) -> range:
    if text is None:
        return range(n_shards)
    try:
        a, _, b = text.partition(":")
        i = int(a) if a else 0
        j = int(b) if b else n_shards
    except ValueError:
        raise UsageError(f"--shards: expected I:J, got {text!r}") from None
    if not 0 <= i < j <= n_shards:
        raise UsageError(f"--shards {text}: the mix has shards 0:{n_shards}")
    return range(i, j)


def claim_directory(out: Path, spec: MixSpec) -> None:
    """Refuse a second, different build into one directory; allow resuming the same one."""
    marker = out / ".build" / "spec.json"
    for stale in out.glob(".*.tmp-*") if out.is_dir() else []:  # left by a killed run; never renamed
        stale.unlink(missing_ok=True)
    if marker.exists():
        previous = json.loads(marker.read_text())
        if spec_digest(MixSpec.from_json(previous)) != spec_digest(spec):
            raise MixerError(f"{out}: already holds a different build ({marker}); choose another --out or remove it")
        return
    if out.exists() and any(p.name != ".build" for p in out.iterdir()):
        raise MixerError(f"{out}: exists and is not a mix build of this request; choose another --out")
    write_json(marker, spec.to_json())


def run_inline(plan: MixPlan, out: Path, todo: list[int], progress: bool) -> None:
    """One process: compute shard k + 1 while a writer thread writes and fsyncs shard k
    (fsync was 28% of a single-threaded build). At most two shards are held in memory."""
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = None
        for k in tqdm(todo, desc=f"build {out.name}", unit="shard", disable=not progress):
            samples, prov = shard_samples(plan, k)
            if pending is not None:
                pending.result()
            pending = writer.submit(persist_shard, plan, k, out, samples, prov)
        if pending is not None:
            pending.result()


def run_tasks(spec: MixSpec, out: Path, todo: list[int], executor: str, tasks: int, workers: int, progress: bool) -> None:
    if executor == "inline" or (executor == "local" and tasks == 1):
        run_inline(resolve(spec), out, todo, progress)
        return
    step = WriteShards(spec.to_json(), str(out.resolve()), todo)
    # One logging dir per task count: datatrove's completion files are per rank, and a
    # rank of a 3-task run is not a rank of a 2-task run. Our sidecars make reruns safe anyway.
    logs = str((out / ".build" / f"logs-{executor}-{tasks}").resolve())
    if executor == "local":
        from datatrove.executor import LocalPipelineExecutor

        LocalPipelineExecutor(pipeline=[step], tasks=tasks, workers=workers, logging_dir=logs).run()
    elif executor == "ray":
        from datatrove.executor import RayPipelineExecutor

        RayPipelineExecutor(pipeline=[step], tasks=tasks, workers=workers, logging_dir=logs).run()
    elif executor == "slurm":
        import shutil

        from datatrove.executor import SlurmPipelineExecutor

        if shutil.which("sbatch") is None:
            raise MixerError("--executor slurm: sbatch is not on PATH (run from a Slurm login node)")

        SlurmPipelineExecutor(
            pipeline=[step], tasks=tasks, workers=workers, logging_dir=logs, time="24:00:00",
            partition=None, job_name=f"mixer-{out.name}",
        ).run()
    else:
        raise UsageError(f"--executor: unknown executor {executor!r} (local, slurm, ray)")


def build(
    spec: MixSpec,
    out: Path,
    shards: str | None = None,
    executor: str = "local",
    tasks: int = 1,
    workers: int = 1,
    progress: bool = True,
    extra: dict | None = None,
) -> dict:
    """Write the requested shards; when every shard exists, write eval sets and the manifest."""
    plan = resolve(spec)
    claim_directory(out, spec)
    wanted = parse_shards(shards, plan.n_shards)
    todo = [k for k in wanted if read_sidecar(out, k) is None]
    t0 = time.perf_counter()
    if todo:
        run_tasks(spec, out, todo, executor, tasks, workers, progress)
    missing = [k for k in range(plan.n_shards) if read_sidecar(out, k) is None]
    status = {
        "out": str(out),
        "shards_total": plan.n_shards,
        "shards_written": len(todo),
        "shards_skipped": len(wanted) - len(todo),
        "shards_missing": len(missing),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if missing:
        return {"status": "partial", **status}
    manifest = finalize(plan, out, extra or {})
    return {"status": "done", **status, "manifest": manifest}


def finalize(plan: MixPlan, out: Path, extra: dict) -> dict:
    path = out / "manifest.json"
    if path.exists():
        return json.loads(path.read_text())
    summary = plan.summary()
    shards = summary.pop("shards")
    manifest = {
        "format": MIX_FORMAT,
        "mixer_version": __version__,
        **summary,
        "shards": [read_sidecar(out, k) for k in range(shards)],
        "eval": write_eval(plan, out),
        "recipe": plan.spec.to_json(),
        **extra,
    }
    write_json(path, manifest)
    return manifest
