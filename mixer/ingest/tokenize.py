"""`mixer tokenize`: one source -> one token store.

    read (SourceReader) -> split keys (SplitKeys) -> [MinHash (NearDupSignatures)] -> tokenize (TokenizeParts)

runs as datatrove tasks (local, Slurm or Ray executor; task r reads every tasks-th input
file), each writing a part; then one process merges the parts into the store
(`mixer.ingest.merge`). Work lives in `STORES/.work/<source>/<key>/`, the key hashing
everything the parts depend on (inputs with sizes and mtimes, tokenizer, keys, policies,
task count): a re-run with the same key skips finished tasks (datatrove's completion
files in `logs/`), a changed input starts afresh. The work folder is removed once the
store is in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.executor.base import PipelineExecutor
from datatrove.pipeline.base import PipelineStep

from mixer.errors import MixerError, UsageError
from mixer.ingest.readers import InputFile, SourceReader, list_inputs
from mixer.ingest.sources import SourceSpec
from mixer.formats.store import list_stores, open_store, token_dtype
from mixer.ingest.vocab import TokenizerInfo, load_tokenizer_info

WORK = ".work"
PARTS_FORMAT = 1  # bump when the part layout changes, so old work folders are not reused


@dataclass
class RunOptions:
    """How to run the tasks; none of it changes the store's bytes."""

    executor: str = "local"
    tasks: int = 1
    workers: int | None = None
    force: bool = False
    partition: str | None = None  # slurm
    time: str = "24:00:00"  # slurm
    batch_size: int = 1024

    def validate(self) -> "RunOptions":
        if self.executor not in ("local", "slurm", "ray"):
            raise UsageError(f"--executor {self.executor}: use local, slurm or ray")
        if self.tasks < 1:
            raise UsageError(f"--tasks {self.tasks}: must be at least 1")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers {self.workers}: must be at least 1")
        if self.executor == "slurm" and not self.partition:
            raise UsageError("--executor slurm needs --partition (or $MIXER_SLURM_PARTITION)")
        return self

    @property
    def n_workers(self) -> int:
        return self.workers or min(self.tasks, os.cpu_count() or 1)


def fingerprint(spec: SourceSpec, files: list[InputFile], tok: TokenizerInfo) -> str:
    """Hash of everything the tokenized documents depend on (not the split settings)."""
    stat = [(f.path, os.stat(f.path).st_size, os.stat(f.path).st_mtime_ns) for f in files]
    what = {
        "parts_format": PARTS_FORMAT, "files": stat, "tokenizer": tok.sha256, "eos_id": tok.eos_id,
        "text_key": spec.text_key, "id_key": spec.id_key, "on_bad_record": spec.on_bad_record,
        "near_duplicates": spec.use_near_duplicates,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]


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
        return meta
    if not force:
        raise MixerError(
            f"{stores / spec.name}: a store built from other inputs or settings is there; pass --force to replace it"
        )
    return None


def build_pipeline(
    spec: SourceSpec, files: list[InputFile], tok: TokenizerInfo, work: Path, run: RunOptions
) -> list[PipelineStep]:
    from mixer.ingest.neardup import NearDupSignatures
    from mixer.ingest.tokenizer_step import TokenizeParts
    from mixer.ingest.split import SplitKeys

    parts = work / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    near = spec.use_near_duplicates
    workers = run.n_workers if run.executor == "local" else 1
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    steps = [SourceReader(files, spec.text_key, spec.id_key, spec.on_bad_record, str(parts)), SplitKeys(near)]
    if near:
        steps.append(NearDupSignatures())
    steps.append(
        TokenizeParts(tok.path, tok.eos_id, token_dtype(tok.vocab_size).str, str(parts), near, run.batch_size, threads)
    )
    return steps


def _executor(pipeline: list[PipelineStep], run: RunOptions, logs: Path, name: str) -> PipelineExecutor:
    if run.executor == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(pipeline, tasks=run.tasks, workers=run.n_workers, logging_dir=str(logs))
    if run.executor == "ray":
        try:
            from datatrove.executor.ray import RayPipelineExecutor
        except ImportError:
            raise UsageError("--executor ray needs ray: pip install 'mixer[ray]'") from None
        return RayPipelineExecutor(pipeline, tasks=run.tasks, workers=run.workers or -1, logging_dir=str(logs))
    from datatrove.executor.slurm import SlurmPipelineExecutor

    venv = os.path.join(sys.prefix, "bin", "activate") if sys.prefix != sys.base_prefix else None
    return SlurmPipelineExecutor(
        pipeline, tasks=run.tasks, time=run.time, partition=run.partition, workers=run.workers or -1,
        logging_dir=str(logs), job_name=f"mixer-tokenize-{name}", venv_path=venv,
    )


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


def tokenize_source(spec: SourceSpec, stores: Path, run: RunOptions) -> dict:
    """Tokenize one source into STORES/<name>; returns store.json's content (plus a status)."""
    from mixer.ingest.merge import write_store

    spec.validate()
    run.validate()
    files = list_inputs(spec.inputs, spec.where("inputs"))
    tok = load_tokenizer_info(spec.tokenizer, spec.eos, spec.where("tokenizer"))
    stores = Path(stores)
    _check_study_tokenizer(stores, spec, tok, run.force)
    key = fingerprint(spec, files, tok)
    if (meta := _existing(stores, spec, key, run.force)) is not None:
        return meta | {"status": "up to date"}

    source_work = stores / WORK / spec.name
    work = source_work / f"{key}-t{run.tasks}"
    for stale in source_work.glob("*") if source_work.exists() else []:
        if stale != work:  # an older run with other inputs: its parts can never be reused
            shutil.rmtree(stale, ignore_errors=True)
    logs = work / "logs"
    pipeline = build_pipeline(spec, files, tok, work, run)
    executor = _executor(pipeline, run, logs, spec.name)
    dtype = token_dtype(tok.vocab_size)
    extra = {"input_files": len(files), "fingerprint": key}
    if run.executor == "slurm":
        from datatrove.executor.slurm import SlurmPipelineExecutor

        merge = MergeStep(spec, tok, str(dtype), run.tasks, str(work), str(stores), extra)
        SlurmPipelineExecutor(
            [merge], tasks=1, time=run.time, partition=run.partition, logging_dir=str(work / "merge-logs"),
            job_name=f"mixer-merge-{spec.name}", depends=executor, venv_path=executor.venv_path,
        ).run()  # launches its dependency (the tasks) first
        return {"source": spec.name, "status": "submitted", "store": str(stores / spec.name), "work": str(work)}
    executor.run()
    try:
        reports = _reader_reports(work / "parts", run.tasks, logs)
    except MixerError:
        # bad data: fixing it changes the key, so nothing here can be reused
        shutil.rmtree(source_work, ignore_errors=True)
        raise
    # a failed merge (e.g. --test-tokens too large) keeps the parts: they do not depend on
    # the split settings, so the corrected re-run only merges again
    meta = write_store(spec, tok, dtype, run.tasks, work, stores, reports, extra)
    shutil.rmtree(source_work, ignore_errors=True)
    with contextlib.suppress(OSError):  # STORES/.work goes too once no source has work in flight
        source_work.parent.rmdir()
    return meta | {"status": "written"}


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
        write_store(self.spec, self.tok, np.dtype(self.dtype), self.tasks, work, Path(self.stores), reports, self.extra)
        yield from ()
