"""`mixer build`: write a mix's shards (any subset, any executor), then its manifest.

Each shard is an independent task computed from the MixSpec alone, so datatrove's
executors (local, Slurm, Ray) own parallelism and retries; we only add per-shard
sidecars so a re-run skips finished shards whatever executor wrote them.

A build's identity is fixed in `.build/spec.json` when it starts: the spec, the
checksums of every store it reads (each store file proven against store.json), and the
checksum of the manifest of every mix whose documents it excludes. A resume, a
`--shards` range or a concurrent process with another identity is refused, so a mix
never holds shards of two builds. Processes cooperate through files alone: a sidecar
marks a shard done, `.build/lock` (flock) serializes claiming the folder and writing
the manifest, and a temporary file is removed only by the process that made it, or
after that process died (atomic_open puts host and pid in the name).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import multiprocessing as mp
import os
import re
import shutil
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Iterator, Literal, TypedDict

import numpy as np
from datatrove.pipeline.base import PipelineStep
from tqdm import tqdm

from mixer import __version__
from mixer.executors import Executor, check_text
from mixer.formats.atomic import read_json, write_json
from mixer.errors import MixerError, UsageError
from mixer.lifetime import pid_alive
from mixer.formats.folders import refuse_links
from mixer.formats.mix import MIX_FORMAT, write_manifest
from mixer.formats.checksum import CHECKSUM, checksum_bytes, checksum_file
from mixer.formats.store import check_store_files
from mixer.forks import fork_safe, forked_pool, inherited
from mixer.mixing.plan_cache import PLAN_FORMAT
from mixer.mixing.sample_sets import sample_sets
from mixer.mixing.spec import MixPlan, MixSpec, resolve, spec_digest
from mixer.mixing.shards import persist_shard, read_sidecar, shard_name, shard_samples, write_eval, write_shard

BUILD_FORMAT = "mixer-build/1"
STORES_CHECKED = "stores-checked.json"  # in .build/: store files verified, keyed by (size, mtime)


class WriteShards(PipelineStep):
    """A datatrove step with no documents in or out: rank r writes every world_size-th pending shard."""

    name = "🧩 mix shards"
    type = "✍️ - WRITER"

    def __init__(self, spec: dict, out_dir: str, shard_ids: list[int]) -> None:
        super().__init__()
        self.spec, self.out_dir, self.shard_ids = spec, out_dir, shard_ids

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        out = Path(self.out_dir)
        plan = resolve(MixSpec.from_json(self.spec), plan_dir(out))  # maps the arrays the build computed
        mine = [k for k in self.shard_ids[rank::world_size] if read_sidecar(out, k) is None]
        for i, k in enumerate(mine):
            with self.track_time():
                rec = write_shard(plan, k, out, reuse=len(mine) - i)
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


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if need be); released on exit or death.

    A file system without locks (some Lustre mounts) gets a warning, not a failure: the
    build still works, only two builds started at once into one folder are not caught."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            sys.stderr.write(f"mixer: warning: {path}: no file locks on this file system ({e.strerror}); "
                             "do not start two builds into one folder at the same time\n")
        yield
    finally:
        os.close(fd)


_BUILD_FILES = re.compile(r"^(lock|spec\.json|stores-checked\.json|plan|logs-.+|\..+\.tmp-.+)$")


def is_build_folder(out: Path) -> bool:
    """Empty, or claimed by a build (its .build/ holds our lock or identity, or, for a
    build that is creating it right now, nothing but our files)."""
    if not out.is_dir():
        return False
    entries = list(out.iterdir())
    build_dir = out / ".build"
    if not entries or (build_dir / "spec.json").is_file() or (build_dir / "lock").is_file():
        return True
    return entries == [build_dir] and build_dir.is_dir() and all(_BUILD_FILES.match(p.name) for p in build_dir.iterdir())


def check_out_folder(out: Path, what: str = "mix") -> None:
    """Refuse, before anything is written, a path that is a file or a folder of something else."""
    if out.exists() and not is_build_folder(out):
        kind = "a file" if not out.is_dir() else f"a folder that is not a {what} build"
        raise MixerError(f"{out}: exists and is {kind}; choose another --out (nothing was changed there)")


def _read_cache(path: Path) -> dict:
    try:
        data = read_json(path) if path.is_file() else {}
    except MixerError:  # a damaged cache only costs re-reading the stores
        data = {}
    return data if isinstance(data, dict) else {}


def store_identity(plan: MixPlan, cache: dict, recheck: bool) -> dict:
    """{store name: its path and checksums}, every file proven against them (see check_store_files)."""
    out = {}
    for src in plan.sources:
        store = src.store
        if store.name not in out:
            block = check_store_files(store.path, store.meta, cache, recheck)
            out[store.name] = {"path": str(store.path.resolve()), "checksums": block}
    return out


def build_identity(plan: MixPlan, stores: dict) -> dict:
    excluded = {}
    for mix in plan.spec.exclude_seen_in:
        f = Path(mix) / "manifest.json"
        if not f.is_file():
            raise MixerError(f"{f}: missing; the mix whose documents this build leaves out must be built first")
        excluded[str(Path(mix).resolve())] = checksum_file(f)
    return {"format": BUILD_FORMAT, "spec": plan.spec.to_json(), "stores": stores, "excluded_mixes": excluded}


def _same_spec(a: dict, b: dict) -> bool:
    try:
        return spec_digest(MixSpec.from_json(a)) == spec_digest(MixSpec.from_json(b))
    except (TypeError, KeyError):  # written by a mixer with other spec fields
        return False


def _refusal(out: Path, marker: Path, previous: object, identity: dict) -> str | None:
    if not isinstance(previous, dict) or previous.get("format") != BUILD_FORMAT:
        return (f"{out}: holds a build started by an older mixer ({marker} records no store checksums); "
                "remove it or choose another --out")
    if not _same_spec(previous.get("spec", {}), identity["spec"]):
        return f"{out}: already holds a different build ({marker}: other settings); choose another --out or remove it"
    for name, rec in identity["stores"].items():
        if previous.get("stores", {}).get(name) != rec:
            return (f"{out}: the build started from other contents of store {name!r} ({rec['path']} changed since, "
                    "re-tokenized?); remove it or choose another --out to build from the store as it is now")
    if previous.get("excluded_mixes") != identity["excluded_mixes"]:
        return f"{out}: a mix this build leaves documents out of changed since it started; remove it or choose another --out"
    return None


def claim_directory(out: Path, plan: MixPlan, recheck_stores: bool = False) -> dict:
    """Fix the build's identity in OUT/.build/spec.json, or check it against the one there.

    Returns the identity. A folder that is not a build is refused before anything is written.
    """
    check_out_folder(out)
    refuse_links(out)
    build_dir = out / ".build"
    cache_file = build_dir / STORES_CHECKED
    cache = _read_cache(cache_file)
    identity = build_identity(plan, store_identity(plan, cache, recheck_stores))  # reads only
    build_dir.mkdir(parents=True, exist_ok=True)
    os.close(os.open(build_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644))  # marks the folder as a build's
    write_json(cache_file, cache)
    marker = build_dir / "spec.json"
    with locked(build_dir / "lock"):  # check-and-set: two builds cannot both claim an empty folder
        if marker.exists():
            refusal = _refusal(out, marker, read_json(marker), identity)
            if refusal:
                raise MixerError(refusal)
        else:
            write_json(marker, identity)
    remove_stale_temporaries(out)
    return identity


_TEMP = re.compile(r"^\..+\.tmp-(?P<host>.+)-(?P<pid>\d+)$")


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove temporary files (atomic_open's `.NAME.tmp-HOST-PID`) of processes that died
    on this host; a file of a live process, or of another host, is never touched."""
    host, removed = socket.gethostname(), []
    plans = sorted(p for p in (out / ".build" / "plan").glob("*") if p.is_dir())
    for folder in (out, out / "eval", out / ".build", out / ".build" / "plan", *plans):
        for f in folder.glob(".*.tmp-*") if folder.is_dir() else []:
            m = _TEMP.match(f.name)
            if m and m["host"] == host and not pid_alive(int(m["pid"])):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
                    removed.append(f)
    return removed


