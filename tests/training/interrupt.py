"""Interrupting a real training run, as `kill -9` would: for the resume tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def resume_steps(run: Path) -> list[int]:
    """Steps whose checkpoint holds a (complete) resume state."""
    return sorted(int(p.parent.name.split("-")[1]) for p in (Path(run) / "out").glob("step-*/resume.pth"))


def kill_mid_run(cmd: list[str], run: Path, env: dict | None = None, timeout: float = 600) -> int:
    """Run `cmd` (a `mixer train` command writing RUN) and SIGKILL its whole process group as
    soon as a step checkpoint's resume state is complete: a run killed while training. Returns
    the step it can resume from (the latest resume state left). Resume states are written at
    every step checkpoint (MIXER_RESUME_SECONDS=0), as a run of hours writes them."""
    p = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, "MIXER_RESUME_SECONDS": "0", **(env or {})})
    deadline = time.monotonic() + timeout
    try:
        while not resume_steps(run):
            if p.poll() is not None:
                raise AssertionError(f"the run ended (exit {p.returncode}) before it could be interrupted: {run}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no resume state in {run} after {timeout} s")
            time.sleep(0.01)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    return resume_steps(run)[-1]
