"""Flags and output shared by the subcommands."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import click

from mixer.errors import UsageError
from mixer.text import table  # noqa: F401 - the commands' tables


def default_stores() -> Path:
    return Path(os.environ.get("MIXER_STORES", "stores"))


stores_option = click.option(
    "--stores",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Token stores folder (default: $MIXER_STORES or ./stores).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a human summary.")


def resolve_stores(stores: Path | None) -> Path:
    return stores if stores is not None else default_stores()


ARGV: list[str] = []  # the command line after `mixer`, as main() received it
EMITTED = {"json": False}  # a command printed its JSON result: an error after it adds no second document


def emit(data: Any, as_json: bool, human: Callable[[Any], str] | str) -> None:
    """Print `data` as JSON, or its human summary."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=_jsonable))
        EMITTED["json"] = True
    else:
        click.echo(human if isinstance(human, str) else human(data))


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def executor_options(f):
    """The same executor flags on every command that runs tasks (tokenize, build, audit)."""
    from mixer.executors import KINDS

    for opt in reversed([
        click.option("--executor", type=click.Choice(KINDS), default="local", show_default=True,
                     help="Where the tasks run: this machine, a Slurm cluster, or a Ray cluster."),
        click.option("--tasks", type=int, default=1, show_default=True, help="Tasks the work is split into."),
        click.option("--workers", type=int, default=None,
                     help="Tasks at once [default: min(tasks, CPUs) locally; no cap on a cluster]."),
        click.option("--partition", default=lambda: os.environ.get("MIXER_SLURM_PARTITION"),
                     help="Slurm partition [default: $MIXER_SLURM_PARTITION, else the cluster's default]."),
        click.option("--cpus-per-task", type=int, default=1, show_default=True, help="Slurm/Ray: CPUs per task."),
        click.option("--mem-per-cpu", type=float, default=2.0, show_default=True, help="Slurm/Ray: GB per CPU."),
        click.option("--time", "time_limit", default="24:00:00", show_default=True, help="Slurm: time limit per task."),
        click.option("--account", default=lambda: os.environ.get("MIXER_SLURM_ACCOUNT"),
                     help="Slurm account to charge [default: $MIXER_SLURM_ACCOUNT, else yours]."),
        click.option("--qos", default=lambda: os.environ.get("MIXER_SLURM_QOS"),
                     help="Slurm quality of service [default: $MIXER_SLURM_QOS, else the cluster's]."),
        click.option("--gres", help="Slurm generic resources per task (e.g. gpu:1)."),
        click.option("--constraint", help="Slurm node features (e.g. 'a100&ib')."),
        click.option("--sbatch-arg", "sbatch_args", multiple=True,
                     help="Any other sbatch option, passed through (repeatable): --sbatch-arg=--exclusive."),
        click.option("--wait", is_flag=True, help="Slurm: block until the submitted jobs finish, then finish the "
                     "command (a build's manifest, a tokenize's store) instead of returning at once."),
        click.option("--ray-address", help="Ray: join this cluster (e.g. auto, ray://head:10001) instead of starting one."),
        click.option("--verbose", is_flag=True, help="Show the task logs (datatrove's pipeline and stats) on the "
                     "console too; they are always in the log files."),
    ]):
        f = opt(f)
    return f


def executor_from_flags(kw: dict):
    """Pop the executor flags out of a command's keyword arguments. Not validated here: the API
    function validates it after its own checks (audit's --work first: a slurm audit without
    --work is told so even where sbatch is missing)."""
    from mixer.executors import Executor

    from mixer.lifetime import quiet_logs, verbose_logs

    verbose_logs() if kw.pop("verbose") else quiet_logs()
    return Executor(kind=kw.pop("executor"), tasks=kw.pop("tasks"), workers=kw.pop("workers"),
                    partition=kw.pop("partition"), cpus_per_task=kw.pop("cpus_per_task"),
                    mem_per_cpu_gb=kw.pop("mem_per_cpu"), time=kw.pop("time_limit"),
                    ray_address=kw.pop("ray_address"), account=kw.pop("account"), qos=kw.pop("qos"),
                    gres=kw.pop("gres"), constraint=kw.pop("constraint"), sbatch_args=tuple(kw.pop("sbatch_args")),
                    wait=kw.pop("wait"))


runs_argument = click.argument("runs", nargs=-1, type=click.Path(path_type=Path))


def need_runs(runs: tuple[Path, ...]) -> list[Path]:
    if not runs:
        raise UsageError("give one or more RUN folders (e.g. mixer report runs/*)")
    return list(runs)
