"""Forked worker processes for work over large read-only state (a mix's mapped plan, the
laid-out streams of a verify): a forked child inherits that state for free, where a
spawned one would re-derive or re-map it, and where threads stay bound by the GIL in the
Python around each piece of work. Used by `mixer verify` and by a local build of several
tasks.

Forking is safe only while no other thread could hold a lock the child needs, so a pool
is made only from a process whose other threads are known to be harmless; callers fall
back to threads (verify) or to datatrove's executor (build) otherwise, and where the
platform cannot fork (macOS and Windows start processes by spawning them)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Iterator

from mixer.errors import MixerError

_STATE: tuple = ()  # what the current pool's workers inherited (forked_pool)


def cores() -> int:
    """The cores this process may run on (a Slurm allocation or taskset, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_POOL_PREFIXES: set[str] = {"fsspecIO"}  # threads that hold no lock a worker needs (pool_threads)


def pool_threads(prefix: str) -> str:
    """Register the name prefix of one of mixer's own thread pools and return it. Its threads
    run only inside a mixer call and wait on their own queue between calls, so a fork from
    the thread that makes the next call finds them idle: the worker inherits no lock it
    would take (it never uses their pool: a forked process starts its own)."""
    _POOL_PREFIXES.add(prefix)
    return prefix


def fork_safe() -> bool:
    """True where the platform forks and no thread but this one runs, beside known harmless
    ones: mixer's own pools (pool_threads), tqdm's monitor (started by any earlier progress
    bar; it sleeps on its own event and touches only tqdm's list of bars) and fsspec's IO
    loop (datatrove's file system; fsspec resets it in a forked child through
    os.register_at_fork). Any other thread, a caller's own, rules a fork out."""
    if "fork" not in mp.get_all_start_methods():
        return False
    from tqdm._monitor import TMonitor

    return all(t is threading.current_thread() or isinstance(t, TMonitor) or t.name.startswith(tuple(_POOL_PREFIXES))
               for t in threading.enumerate())


def inherited() -> tuple:
    """In a worker of forked_pool: the state its pool was made with."""
    return _STATE


@contextmanager
def forked_pool(workers: int, state: tuple) -> Iterator[ProcessPoolExecutor]:
    """An executor of `workers` forked processes that see `state` through inherited().
    Check fork_safe() first: the processes fork here, before the executor (or the caller)
    starts threads of its own. The workers die with the command (SIGKILL on its death,
    mixer/lifetime.py) and ignore Ctrl-C, which reaches the whole process group: the
    command stops them. A worker's MixerError reaches the caller as its one line, without the
    worker's traceback attached; a worker that dies (killed, out of memory) fails the work
    with a one-line error instead of leaving it waiting (multiprocessing.Pool would). On
    exit, work not started is cancelled; what the workers write is renamed into place whole
    or not at all."""
    global _STATE
    from mixer.lifetime import hook_forks

    hook_forks()
    _STATE = state
    pool = ProcessPoolExecutor(workers, mp.get_context("fork"), initializer=signal.signal,
                               initargs=(signal.SIGINT, signal.SIG_IGN))
    try:
        # The executor forks every worker at its first submit: make that now, while fork_safe
        # holds, not when the caller submits its work after starting threads of its own.
        pool.submit(int).result()
        yield pool
    except BaseException as e:
        # Ctrl-C, or a fault the caller did not wait out: stop the workers now rather than
        # after their share (a build task's share is many shards). What they leave is at
        # most a temporary file, which the next run removes.
        # _processes: the executor has no public way to stop work already running (3.9-3.13 keep it)
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()
        if isinstance(e, BrokenProcessPool):
            raise MixerError("a worker process died (killed, or out of memory?); re-run the same command to "
                             "resume") from None
        if isinstance(e, MixerError):
            raise e from None  # the executor chains the worker's traceback as the cause
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _STATE = ()
