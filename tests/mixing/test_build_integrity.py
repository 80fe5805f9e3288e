"""Trust the chain: a build reads only stores that prove their bytes, fixes its identity
when it starts, shares its folder safely with other processes, touches nothing outside
it, finishes after a kill, and fails in one line."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixer.checks.verify import verify
from mixer.errors import MixerError
from mixer.mixing.build import build
from mixer.mixing.spec import MixSpec
from tests.synth import make_store

L = 16
ROOT = Path(__file__).resolve().parents[2]


def spec(stores, **kw):
    base = dict(stores=str(stores), domain="music", fraction=0.1, tokens=48_000, seq_len=L, seed=0, samples_per_shard=300)
    base.update(kw)
    return MixSpec(**base)


def flags(stores, *more: str) -> list[str]:
    return ["build", "--stores", str(stores), "--domain", "music", "--fraction", "0.1", "--tokens", "48K",
            "--seq-len", str(L), "--samples-per-shard", "300", "--quiet", *more]


def mix_bytes(mix: Path) -> dict:
    return {p.relative_to(mix).as_posix(): p.read_bytes() for p in sorted(mix.rglob("*"))
            if p.is_file() and ".build" not in p.parts}


def cli(*args: str, cwd: Path | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixer", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=60, **kw)


def child(tmp_path: Path, patch: str, *args: str, wait: bool = True, **kw):
    """The CLI in a child process after `patch` ran in it (a monkeypatch a kill test needs).

    Output goes to files, not pipes: a process the child leaves behind would hold a pipe
    open and hang the test instead of failing it."""
    script = tmp_path / f"child-{time.monotonic_ns()}.py"
    script.write_text(f"import sys\n{patch}\nfrom mixer.cli import main\nmain(sys.argv[1:])\n")
    cmd = [sys.executable, str(script), *map(str, args)]
    out, err = script.with_suffix(".out"), script.with_suffix(".err")
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, text=True, **kw)
    proc.script, proc.out, proc.err = script, out, err
    return finish(proc) if wait else proc


def finish(proc: subprocess.Popen, timeout: float = 60) -> subprocess.CompletedProcess:
    proc.wait(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.out.read_text(), proc.err.read_text())


def processes_running(needle: str) -> list[int]:
    """Live (not zombie) processes whose command line contains `needle`."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and needle in (d / "cmdline").read_bytes().decode(errors="replace"):
                if (d / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    pids.append(int(d.name))
        except OSError:
            continue
    return pids


def one_line_error(p: subprocess.CompletedProcess, code: int, *parts: str) -> str:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert "Traceback" not in p.stderr and "| ERROR" not in p.stderr, p.stderr
    assert lines[-1].startswith("mixer: error: "), p.stderr
    for part in parts:
        assert part in lines[-1], (part, lines[-1])
    return lines[-1]


def flip_byte(f: Path, at: int = 3) -> None:
    data = bytearray(f.read_bytes())
    data[at] ^= 0x01
    f.write_bytes(bytes(data))


# ---- 1. stores carry checksums; build and verify check them ---------------------------

@pytest.mark.parametrize("name", ["train.ds", "train.ds.index", "test.ds"])
def test_build_refuses_a_store_file_with_a_flipped_byte(stores, tmp_path, name):
    flip_byte(stores / "music" / name)
    with pytest.raises(MixerError, match=rf"music/{name}: checksum mismatch"):
        build(spec(stores), tmp_path / "mix", progress=False)
    assert not (tmp_path / "mix").exists()  # refused before anything was written


@pytest.mark.parametrize("key,value", [("eos_id", 65534), ("vocab_size", 65000)])
def test_build_refuses_an_edited_store_json(stores, tmp_path, key, value):
    f = stores / "music" / "store.json"
    meta = json.loads(f.read_text())
    meta["tokenizer"][key] = value
    f.write_text(json.dumps(meta))
    with pytest.raises(MixerError, match=r"music/store.json: its content does not match its checksum"):
        build(spec(stores), tmp_path / "mix", progress=False)


def test_store_without_checksums_is_refused_with_the_fix(stores, tmp_path):
    f = stores / "prose" / "store.json"
    meta = json.loads(f.read_text())
    del meta["checksums"]
    f.write_text(json.dumps(meta))
    p = cli(*flags(stores, "--out", tmp_path / "mix"))
    one_line_error(p, 1, "prose/store.json", "without file checksums", "mixer tokenize --force")
    assert not (tmp_path / "mix").exists()


def test_manifest_records_the_store_checksums(stores, tmp_path):
    m = build(spec(stores), tmp_path / "mix", progress=False)["manifest"]
    for name in ("music", "prose"):
        meta = json.loads((stores / name / "store.json").read_text())
        assert m["store_checksums"][name] == {"path": str((stores / name).resolve()), "checksums": meta["checksums"]}
    assert verify(tmp_path / "mix", progress=False)["stores_checked"] == ["music", "prose"]


@pytest.mark.parametrize("name", ["train.ds", "test.ds"])
def test_verify_names_a_store_corrupted_after_the_build(stores, tmp_path, name):
    build(spec(stores), tmp_path / "mix", progress=False)
    flip_byte(stores / "music" / name)
    # the store, not a shard, is named (test.ds was never checked at all before)
    with pytest.raises(MixerError, match=rf"music/{name}: missing, truncated or its checksum does not match"):
        verify(tmp_path / "mix", quick=True, progress=False)


def test_verify_names_a_retokenized_store(stores, tmp_path):
    build(spec(stores), tmp_path / "mix", progress=False)
    make_store(stores, "music", "domain", n_docs=40, base=40_000, seed=9)
    with pytest.raises(MixerError, match=r"store 'music' changed since .* was built \(test.ds, test.ds.index"):
        verify(tmp_path / "mix", progress=False)


def test_unchanged_size_and_mtime_are_trusted_unless_recheck_stores(stores, tmp_path):
    build(spec(stores), tmp_path / "mix", shards="0:2", progress=False)
    f = stores / "prose" / "train.ds"
    st = f.stat()
    flip_byte(f, at=101)  # bit rot: same size, and the mtime put back
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(MixerError, match=r"prose/train.ds: checksum mismatch"):
        build(spec(stores), tmp_path / "mix", progress=False, recheck_stores=True)
    p = cli(*flags(stores, "--out", tmp_path / "mix", "--recheck-stores"))
    one_line_error(p, 1, "prose/train.ds: checksum mismatch")
    # the fast path (keyed on size and mtime, as the cache says) does not re-read it
    assert build(spec(stores), tmp_path / "mix", progress=False)["status"] == "done"


def test_full_verify_rereads_the_stores_quick_trusts_what_the_build_checked(stores, tmp_path):
    build(spec(stores), tmp_path / "mix", progress=False)
    f = stores / "prose" / "train.ds"
    st = f.stat()
    flip_byte(f, at=101)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # bit rot: size and mtime as the build saw them
    assert verify(tmp_path / "mix", quick=True, progress=False)["stores_checked"] == ["music", "prose"]
    with pytest.raises(MixerError, match=r"prose/train.ds: missing, truncated or its checksum does not match"):
        verify(tmp_path / "mix", progress=False)


# ---- 2. a build's identity is fixed when it starts --------------------------------------

def test_resume_after_the_stores_changed_is_refused(stores, tmp_path):
    build(spec(stores), tmp_path / "mix", shards="0:4", progress=False)
    make_store(stores, "music", "domain", n_docs=40, base=40_000, seed=7)  # tokenize --seed 1 --force, in effect
    p = cli(*flags(stores, "--out", tmp_path / "mix"))
    one_line_error(p, 1, "other contents of store 'music'")
    assert not (tmp_path / "mix" / "manifest.json").exists()
    assert sorted(p.name for p in (tmp_path / "mix").glob("shard-*.json")) == [f"shard-{k:05d}.json" for k in range(4)]


def test_shards_with_other_settings_are_refused(stores, tmp_path):
    build(spec(stores), tmp_path / "mix", shards="0:2", progress=False)
    p = cli(*flags(stores, "--out", tmp_path / "mix", "--shards", "2:4", "--seed", "3"))
    one_line_error(p, 1, "already holds a different build")


def test_a_build_started_by_an_older_mixer_is_refused(stores, tmp_path):
    build(spec(stores), tmp_path / "mix", shards="0:2", progress=False)
    marker = tmp_path / "mix" / ".build" / "spec.json"
    marker.write_text(json.dumps(json.loads(marker.read_text())["spec"]))  # the old marker: the spec alone
    with pytest.raises(MixerError, match="started by an older mixer"):
        build(spec(stores), tmp_path / "mix", progress=False)


def test_an_excluded_mix_that_changed_is_refused(stores, tmp_path):
    build(spec(stores, fraction=0.01, tokens=16_000), tmp_path / "pre", progress=False)  # touches some documents
    post = spec(stores, fraction=None, tokens=None, epochs=1, exclude_seen_in=[str(tmp_path / "pre")])
    build(post, tmp_path / "post", shards="0:1", progress=False)
    m = json.loads((tmp_path / "pre" / "manifest.json").read_text())
    m["warnings"] = ["edited"]
    (tmp_path / "pre" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(MixerError, match="leaves documents out of changed"):
        build(post, tmp_path / "post", progress=False)


# ---- 3. processes sharing one mix folder -------------------------------------------------

PAUSE_IN_CLAIM = """
import time
from pathlib import Path
import mixer.mixing.build as b
flag = Path(sys.argv.pop(1))
real = b.write_json
def slow(path, data):
    if Path(path).name == "spec.json":
        flag.write_text("claiming")
        time.sleep(2.0)
    return real(path, data)
b.write_json = slow
"""


def test_two_different_builds_cannot_both_claim_one_folder(stores, tmp_path):
    flag = tmp_path / "a-is-claiming"
    a = child(tmp_path, PAUSE_IN_CLAIM, flag, *flags(stores, "--out", tmp_path / "mix"), wait=False)
    deadline = time.monotonic() + 20
    while not flag.exists() and a.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert flag.exists(), a.err.read_text()
    b = cli(*flags(stores, "--out", tmp_path / "mix", "--fraction", "0.12"))  # A is between its check and its claim
    done = finish(a)
    assert done.returncode == 0, done.stderr
    one_line_error(b, 1, "already holds a different build")
    assert json.loads((tmp_path / "mix" / "manifest.json").read_text())["fraction"]["requested"] == 0.1
    verify(tmp_path / "mix", progress=False)


def test_cooperating_shard_ranges_in_two_processes_both_complete(stores, tmp_path):
    build(spec(stores), tmp_path / "ref", progress=False)
    procs = [subprocess.Popen([sys.executable, "-m", "mixer", *flags(stores, "--out", tmp_path / "mix", "--shards", r)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in ("0:5", "5:10")]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert mix_bytes(tmp_path / "mix") == mix_bytes(tmp_path / "ref")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_only_temporaries_of_dead_processes_on_this_host_are_removed(stores, tmp_path):
    mix = tmp_path / "mix"
    build(spec(stores), mix, shards="0:1", progress=False)
    host = socket.gethostname()
    live = mix / f".shard-00003.bin.tmp-{host}-{os.getpid()}"  # a process writing it right now
    other = mix / f".shard-00004.bin.tmp-elsewhere-{_dead_pid()}"  # another host's process
    dead = mix / f".shard-00005.bin.tmp-{host}-{_dead_pid()}"
    for f in (live, other, dead):
        f.write_bytes(b"partial")
    build(spec(stores), mix, shards="1:3", progress=False)
    assert live.exists() and other.exists() and not dead.exists()


def test_a_file_system_without_locks_builds_with_a_warning(stores, tmp_path, monkeypatch, capsys):
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert build(spec(stores), tmp_path / "mix", progress=False)["status"] == "done"
    assert "mixer: warning: " in capsys.readouterr().err


# ---- 4. nothing outside the mix folder; a folder that is not a mix is refused untouched -----

def test_a_user_folder_is_refused_before_anything_is_touched(stores, tmp_path):
    user = tmp_path / "userdir"
    user.mkdir()
    files = {".notes.tmp-1": b"mine", "data.txt": b"precious", "manifest.json": b"{}"}
    for name, data in files.items():
        (user / name).write_bytes(data)
    p = cli(*flags(stores, "--out", user))
    one_line_error(p, 1, "userdir: exists and is a folder that is not a mix build")
    assert {f.name: f.read_bytes() for f in user.iterdir()} == files
    p = cli(*flags(stores, "--out", user / "data.txt"))
    one_line_error(p, 2, "--out", "data.txt' is a file")
    with pytest.raises(MixerError, match="data.txt: exists and is a file"):
        build(spec(stores), user / "data.txt", progress=False)
    assert {f.name: f.read_bytes() for f in user.iterdir()} == files


def test_a_recipe_build_does_not_overwrite_a_user_folder(stores, tmp_path):
    user = tmp_path / "userdir2"
    user.mkdir()
    (user / "recipe.json").write_text("my notes")
    p = cli("build", "--recipe", ROOT / "recipes" / "stages" / "spt.toml", "--stores", stores, "--out", user,
            "--set", "tokens=40K", "--set", "seq_len=16", "--quiet")
    one_line_error(p, 1, "userdir2: exists and is not the output of a recipe build")
    assert [f.name for f in user.iterdir()] == ["recipe.json"] and (user / "recipe.json").read_text() == "my notes"


# ---- 5. names are one path component ------------------------------------------------------

@pytest.mark.parametrize("name", ["../../escaped", "/abs/path", "a/b", "..", ".hidden", ""])
def test_mix_names_cannot_leave_the_mixes_folder(stores, tmp_path, name):
    work = tmp_path / "deep" / "work"
    work.mkdir(parents=True)
    before = sorted(tmp_path.rglob("*"))
    p = cli(*flags(stores, "--name", name), cwd=work)
    one_line_error(p, 2, f"--name {name!r}: must be one plain folder name")
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("name", ["../../../escaped", "/abs", "a/b", ".."])
def test_stage_names_cannot_leave_the_recipe_folder(stores, tmp_path, name):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[mix]\ndomain = "music"\ntokens = "40K"\nseq_len = 16\n[[stage]]\nname = {json.dumps(name)}\n'
                      "fraction = 0.1\n")
    before = sorted(tmp_path.rglob("*"))
    p = cli("build", "--recipe", recipe, "--stores", stores, "--out", tmp_path / "out" / "r", "--quiet")
    one_line_error(p, 2, "[[stage]] name", "must be one plain folder name")
    assert sorted(tmp_path.rglob("*")) == before


# ---- 9. a killed multi-task build finishes on the next run -------------------------------

KILL_WHEN_RANK_1_STARTS = {
    # local tasks are forked processes of the command: rank 1's task kills the command as kill -9 would
    "forked": """
import os, signal, time
import mixer.mixing.build as b
real = b._forked_task
def task(rank):
    if rank == 1:  # rank 0 finished its shards
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(30)  # the task dies with the command (mixer/lifetime.py), not of its own accord
    return real(rank)
b._forked_task = task
""",
    # a command already running a thread gets datatrove's local executor (a fork could copy a held lock)
    "datatrove": """
import os, signal, threading
import mixer.mixing.build as b
threading.Thread(target=threading.Event().wait, daemon=True).start()
real = b.WriteShards.run
def run(self, data=None, rank=0, world_size=1):
    if rank == 1:  # rank 0 finished (its completion file is written): die as kill -9 would
        os.kill(os.getpid(), signal.SIGKILL)
    yield from real(self, data, rank, world_size)
b.WriteShards.run = run
"""}


@pytest.mark.parametrize("rerun_tasks", [3, 2])
@pytest.mark.parametrize("tasks", ["forked", "datatrove"])
def test_killed_multi_task_build_finishes_byte_identical(stores, tmp_path, rerun_tasks, tasks):
    build(spec(stores), tmp_path / "ref", progress=False)
    mix = tmp_path / "mix"
    p = child(tmp_path, KILL_WHEN_RANK_1_STARTS[tasks], *flags(stores, "--out", mix, "--tasks", "3", "--workers", "1"),
              wait=False)
    done = finish(p)
    assert done.returncode == -signal.SIGKILL, done.stderr
    deadline = time.monotonic() + 5  # and nothing it started outlives it (datatrove's Manager did)
    while processes_running(str(p.script)) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = processes_running(str(p.script))
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left
    done_before = len(list(mix.glob("shard-*.json")))
    assert 0 < done_before < 10 and not (mix / "manifest.json").exists()
    r = cli(*flags(stores, "--out", mix, "--tasks", str(rerun_tasks), "--workers", "1", "--json"))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["status"] == "done"
    assert summary["shards_written"] == 10 - done_before and summary["shards_skipped"] == done_before
    assert mix_bytes(mix) == mix_bytes(tmp_path / "ref")


def test_a_build_task_that_dies_fails_the_build_in_one_line_and_a_rerun_finishes(stores, tmp_path):
    """A forked task killed on its own (the OOM killer) fails the command, not hangs it."""
    build(spec(stores), tmp_path / "ref", progress=False)
    mix = tmp_path / "mix"
    patch = """
import os, signal
import mixer.mixing.build as b
real = b._forked_task
def task(rank):
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(rank)
b._forked_task = task
"""
    p = child(tmp_path, patch, *flags(stores, "--out", mix, "--tasks", "3", "--workers", "2"))
    one_line_error(p, 1, "a worker process died", "re-run the same command to resume")
    assert not (mix / "manifest.json").exists()
    r = cli(*flags(stores, "--out", mix, "--tasks", "3", "--json"))
    assert r.returncode == 0, r.stderr
    assert mix_bytes(mix) == mix_bytes(tmp_path / "ref")


SLOW_SHARDS = """
import signal, time
# Ctrl-C as in a terminal: a shell without job control starts a background job (CI run with
# `&`) with SIGINT ignored, and Python then installs no KeyboardInterrupt handler
signal.signal(signal.SIGINT, signal.default_int_handler)
import mixer.mixing.build as b
real = b.shard_samples
def slow(plan, k, **kw):
    time.sleep(2.0)  # a task's share (5 shards) takes 10 s
    return real(plan, k, **kw)
b.shard_samples = slow
"""


def test_ctrl_c_stops_forked_build_tasks_at_once_and_a_rerun_finishes(stores, tmp_path):
    """Ctrl-C reaches the process group; the command stops its forked tasks now, not after
    their share of shards, leaves nothing running and nothing half-written in sight."""
    build(spec(stores), tmp_path / "ref", progress=False)
    mix = tmp_path / "mix"
    p = child(tmp_path, SLOW_SHARDS, *flags(stores, "--out", mix, "--tasks", "2", "--workers", "2"), wait=False,
              start_new_session=True)
    deadline = time.monotonic() + 30
    while not list(mix.glob("shard-*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)
    t = time.monotonic()
    done = finish(p)
    assert time.monotonic() - t < 5, "the tasks ran on after Ctrl-C"
    assert done.returncode == 130, done.stderr
    time.sleep(0.5)
    assert not processes_running(str(p.script))
    written = len(list(mix.glob("shard-*.json")))
    assert 0 < written < 10 and not (mix / "manifest.json").exists()
    r = cli(*flags(stores, "--out", mix, "--tasks", "2", "--json"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["shards_skipped"] == written
    assert mix_bytes(mix) == mix_bytes(tmp_path / "ref")
    assert not [f for f in mix.rglob(".*.tmp-*")]


def test_a_build_that_leaves_requested_shards_missing_fails(stores, tmp_path, monkeypatch):
    import mixer.mixing.build as b

    monkeypatch.setattr(b, "run_tasks", lambda *a, **k: {"status": "done"})  # an executor that silently did nothing
    with pytest.raises(MixerError, match=r"10 of the 10 requested shards are still missing"):
        build(spec(stores), tmp_path / "mix", progress=False)
    with pytest.raises(MixerError, match=r"2 of the 2 requested shards"):
        build(spec(stores), tmp_path / "mix", shards="0:2", progress=False)


def test_a_partial_range_on_request_exits_zero_and_counts_what_it_wrote(stores, tmp_path):
    r = cli(*flags(stores, "--out", tmp_path / "mix", "--shards", "0:3", "--json"))
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert (s["status"], s["shards_written"], s["shards_missing"]) == ("partial", 3, 7)
    r = cli(*flags(stores, "--out", tmp_path / "mix", "--shards", "0:4", "--json"))
    s = json.loads(r.stdout)
    assert (s["shards_written"], s["shards_skipped"], s["shards_missing"]) == (1, 3, 6)


# ---- 11. bad flags and errors: one line, exit 1 or 2, naming the flag or file ----------------

@pytest.mark.parametrize("args,named", [
    (["--samples-per-shard", "-3"], "--samples-per-shard"),
    (["--samples-per-shard", "0"], "--samples-per-shard"),
    (["--tasks", "0"], "--tasks"),
    (["--workers", "0"], "--workers"),
    (["--tokens", "1e30"], "--tokens"),
    (["--tokens", "inf"], "--tokens"),
    (["--seed", "-1"], "--seed"),
    (["--max-epochs", "-1"], "--max-epochs"),
])
def test_bad_flags_name_the_flag_and_write_nothing(stores, tmp_path, args, named):
    p = cli(*flags(stores, "--out", tmp_path / "mix", *args))
    one_line_error(p, 2, named)
    assert not (tmp_path / "mix").exists()


@pytest.mark.parametrize("line,named", [
    ('seq_len = "abc"', "seq_len must be a number"),
    ("seq_len = 16.5", "seq_len must be a whole number"),
    ("seed = -1", "seed: must be a whole number from 0 to 4294967295"),
    ("seed = 1180591620717411303424", "seed: must be a whole number from 0 to 4294967295"),
    ("samples_per_shard = 0", "samples_per_shard: must be at least 1"),
    ('tokens = "1e30"', "tokens: must be between 1 and 2^53"),
    ('fraction = "x"', "fraction must be a number"),
    ('window = "a:b"', "window must be a number"),
])
def test_bad_recipe_values_name_the_stage_and_key(stores, tmp_path, line, named):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[mix]\ndomain = "music"\ntokens = "40K"\nseq_len = 16\nfraction = 0.1\n[[stage]]\nname = "pre"\n{line}\n')
    p = cli("build", "--recipe", recipe, "--stores", stores, "--out", tmp_path / "out", "--quiet")
    assert p.returncode in (1, 2)
    one_line_error(p, p.returncode, "r.toml [[stage]] pre", named)
    assert not (tmp_path / "out").exists()


NO_SPACE_IN_SHARDS = """
import errno, os
import mixer.mixing.shards as s
def full(plan, k, out_dir, *arrays):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_dir / s.shard_name(k)) + ".bin")
s.persist_shard = full
"""


@pytest.mark.parametrize("tasks", ["1", "2", "2 datatrove"])
def test_disk_full_is_one_line_naming_the_file(stores, tmp_path, tasks):
    """2: the shards are written by forked tasks of the command. 2 datatrove (a command
    already running a thread): inside datatrove tasks, which log the exception with loguru
    before re-raising it: that traceback goes to the task log, not the console."""
    mix = tmp_path / "mix"
    patch = NO_SPACE_IN_SHARDS + ("import threading\nthreading.Thread(target=threading.Event().wait, daemon=True).start()\n"
                                  if "datatrove" in tasks else "")
    p = child(tmp_path, patch, *flags(stores, "--out", mix, "--tasks", tasks.split()[0], "--workers", "1"))
    line = one_line_error(p, 1)
    assert line == f"mixer: error: {mix}/shard-00000.bin: no space left on the device"
    logs = "".join(f.read_text() for f in mix.glob(".build/logs-*/logs/task_*.log"))
    if "datatrove" in tasks:
        assert "Traceback" in logs and "No space left on device" in logs
    else:
        assert not logs


def test_file_size_limit_is_named(stores, tmp_path):
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (9000, 9000))

    p = subprocess.run([sys.executable, "-m", "mixer", *flags(stores, "--out", tmp_path / "mix")], capture_output=True,
                       text=True, timeout=60, preexec_fn=limit)
    one_line_error(p, 1, "mix/shard-00000.bin: file too large")
    assert not [f for f in (tmp_path / "mix").iterdir() if ".tmp-" in f.name]


@pytest.mark.parametrize("code,words", [(errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied"),
                                        (errno.ENOSPC, "no space left on the device")])
def test_unwritable_output_folder_says_why(stores, tmp_path, monkeypatch, capsys, code, words):
    from mixer.cli import main

    def refuse(self, *a, **k):
        raise OSError(code, os.strerror(code), str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(SystemExit) as e:
        main(flags(stores, "--out", tmp_path / "mix"))
    err = capsys.readouterr().err
    assert e.value.code == 1 and err == f"mixer: error: {tmp_path / 'mix' / '.build'}: {words}\n"


# ---- a resume re-proves every leftover it keeps ------------------------------------------


def _perm_file(mix: Path) -> Path:
    return max((p for p in (mix / ".build" / "plan").glob("*/*.npy")), key=lambda p: p.stat().st_size)


def _swap_entries(f: Path, n: int) -> None:
    """Well-formed but wrong: the first n pairs of entries of a plan array swapped."""
    import numpy as np

    a = np.load(f)
    for i in range(n):
        a[2 * i], a[2 * i + 1] = a[2 * i + 1].copy(), a[2 * i].copy()
    np.save(f, a)


def _edit_sidecar(f: Path, key: str, value) -> None:
    rec = json.loads(f.read_text())
    rec[key] = value
    f.write_text(json.dumps(rec))


DAMAGE = {
    "truncated shard": lambda m: os.truncate(m / "shard-00001.bin", 1000),
    "flipped shard": lambda m: flip_byte(m / "shard-00001.bin", 777),
    "deleted shard": lambda m: (m / "shard-00001.bin").unlink(),
    "flipped provenance": lambda m: flip_byte(m / "shard-00002.prov.npy", 200),
    "deleted provenance": lambda m: (m / "shard-00002.prov.npy").unlink(),
    "edited sidecar checksum": lambda m: _edit_sidecar(m / "shard-00000.json", "xxh3_128", "0" * 32),
    "edited sidecar sample count": lambda m: _edit_sidecar(m / "shard-00000.json", "samples", 7),
    "garbage sidecar": lambda m: (m / "shard-00003.json").write_bytes(b"\x00{not json"),
    "flipped plan array": lambda m: flip_byte(_perm_file(m), 300),
    "plan array, 3 entries swapped": lambda m: _swap_entries(_perm_file(m), 3),
    "plan array, many entries swapped": lambda m: _swap_entries(_perm_file(m), 40),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_resume_over_damaged_leftovers_rewrites_them(stores, tmp_path, damage):
    """An interrupted build (no manifest yet) whose leftovers were damaged: the resume proves
    each shard, provenance, sidecar and plan array it keeps, rewrites what fails, and ends in
    the same bytes as an undamaged build; verify passes."""
    ref = tmp_path / "ref"
    build(spec(stores), ref, progress=False)
    mix = tmp_path / "mix"
    build(spec(stores), mix, shards="0:4", progress=False)  # 4 of the shards, the plan kept in .build
    DAMAGE[damage](mix)
    p = cli(*flags(stores, "--out", mix))
    assert p.returncode == 0, p.stderr
    assert mix_bytes(mix) == mix_bytes(ref)
    assert verify(mix)["ok"]