def plan_dir(out: Path) -> Path:
    return out / ".build" / "plan"


def identity_digest(identity: dict) -> str:
    return checksum_bytes(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode())


def prepare_plan(spec: MixSpec, out: Path, identity: dict) -> MixPlan:
    """Compute the per-document arrays of every stream once, into OUT/.build/plan/, for all
    tasks to map. Under the lock: a second process started at once waits and finds them.
    `plan.json` ties them to the build's identity; arrays of another identity are removed."""
    folder = plan_dir(out)
    with locked(out / ".build" / "lock"):
        record = folder / "plan.json"
        try:
            previous = read_json(record) if record.is_file() else None
        except MixerError:
            previous = {}
        if previous is not None and (not isinstance(previous, dict) or previous.get("build") != identity_digest(identity)):
            shutil.rmtree(folder)
            proven = {}
        else:
            proven = drop_unproven_plan_files(folder, (previous or {}).get("files"))
        plan = resolve(spec, folder)
        streams = plan.materialize()
        write_json(record, {"format": PLAN_FORMAT, "build": identity_digest(identity), "streams": streams,
                            "files": plan_file_digests(folder, proven)})
    return plan


def _plan_files(folder: Path) -> list[Path]:
    """The arrays (each stream's stream.json is its own check: plan_cache.StreamFiles)."""
    return sorted(p for p in folder.glob("*/*.npy") if p.is_file() and not p.name.startswith("."))


