"""`mixer tokenize`: one source -> one token store.

    read (SourceReader) -> split keys (SplitKeys) -> [MinHash (NearDupSignatures)] -> tokenize (TokenizeParts)

runs as datatrove tasks (local, Slurm or Ray executor; task r reads every tasks-th input
file), each writing a part; then one process merges the parts into the store
(`mixer.ingest.merge`). Work lives in `STORES/.work/<source>/<key>/`, the key hashing
everything the parts depend on (inputs with sizes and mtimes, tokenizer, keys, policies,
task count): a re-run with the same key skips finished tasks (datatrove's completion
files in `logs/`), a changed input starts afresh. The work folder is removed once the
store is in place. The tokenizer backend (HF `tokenizers` or `tiktoken`, see
`mixer.ingest.tiktoken_backend`) is not in the key: both give the same ids, which every
tiktoken task checks on a sample against HF.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from mixer.executors import Executor, check_text
from mixer.errors import MixerError, UsageError
from mixer.ingest.readers import InputFile, SourceReader, list_inputs
from mixer.ingest.sources import SourceSpec
from mixer.formats.folders import claim_folder, refuse_links
from mixer.formats.store import list_stores, open_store, token_dtype
from mixer.ingest.tiktoken_backend import choose_backend
from mixer.ingest.vocab import TokenizerInfo, load_tokenizer_info

WORK = ".work"
LOGS = ".logs"  # STORES/.logs/<source>/: the last tokenize's task logs
_WORK_NAME = re.compile(r"^[0-9a-f]{20}-t\d+$")  # work folders tokenize made: f"{fingerprint}-t{tasks}"
PARTS_FORMAT = 1  # bump when the part layout changes, so old work folders are not reused


@dataclass
class RunOptions:
    """How to run the tasks; none of it changes the store's bytes."""

    executor: Executor = field(default_factory=Executor)
    force: bool = False
    batch_size: int = 1024
    tokenizer_backend: str = "auto"  # auto | hf | tiktoken: the same ids either way (checked), tiktoken faster

    def validate(self) -> "RunOptions":
        self.executor.validate()
        if self.tokenizer_backend not in ("auto", "hf", "tiktoken"):
            raise UsageError(f"--tokenizer-backend {self.tokenizer_backend}: use auto, hf or tiktoken")
        return self


def fingerprint(spec: SourceSpec, files: list[InputFile], tok: TokenizerInfo) -> str:
    """Hash of everything the tokenized documents depend on (not the split settings)."""
    stat = [(f.path, os.stat(f.path).st_size, os.stat(f.path).st_mtime_ns) for f in files]
    what = {
        "parts_format": PARTS_FORMAT, "files": stat, "tokenizer": tok.sha256, "eos_id": tok.eos_id,
        "text_key": spec.text_key, "id_key": spec.id_key, "on_bad_record": spec.on_bad_record,
        # the signature method: parts (.minhash) and stores of another version are not reused
        "near_duplicates": spec.use_near_duplicates and _neardup_version(),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]


def _neardup_version() -> int:
    from mixer.ingest.neardup import VERSION

    return VERSION


def _check_study_tokenizer(stores: Path, spec: SourceSpec, tok: TokenizerInfo, force: bool) -> None:
    """Every store of a study shares one tokenizer: refuse to add one made with another."""
    others = [s for s in list_stores(stores) if s.name != spec.name]
    clash = [s for s in others if s.tokenizer.get("sha256") != tok.sha256]
    if clash and not force:
        s = clash[0]
        raise MixerError(
            f"{spec.where('tokenizer')} {tok.path}: {tok.name} (sha256 {tok.sha256[:12]}) differs from the tokenizer of "
            f"{s.path} ({s.tokenizer.get('name')}, sha256 {s.tokenizer['sha256'][:12]}); every store of a study must "
            "share one (use another --stores folder, or --force)"
        )


def _existing(stores: Path, spec: SourceSpec, key: str, force: bool) -> dict | None:
    """The store's metadata if it is already up to date; an error if it differs (without --force)."""
    if not (stores / spec.name / "store.json").exists():
        return None
    meta = open_store(stores, spec.name).meta
    same_split = meta.get("split", {}).get("test_fraction") == spec.heldout_fraction and meta.get("split", {}).get(
        "test_tokens"
    ) == spec.test_tokens and meta.get("split", {}).get("seed") == spec.seed and (
        spec.role != "domain" or "val" in meta.get("splits", {}))  # stores from before domain validation splits
    if meta.get("fingerprint") == key and same_split and meta.get("role") == spec.role:
        # a store from before store.json carried checksums is rewritten (same inputs, same bytes)
        return meta if "checksums" in meta else None
    if not force:
        raise MixerError(
            f"{stores / spec.name}: a store built from other inputs or settings is there; pass --force to replace it"
        )
    return None


