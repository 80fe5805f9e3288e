"""The processes a command starts die with it, and log no traceback without --debug.

datatrove's local executor runs tasks in a `multiprocess` pool started with "forkserver":
the workers are children of a fork server, not of the mixer command, and a Manager
process is forked from the command. A command killed with SIGKILL left all of them
running (a tokenize worker finished its part, possibly hours later, for nobody). Linux
delivers a chosen signal to a process when its parent dies (prctl PR_SET_PDEATHSIG), so:

  * every Python-level fork of the command (the Manager) asks for SIGKILL (os.register_at_fork);
  * the fork server imports this module first (a forkserver preload), asks for SIGKILL
    itself (its parent is the command) and registers the same fork hook for its workers.

Command dies -> fork server and Manager die -> workers die. The resource tracker exits
by itself once every process holding its pipe is gone. Elsewhere than Linux nothing changes.

Tracebacks: datatrove logs a failing task with `logger.exception` before re-raising, so
a full disk printed a loguru traceback above mixer's one-line error. A loguru patcher
demotes records that carry an exception to DEBUG: the task's log file (level DEBUG)
keeps the traceback, the console (level INFO) does not. --debug (MIXER_DEBUG=1) keeps
them on the console too.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

_PR_SET_PDEATHSIG = 1
_COMMAND_PID = "MIXER_COMMAND_PID"  # set by install(); tells the fork server who its parent is
_forker = {"pid": 0}


def _set_pdeathsig(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no libc prctl: leave the process as it was
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _before_fork() -> None:
    # the signal comes when the forking *thread* ends: only a main-thread fork lives as long as its process
    _forker["pid"] = os.getpid() if threading.current_thread() is threading.main_thread() else 0


def _after_fork_in_child() -> None:
    if _forker["pid"]:
        _set_pdeathsig(_forker["pid"])


def _debug() -> bool:
    return os.environ.get("MIXER_DEBUG") == "1"


def _demote_exceptions(record: dict) -> None:
    if record["exception"] is not None and record["level"].no > 10:
        # the record's own level class: loguru has no public constructor for it
        record["level"] = type(record["level"])("DEBUG", 10, record["level"].icon)


def quiet_task_tracebacks() -> None:
    """Unless --debug: task tracebacks go to the task log files, not the console."""
    if _debug():
        return
    from loguru import logger

    logger.configure(patcher=_demote_exceptions)


_QUIET = "MIXER_QUIET_LOGS"  # set by the CLI unless --verbose; read by the fork server and its workers
_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | <level>{level: <8}</level> | {name}:{function}:{line} - <level>{message}</level>"


def quiet_logs() -> None:
    """Keep datatrove's and mixer's INFO logs (pipeline banners, per-task stats printed
    twice) off the console: warnings and errors still show; every task's log file keeps
    all of it. datatrove re-adds a console sink at INFO for every task it starts, so its
    task logger is wrapped too (here and, through the fork server, in its workers)."""
    os.environ[_QUIET] = "1"
    _console_and([])
    _wrap_task_logger()


def verbose_logs() -> None:
    """datatrove's own task logging, console included (--verbose); undoes quiet_logs."""
    os.environ.pop(_QUIET, None)
    import datatrove.executor.base as base
    import datatrove.utils.logging as dt_logging

    base.add_task_logger, base.close_task_logger = dt_logging.add_task_logger, dt_logging.close_task_logger
    dt_logging.setup_default_logger()


def _console_and(sinks: list) -> None:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING", format=_FORMAT)
    for sink in sinks:
        logger.add(sink, level="DEBUG", format=_FORMAT)


def _wrap_task_logger() -> None:
    """datatrove's task logger (console at INFO plus the task's file) and its reset after
    the task (console at DEBUG) as they are, but with the console at WARNING."""
    import datatrove.executor.base as base

    if getattr(base.add_task_logger, "mixer_quiet", False):
        return

    def add_task_logger(logging_dir, rank, local_rank=0, node_rank=-1):
        from loguru import logger

        logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
        _console_and([logfile])
        logger.info(f"Launching pipeline for {rank=}")
        return logfile

    def close_task_logger(logfile):
        from loguru import logger

        logger.complete()
        _console_and([])
        logfile.close()

    add_task_logger.mixer_quiet = True
    base.add_task_logger, base.close_task_logger = add_task_logger, close_task_logger


def hook_forks() -> None:
    """Every fork of this process from its main thread dies with it (Linux)."""
    if sys.platform.startswith("linux") and not _forker.get("hooked"):
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
        _forker["hooked"] = True


def install() -> None:
    """Call in the command before it starts an executor's processes (from the main
    thread: the signal follows the thread that started the fork server)."""
    quiet_task_tracebacks()
    hook_forks()
    if threading.current_thread() is not threading.main_thread():
        return
    os.environ[_COMMAND_PID] = str(os.getpid())
    from multiprocess import forkserver

    forkserver.set_forkserver_preload(["__main__", __name__])


def _in_fork_server() -> None:
    """Runs when the fork server imports this module (see install)."""
    command = os.environ.get(_COMMAND_PID)
    server = sys.argv == ["-c"] and "multiprocess.forkserver" in sys.modules  # how the server is started
    if not sys.platform.startswith("linux") or not server or command is None or os.getppid() != int(command):
        return  # imported by anything but the command's fork server: the command, a worker, a test
    _set_pdeathsig(int(command))
    quiet_task_tracebacks()
    hook_forks()
    if os.environ.get(_QUIET) == "1":
        _wrap_task_logger()


_in_fork_server()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a process of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