def plan_file_digests(folder: Path, known: dict[str, str]) -> dict[str, str]:
    """{stream/array.npy: checksum} of every plan file (those just proven are not read again):
    what a resume proves them against."""
    rels = [str(p.relative_to(folder)) for p in _plan_files(folder)]
    return {r: known[r] if r in known else checksum_file(folder / r) for r in rels}


def drop_unproven_plan_files(folder: Path, digests: object) -> dict[str, str]:
    """Remove every plan file that plan.json does not vouch for (well-formed arrays that are
    wrong, or arrays a killed build left before plan.json): they are computed again. A
    wrong permutation would otherwise put the wrong documents in every shard written later.
    Returns the digests of the files kept."""
    digests = digests if isinstance(digests, dict) else {}
    proven = {}
    for p in _plan_files(folder) if folder.is_dir() else []:
        rel = str(p.relative_to(folder))
        if rel in digests and digests[rel] == checksum_file(p):
            proven[rel] = digests[rel]
        else:
            p.unlink()
    return proven


def run_inline(plan: MixPlan, out: Path, todo: list[int], progress: bool, done: Callable[[], None] | None = None,
               stop: Callable[[], bool] | None = None) -> None:
    """One process: compute shard k + 1 while a writer thread writes and fsyncs shard k
    (fsync was 28% of a single-threaded build). At most two shards are held in memory.
    A forked task (run_forked) passes `done`, called after each shard is written, and
    `stop`, asked before each shard is started."""
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending, buffers = None, [None, None]  # shard i fills the array of shard i - 2, written by then
        for i, k in enumerate(tqdm(todo, desc=f"build {out.name}", unit="shard", disable=not progress)):
            if stop and stop():
                break
            samples, prov = shard_samples(plan, k, reuse=len(todo) - i, buffer=buffers[i % 2])
            buffers[i % 2] = samples
            if pending is not None:
                pending.result()
                done and done()
            pending = writer.submit(persist_shard, plan, k, out, samples, prov)
        if pending is not None:
            pending.result()
            done and done()


