"""`mixer tokenize` seals what it writes (store.json checksums every file), re-seals a store
written before checksums existed, and leaves no process behind when it is killed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tokutil import word_tokenizer
from mixer.checks.verify_store import verify_store
from mixer.formats.checksum import checksum_file
from mixer.formats.store import meta_digest

WORDS = [f"w{i}" for i in range(400)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    """A word-level tokenizer over WORDS (+ [UNK], <|endoftext|>), trained in memory (no network)."""
    return word_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json", WORDS)


def write_corpus(folder: Path, files: int, docs: int, repeat: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    lines = [json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 300)))}) + "\n"
             for _ in range(docs)]
    for k in range(files):
        (folder / f"part{k}.jsonl").write_text("".join(lines) * repeat)
    return folder


def tokenize(tokenizer: Path, stores: Path, data: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "mixer", "tokenize", "--source", "d", "--role", "domain", "--tokenizer", str(tokenizer),
            "--stores", str(stores), "--input", str(data / "*.jsonl"), *more]


def test_tokenize_records_a_checksum_of_every_file(tmp_path, tokenizer):
    data = write_corpus(tmp_path / "data", files=2, docs=200)
    p = subprocess.run(tokenize(tokenizer, tmp_path / "stores", data), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    store = tmp_path / "stores" / "d"
    meta = json.loads((store / "store.json").read_text())
    files = {f.name for f in store.iterdir() if f.name != "store.json"}
    assert set(meta["checksums"]["files"]) == files >= {"train.ds", "train.ds.index", "train.ids", "test.ds"}
    for name, rec in meta["checksums"]["files"].items():
        assert rec == {"bytes": (store / name).stat().st_size, "xxh3_128": checksum_file(store / name)}
    assert meta["checksums"]["meta_xxh3_128"] == meta_digest(meta)
    assert verify_store(store)["ok"]


def test_a_store_from_before_checksums_is_rewritten_by_a_plain_rerun(tmp_path, tokenizer):
    data = write_corpus(tmp_path / "data", files=2, docs=200)
    cmd = tokenize(tokenizer, tmp_path / "stores", data, "--json")
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    store = tmp_path / "stores" / "d"
    before = {f.name: f.read_bytes() for f in store.iterdir() if f.name != "store.json"}
    meta = json.loads((store / "store.json").read_text())
    del meta["checksums"]  # as an older mixer wrote it
    (store / "store.json").write_text(json.dumps(meta))
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["sources"][0]["status"] == "written"
    assert {f.name: f.read_bytes() for f in store.iterdir() if f.name != "store.json"} == before
    assert "checksums" in json.loads((store / "store.json").read_text())
    up_to_date = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert json.loads(up_to_date.stdout)["sources"][0]["status"] == "up to date"


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie is dead; only nobody reaped it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_killing_tokenize_leaves_no_worker_running(tmp_path, tokenizer):
    # two files that keep a worker each busy for several seconds
    data = write_corpus(tmp_path / "data", files=2, docs=500, repeat=60)
    proc = subprocess.Popen(tokenize(tokenizer, tmp_path / "stores", data, "--tasks", "2", "--workers", "2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    family: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            family = _descendants(proc.pid)
            if sum("forkserver" in _cmdline(p) for p in family) >= 3:  # the fork server and both workers
                break
            time.sleep(0.05)
        assert proc.poll() is None and len(family) >= 4, "the workers never started"
        family = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(map(_running, family)):
            time.sleep(0.05)
        left = [f"{p}: {_cmdline(p)[:80]}" for p in family if _running(p)]
        assert not left, left
    finally:  # orphans are no longer our descendants: kill what was recorded
        for p in set(family + _descendants(proc.pid) + [proc.pid]):
            if _running(p):
                os.kill(p, signal.SIGKILL)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