def build_pipeline(
    spec: SourceSpec, files: list[InputFile], tok: TokenizerInfo, work: Path, run: RunOptions, backend: str = "hf"
) -> list[PipelineStep]:
    from mixer.ingest.neardup import NearDupSignatures
    from mixer.ingest.tokenizer_step import TokenizeParts
    from mixer.ingest.split import SplitKeys

    parts = work / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    near = spec.use_near_duplicates
    workers = run.executor.local_workers if run.executor.kind == "local" else 1
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    in_process = run.executor.kind == "local" and workers == 1  # a bar only where one task's output is the console
    steps = [SourceReader(files, spec.text_key, spec.id_key, spec.on_bad_record, str(parts),
                          f"{spec.name}: tokenize" if in_process else None), SplitKeys(near)]
    if near:
        steps.append(NearDupSignatures())
    steps.append(
        TokenizeParts(tok.path, tok.eos_id, token_dtype(tok.vocab_size).str, str(parts), near, run.batch_size, threads,
                      backend)
    )
    return steps


def _reader_reports(parts: Path, tasks: int, logs: Path) -> list[dict]:
    """Each task's reader outcome; the first data error is raised as one line.

    A failed task is un-marked as complete so that a re-run (after fixing the data or
    choosing --on-bad-record skip) redoes it rather than trusting its part.
    """
    reports = [json.loads((parts / f"reader-{r:05d}.json").read_text()) for r in range(tasks)]
    errors = [r for r in reports if r["error"]]
    for r in errors:
        (logs / "completions" / f"{r['rank']:05d}").unlink(missing_ok=True)
    if errors:
        raise MixerError(min(errors, key=lambda r: r["error"])["error"])
    return reports


def backend_record(parts: Path, tasks: int, choice: dict, logs: Path) -> dict:
    """store.json's `tokenizer_backend`: what the tasks used and how much the run check compared.

    A difference found by any task's check raises its line, and every task is un-marked
    as complete: the re-run (with --tokenizer-backend hf) must not keep a tiktoken part.
    Parts written before the backends existed have no report: HF tokenized them.
    """
    from mixer.ingest.tokenizer_step import part_name

    reports = []
    for r in range(tasks):
        f = parts / f"{part_name(r)}.backend.json"
        reports.append(json.loads(f.read_text()) if f.exists() else {"backend": "hf", "checked_documents": 0,
                                                                        "checked_tokens": 0, "error": None})
    errors = [r["error"] for r in reports if r["error"]]
    if errors:
        for r in range(tasks):
            (logs / "completions" / f"{r:05d}").unlink(missing_ok=True)
        raise MixerError(errors[0])
    used = sorted({r["backend"] for r in reports})
    record = dict(choice) | {"used": "+".join(used)}  # two names only if a resumed run switched backend
    record["checked_documents"] = sum(r["checked_documents"] for r in reports)
    record["checked_tokens"] = sum(r["checked_tokens"] for r in reports)
    return record