def _forked_task(rank: int) -> None:
    plan, out, todo, tasks, written, failed = inherited()

    def done() -> None:
        with written.get_lock():
            written.value += 1

    try:
        run_inline(plan, out, todo[rank::tasks], False, done, stop=lambda: bool(failed.value))
    except BaseException:
        failed.value = 1
        raise


def run_forked(plan: MixPlan, out: Path, todo: list[int], tasks: int, workers: int, progress: bool) -> None:
    """Local tasks as forked processes of this command, each running run_inline over its
    share todo[r::tasks] (the share a datatrove rank would get). A forked task inherits
    the mapped plan and starts at once; datatrove's local workers start through a fork
    server and re-map the plan (1.2-1.9 s a task, as long as writing 500 MB). When a task
    fails, the others finish the shard they are writing and stop; the error is the failed
    task's own."""
    ctx = mp.get_context("fork")
    written, failed = ctx.Value("q", 0), ctx.Value("b", 0)
    with forked_pool(min(workers, tasks), (plan, out, todo, tasks, written, failed)) as pool, \
            tqdm(total=len(todo), desc=f"build {out.name}", unit="shard", disable=not progress) as bar:
        futures = [pool.submit(_forked_task, r) for r in range(tasks)]
        pending = set(futures)
        while pending:  # a failed task has set `failed`: the others stop after their current shard
            _, pending = wait(pending, timeout=0.2)
            if written.value > bar.n:
                bar.update(written.value - bar.n)
        for f in futures:
            f.result()  # the first failed task's error, in rank order


def logs_dir(out: Path, executor: str, tasks: int, todo: list[int]) -> Path:
    """datatrove's logging dir, one per (executor, task count, exact to-do list).

    Its completion files say "rank r finished its share", and a share is todo[r::tasks]:
    a completion of an earlier attempt, whose to-do list was longer, says nothing about
    this attempt's share of rank r (a killed build skipped those shards forever).
    """
    digest = checksum_bytes(json.dumps(todo).encode())[:16]
    return out / ".build" / f"logs-{executor}-{tasks}-{digest}"


def run_tasks(spec: MixSpec, out: Path, todo: list[int], executor: Executor, progress: bool,
              plan: MixPlan | None = None, finish: dict | None = None) -> dict:
    """Write shards `todo`: in this process for one local task, else as executor tasks. On
    Slurm, `finish` ({"shards": the requested range, "extra": manifest fields}) adds a
    one-task job that depends on the tasks and finishes the mix (FinishMix), so the
    manifest appears without a re-run."""
    if executor.inline:
        run_inline(plan or resolve(spec, plan_dir(out)), out, todo, progress)
        return {"status": "done"}
    if executor.kind == "local" and fork_safe():
        run_forked(plan or resolve(spec, plan_dir(out)), out, todo, executor.tasks, executor.local_workers, progress)
        return {"status": "done"}
    step = WriteShards(spec.to_json(), str(out.resolve()), todo)
    logs = logs_dir(out, executor.kind, executor.tasks, todo)
    jobs = out / ".build" / "slurm_jobs.json"  # per mix, not per attempt: a rerun while some are queued must see them
    if executor.kind == "slurm" and finish is not None:
        shards = executor.make([step], logs, f"mixer-build-{out.name}")
        last = FinishMix(spec.to_json(), str(out.resolve()), finish["shards"], finish["extra"])
        return executor.run([last], logs.with_name(logs.name + "-finish"), f"mixer-build-{out.name}-manifest",
                            jobs_file=jobs, tasks=1, depends=shards)
    return executor.run([step], logs, f"mixer-build-{out.name}", jobs_file=jobs)


