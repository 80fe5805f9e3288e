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
import os
import re
import shutil
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

from datatrove.pipeline.base import PipelineStep
from tqdm import tqdm

from mixer import __version__
from mixer.executors import Executor
from mixer.formats.atomic import read_json, write_json
from mixer.errors import MixerError, UsageError
from mixer.lifetime import pid_alive
from mixer.formats.folders import refuse_links
from mixer.formats.mix import MIX_FORMAT
from mixer.formats.checksum import checksum_bytes, checksum_file
from mixer.formats.store import check_store_files
from mixer.mixing.plan_cache import PLAN_FORMAT
from mixer.mixing.spec import MixPlan, MixSpec, resolve, spec_digest
from mixer.mixing.shards import persist_shard, read_sidecar, shard_samples, write_eval, write_shard

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


def check_name(name: str, what: str) -> str:
    """A name that becomes a folder: one plain path component, so nothing lands outside
    the folder it is meant for."""
    if (not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name
            or "\0" in name or os.path.isabs(name)):
        raise UsageError(f"{what} {name!r}: must be one plain folder name (not empty, no '/', no '..', "
                         "no leading '.')")
    return name


MAX_TOKENS = 2**53  # sample counts stay exact in float64 arithmetic (fractions, windows) up to here


def check_settings(spec: MixSpec, named: Callable[[str], str]) -> None:
    """What MixSpec.validate leaves open, named as the user wrote it: `named(field)` gives
    the flag (--seed) or the recipe key (recipe.toml [[stage]] pre: seed)."""
    for key in ("seed", "subset_seed"):
        if getattr(spec, key) < 0:
            raise UsageError(f"{named(key)}: must be a non-negative integer, got {getattr(spec, key)}")
    if spec.samples_per_shard is not None and spec.samples_per_shard < 1:
        raise UsageError(f"{named('samples_per_shard')}: must be at least 1, got {spec.samples_per_shard}")
    for key in ("tokens", "domain_subset_tokens"):
        v = getattr(spec, key)
        if v is not None and not 1 <= v <= MAX_TOKENS:
            raise UsageError(f"{named(key)}: must be between 1 and 2^53 (9.0e15) tokens, got {v:.4g}")
    if spec.seq_len < 1:
        raise UsageError(f"{named('seq_len')}: must be at least 1, got {spec.seq_len}")
    if not spec.max_epochs > 0:
        raise UsageError(f"{named('max_epochs')}: must be positive, got {spec.max_epochs}")
    if spec.name is not None:
        check_name(spec.name, named("name"))


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
        plan = resolve(spec, folder)
        streams = plan.materialize()
        write_json(record, {"format": PLAN_FORMAT, "build": identity_digest(identity), "streams": streams})
    return plan


def run_inline(plan: MixPlan, out: Path, todo: list[int], progress: bool) -> None:
    """One process: compute shard k + 1 while a writer thread writes and fsyncs shard k
    (fsync was 28% of a single-threaded build). At most two shards are held in memory."""
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = None
        for i, k in enumerate(tqdm(todo, desc=f"build {out.name}", unit="shard", disable=not progress)):
            samples, prov = shard_samples(plan, k, reuse=len(todo) - i)
            if pending is not None:
                pending.result()
            pending = writer.submit(persist_shard, plan, k, out, samples, prov)
        if pending is not None:
            pending.result()


def logs_dir(out: Path, executor: str, tasks: int, todo: list[int]) -> Path:
    """datatrove's logging dir, one per (executor, task count, exact to-do list).

    Its completion files say "rank r finished its share", and a share is todo[r::tasks]:
    a completion of an earlier attempt, whose to-do list was longer, says nothing about
    this attempt's share of rank r (a killed build skipped those shards forever).
    """
    digest = checksum_bytes(json.dumps(todo).encode())[:16]
    return out / ".build" / f"logs-{executor}-{tasks}-{digest}"


def run_tasks(spec: MixSpec, out: Path, todo: list[int], executor: Executor, progress: bool,
              plan: MixPlan | None = None) -> str:
    """Write shards `todo`: in this process for one local task, else as executor tasks."""
    if executor.inline:
        run_inline(plan or resolve(spec, plan_dir(out)), out, todo, progress)
        return "done"
    step = WriteShards(spec.to_json(), str(out.resolve()), todo)
    # jobs recorded per mix, not per attempt: a rerun while some are queued must see them
    return executor.run([step], logs_dir(out, executor.kind, executor.tasks, todo), f"mixer-build-{out.name}",
                        jobs_file=out / ".build" / "slurm_jobs.json")


def build(
    spec: MixSpec,
    out: Path,
    shards: str | None = None,
    executor: Executor | None = None,
    progress: bool = True,
    extra: dict | None = None,
    recheck_stores: bool = False,
) -> dict:
    """Write the requested shards; when every shard exists, write eval sets and the manifest.

    Raises when shards of the requested range are still missing after a local or Ray run
    (a Slurm run only submits them: status "submitted").
    """
    out = Path(out)
    executor = (executor or Executor()).validate()
    plan = resolve(spec)
    wanted = parse_shards(shards, plan.n_shards)
    identity = claim_directory(out, plan, recheck_stores)
    todo = [k for k in wanted if read_sidecar(out, k) is None]
    t0 = time.perf_counter()
    if todo:
        plan = prepare_plan(spec, out, identity)
        run_tasks(spec, out, todo, executor, progress, plan)
    else:
        plan = resolve(spec, plan_dir(out))
    written = sum(read_sidecar(out, k) is not None for k in todo)
    missing = [k for k in range(plan.n_shards) if read_sidecar(out, k) is None]
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
            "recipe": plan.spec.to_json(),
            "store_checksums": identity["stores"],
            **extra,
        }
        write_json(path, manifest)
    return manifest