def tokenize_source(spec: SourceSpec, stores: Path, run: RunOptions) -> dict:
    """Tokenize one source into STORES/<name>; returns store.json's content (plus a status)."""
    from mixer.ingest.merge import write_store

    spec.validate()
    run.validate()
    skipped: list[str] = []
    files = list_inputs(spec.inputs, spec.where("inputs"), spec.text_files, spec.text_files_flag, skipped)
    notes = [f"skipped {len(skipped)} repository file(s), not documents: "
             f"{', '.join(os.path.basename(p) for p in skipped[:5])}{' ...' if len(skipped) > 5 else ''}"] if skipped else []
    if run.executor.tasks > len(files):  # a task reads whole files: the others would start for nothing
        notes.append(f"--tasks {run.executor.tasks}: {len(files)} input file(s), so {len(files)} task(s) "
                     "(a task reads whole input files)")
        run = replace(run, executor=run.executor.with_tasks(len(files)))
    tok = load_tokenizer_info(spec.tokenizer, spec.eos, spec.where("tokenizer"))
    stores = Path(stores)
    if run.executor.kind == "slurm":  # its job scripts name the folder: refused before anything is written
        check_text("--stores", str(stores.resolve() / spec.name))
    claim_folder(stores / spec.name, "store", f"--source (or --stores {stores})")
    _check_study_tokenizer(stores, spec, tok, run.force)
    key = fingerprint(spec, files, tok)
    if (meta := _existing(stores, spec, key, run.force)) is not None:
        return meta | {"status": "up to date", "notes": notes + heldout_notes(meta)}

    source_work = stores / WORK / spec.name
    refuse_links(stores, WORK, LOGS)  # the work folder (and the staged store in it) stays inside --stores
    tasks = run.executor.tasks
    work = source_work / f"{key}-t{tasks}"
    for stale in source_work.glob("*") if source_work.exists() else []:
        if stale != work and _WORK_NAME.match(stale.name):  # an older run with other inputs: never reused
            shutil.rmtree(stale, ignore_errors=True)
    logs = work / "logs"
    choice = choose_backend(tok.path, run.tokenizer_backend)
    logger.info(f"{spec.name}: tokenizer backend {choice.backend} ({choice.reason})")
    pipeline = build_pipeline(spec, files, tok, work, run, choice.backend)
    dtype = token_dtype(tok.vocab_size)
    extra = {"input_files": len(files), "fingerprint": key, "tokenizer_backend": choice.to_dict()}
    if spec.origin is not None:
        extra["recipe"] = {"path": str(spec.origin), "overrides": spec.overrides}
    if run.executor.kind == "slurm":
        # the tasks, then the merge as a one-task job that depends on them (datatrove submits
        # the dependency first); a rerun while either is queued submits nothing
        tasks_job = run.executor.make(pipeline, logs, f"mixer-tokenize-{spec.name}")
        merge = MergeStep(spec, tok, str(dtype), tasks, str(work), str(stores), extra)
        sub = run.executor.run([merge], work / "merge-logs", f"mixer-merge-{spec.name}",
                               jobs_file=source_work / "slurm_jobs.json", tasks=1, depends=tasks_job)
        if sub["status"] == "done" and (stores / spec.name / "store.json").is_file():  # --wait, or jobs all done
            return open_store(stores, spec.name).meta | {"status": "written", "notes": notes}
        return {"source": spec.name, "status": "submitted", "store": str(stores / spec.name), "work": str(work),
                "job_ids": sub.get("job_ids", []), "logs": sub.get("logs"), "notes": notes}
    run.executor.run(pipeline, logs, f"mixer-tokenize-{spec.name}")
    try:
        reports = _reader_reports(work / "parts", tasks, logs)
        # a backend difference: no tiktoken part of this run is trusted, not even checked ones
        extra["tokenizer_backend"] = backend_record(work / "parts", tasks, extra["tokenizer_backend"], logs)
    except MixerError:
        # bad data: fixing it changes the key, so nothing here can be reused
        shutil.rmtree(source_work, ignore_errors=True)
        raise
    # a failed merge (e.g. --test-tokens too large) keeps the parts: they do not depend on
    # the split settings, so the corrected re-run only merges again
    claim_folder(stores / spec.name, "store", f"--source (or --stores {stores})")  # still not someone else's
    meta = write_store(spec, tok, dtype, tasks, work, stores, reports, extra)
    keep_logs(work / "logs", stores / LOGS / spec.name)
    shutil.rmtree(source_work, ignore_errors=True)
    with contextlib.suppress(OSError):  # STORES/.work goes too once no source has work in flight
        source_work.parent.rmdir()
    return meta | {"status": "written", "notes": notes + heldout_notes(meta)}


def heldout_notes(meta: dict) -> list[str]:
    """A warning when the held-out split is far (over 2x either way) from the size asked for:
    documents are held out whole, so a few long ones can overshoot a token budget."""
    split, splits = meta.get("split") or {}, meta.get("splits") or {}
    held = "test" if meta.get("role") == "domain" else "val"
    got = (splits.get(held) or {}).get("tokens")
    total = sum(int(v.get("tokens", 0)) for v in splits.values())
    want = split.get("test_tokens") or (split.get("test_fraction") or 0) * total
    if not got or not want or 0.5 <= got / want <= 2:
        return []
    return [f"warning: the {held} split holds {got:,} tokens, {got / want:.1f}x the {int(want):,} asked for "
            f"(documents are held out whole: a few long documents decide it; adjust "
            f"{'test_tokens' if split.get('test_tokens') else 'test_fraction'} if that matters)"]


def keep_logs(logging_dir: Path, dest: Path) -> None:
    """The tasks' log files and stats outlive the work folder: STORES/.logs/<source>/ (the
    console shows only warnings unless --verbose)."""
    files = sorted((logging_dir / "logs").glob("*.log")) + [p for p in (logging_dir / "stats.json",) if p.is_file()]
    if not files:
        return
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copyfile(f, dest / f.name)


class MergeStep(PipelineStep):
    """The merge as a datatrove step, for Slurm (a one-task job that depends on the tasks)."""

    name = "mixer merge"
    type = "🔢 - TOKENIZER"

    def __init__(self, spec: SourceSpec, tok: TokenizerInfo, dtype: str, tasks: int, work: str, stores: str, extra: dict):
        super().__init__()
        self.spec, self.tok, self.dtype, self.tasks = spec, tok, dtype, tasks
        self.work, self.stores, self.extra = work, stores, extra

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from mixer.ingest.merge import write_store

        work = Path(self.work)
        reports = _reader_reports(work / "parts", self.tasks, work / "logs")
        extra = self.extra | {"tokenizer_backend": backend_record(work / "parts", self.tasks,
                                                                  self.extra["tokenizer_backend"], work / "logs")}
        claim_folder(Path(self.stores) / self.spec.name, "store", f"--source (or --stores {self.stores})")
        write_store(self.spec, self.tok, np.dtype(self.dtype), self.tasks, work, Path(self.stores), reports, extra)
        yield from ()