class FinishMix(PipelineStep):
    """The build's last step as a Slurm job after its shard tasks: prove every shard (the
    tasks ran elsewhere), write any that is missing, then the eval sets and the manifest."""

    name = "🧩 mix manifest"
    type = "✍️ - WRITER"

    def __init__(self, spec: dict, out_dir: str, shards: str | None, extra: dict | None) -> None:
        super().__init__()
        self.spec, self.out_dir, self.shards, self.extra = spec, out_dir, shards, extra

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        # the same range as the submission: the manifest only once every shard of the mix exists
        build(MixSpec.from_json(self.spec), Path(self.out_dir), shards=self.shards, progress=False, extra=self.extra)
        yield from ()


# Keys every status has; those of some statuses only follow (a total=False subclass: the
# modules postpone annotations, which NotRequired cannot see through on Python 3.11).
class _BuildStatusKeys(TypedDict):
    status: Literal["done", "partial", "submitted"]
    out: str
    shards_total: int
    shards_requested: int
    shards_skipped: int  # already there
    seconds: float


class BuildStatus(_BuildStatusKeys, total=False):
    """What `mixer build --json` prints and api.build returns (tests/test_result_types.py
    holds it to real output)."""
    shards_written: int  # done and partial
    shards_missing: int
    shards_submitted: int  # submitted to Slurm
    job_ids: list[str]
    logs: str
    manifest: dict  # done: the manifest written (docs/formats.md, Mix)


def build(
    spec: MixSpec,
    out: Path,
    shards: str | None = None,
    executor: Executor | None = None,
    progress: bool = True,
    extra: dict | None = None,
    recheck_stores: bool = False,
) -> BuildStatus:
    """Write the requested shards; when every shard exists, write eval sets and the manifest.

    Raises when shards of the requested range are still missing after a local or Ray run.
    A Slurm run submits them with a job that writes the manifest after them (status
    "submitted", with the job ids and logs; with --wait it returns once they are done).
    """
    out = Path(out)
    executor = (executor or Executor()).validate()
    plan = resolve(spec)
    wanted = parse_shards(shards, plan.n_shards)
    if executor.kind == "slurm":  # its job scripts name the folder: refused before anything is written
        check_text("--out", str(out.resolve()))
    identity = claim_directory(out, plan, recheck_stores)
    t0 = time.perf_counter()
    todo = [k for k in wanted if not keep_leftover(plan, out, k)]
    if todo:
        plan = prepare_plan(spec, out, identity)
        submitted = run_tasks(spec, out, todo, executor, progress, plan, finish={"shards": shards, "extra": extra})
        if submitted["status"] == "submitted" and not (out / "manifest.json").exists():
            return {"status": "submitted", "out": str(out), "shards_total": plan.n_shards,
                    "shards_requested": len(wanted), "shards_submitted": len(todo),
                    "shards_skipped": len(wanted) - len(todo), "job_ids": submitted["job_ids"],
                    "logs": submitted["logs"], "seconds": round(time.perf_counter() - t0, 3)}
    else:
        plan = resolve(spec, plan_dir(out))
    written = sum(read_sidecar(out, k) is not None for k in todo)
    missing = [k for k in range(plan.n_shards) if read_sidecar(out, k) is None]
    if not missing:  # the manifest vouches for every shard: prove those this call neither wrote nor proved
        others = [k for k in range(plan.n_shards) if k not in set(wanted)]
        redo = [k for k in others if not keep_leftover(plan, out, k)]
        if redo:
            plan = prepare_plan(spec, out, identity)
            run_tasks(spec, out, redo, Executor(), progress, plan)
            missing = [k for k in redo if read_sidecar(out, k) is None]
    status = {
        "out": str(out),
        "shards_total": plan.n_shards,
        "shards_requested": len(wanted),
        "shards_written": written,
        "shards_skipped": len(wanted) - len(todo),
        "shards_missing": len(missing),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if missing:
        missing_wanted = sorted(set(missing) & set(wanted))
        if missing_wanted and executor.kind != "slurm":
            raise MixerError(
                f"{out}: {len(missing_wanted)} of the {len(wanted)} requested shards are still missing after this run "
                f"(first: {missing_wanted[0]}; a task failed or was skipped); re-run the same command to finish them"
            )
        return {"status": "submitted" if missing_wanted else "partial", **status}
    manifest = finalize(plan, out, identity, recheck_stores, extra or {})
    return {"status": "done", **status, "manifest": manifest}


def expected_sidecar(plan: MixPlan, k: int) -> dict:
    """What shard k's sidecar must say, from the plan alone: its files, sample count and the
    samples of each source (closed-form placement; no token is read)."""
    start, stop = plan.shard_range(k)
    level, _ = plan.layout.positions(start, stop)
    counts = [0] * len(plan.sources)
    for lvl, src in enumerate(plan.level_sources()):
        if src is not None:
            counts[src.id] += int(np.count_nonzero(level == lvl))
    name = shard_name(k)
    return {"file": f"{name}.bin", "samples": stop - start, "provenance": f"{name}.prov.npy",
            "source_samples": {str(i): c for i, c in enumerate(counts)}}


def leftover_problem(plan: MixPlan, out: Path, k: int) -> str | None:
    """Why shard k's files may not be kept (None when they are whole): its sidecar must be
    what the plan promises, the shard and its provenance the size and checksums it records."""
    path = out / f"{shard_name(k)}.json"
    if not path.exists():
        return "missing"
    try:
        rec = read_json(path)
    except MixerError:
        return f"{path.name} is not valid JSON"
    if not isinstance(rec, dict):
        return f"{path.name} is not a sidecar"
    for key, want in expected_sidecar(plan, k).items():
        if rec.get(key) != want:
            return f"{path.name}: {key} is {rec.get(key)!r}, the plan says {want!r}"
    row = (plan.spec.seq_len + 1) * plan.dtype.itemsize
    for file, digest, size in ((rec["file"], rec.get(CHECKSUM), rec["samples"] * row),
                               (rec["provenance"], rec.get(f"provenance_{CHECKSUM}"), None)):
        f = out / file
        if not f.is_file() or f.is_symlink():
            return f"{file} is missing"
        if size is not None and f.stat().st_size != size:
            return f"{file} has {f.stat().st_size} bytes, not {size}"
        if checksum_file(f) != digest:
            return f"{file} does not match the checksum in {path.name}"
    return None


def keep_leftover(plan: MixPlan, out: Path, k: int) -> bool:
    """Whether shard k is done and whole; a damaged one loses its sidecar (so every task
    writes it again) and is named on stderr."""
    problem = leftover_problem(plan, out, k)
    if problem is None:
        return True
    if problem != "missing":
        sys.stderr.write(f"mixer: {out}: shard {k} is written again ({problem})\n")
        (out / f"{shard_name(k)}.json").unlink(missing_ok=True)
    return False


def finalize(plan: MixPlan, out: Path, identity: dict, recheck_stores: bool, extra: dict) -> dict:
    """Eval sets and manifest, once (the lock: cooperating processes may all get here)."""
    path = out / "manifest.json"
    with locked(out / ".build" / "lock"):
        if path.exists():
            return json.loads(path.read_text())
        cache_file = out / ".build" / STORES_CHECKED
        cache = _read_cache(cache_file)
        now = store_identity(plan, cache, recheck_stores)
        write_json(cache_file, cache)
        changed = [name for name, rec in identity["stores"].items() if now.get(name) != rec]
        if changed:
            raise MixerError(f"{out}: store {changed[0]!r} changed while this build ran, so its shards may mix two "
                             "versions of it; remove the folder and build again")
        summary = plan.summary()
        shards = summary.pop("shards")
        manifest = {
            "format": MIX_FORMAT,
            "mixer_version": __version__,
            **summary,
            "shards": [read_sidecar(out, k) for k in range(shards)],
            "eval": write_eval(plan, out),
            "sample_sets": sample_sets(plan, out),
            "recipe": plan.spec.to_json(),
            "store_checksums": identity["stores"],
            **extra,
        }
        write_manifest(out, manifest)
    return manifest
