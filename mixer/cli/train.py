"""`mixer train pretrain|finetune|replay` and `mixer eval`: flags only; the work is in
mixer.training, which reaches the trainer (`--trainer`, default litgpt) through its registry."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import click

from mixer.errors import UsageError
from mixer.formats.run import SELECT_ON
from mixer.training.schedules import FINETUNE_SCHEDULES
from mixer.units import SEED_MAX, parse_optional_count
from mixer.cli.common import emit, json_option

_path = click.Path(path_type=Path)


_SBATCH_OPTIONS = [
    click.option("--sbatch", is_flag=True,
                 help="Write RUN/sbatch.sh, a Slurm job that runs this same command in an allocation of the run's "
                      "nodes and devices, and stop: submit it with `sbatch RUN/sbatch.sh`. GPUs per node are "
                      "those seen here; on a login node without GPUs add --sbatch-arg=--gpus-per-node=N."),
    click.option("--partition", default=lambda: os.environ.get("MIXER_SLURM_PARTITION"),
                 help="--sbatch: Slurm partition [default: $MIXER_SLURM_PARTITION, else the cluster's]."),
    click.option("--account", default=lambda: os.environ.get("MIXER_SLURM_ACCOUNT"),
                 help="--sbatch: Slurm account [default: $MIXER_SLURM_ACCOUNT, else yours]."),
    click.option("--qos", default=lambda: os.environ.get("MIXER_SLURM_QOS"),
                 help="--sbatch: Slurm quality of service [default: $MIXER_SLURM_QOS]."),
    click.option("--time", "time_limit", default="24:00:00", show_default=True, help="--sbatch: time limit."),
    click.option("--sbatch-arg", "sbatch_args", multiple=True,
                 help="--sbatch: any other sbatch option (repeatable): --sbatch-arg=--exclusive."),
]


def _flags_of(decorators: list) -> dict[str, bool]:
    """flag -> whether it takes a value, read from the click options themselves."""
    def probe() -> None: ...
    for d in decorators:
        probe = d(probe)
    return {name: not p.is_flag for p in probe.__click_params__ for name in p.opts}


# --sbatch and its Slurm flags: left out of the command the job script runs.
_SBATCH_FLAGS = _flags_of(_SBATCH_OPTIONS)


def _job_argv(argv: list[str]) -> list[str]:
    """The command line without --sbatch and its Slurm flags (`--flag value` or `--flag=value`)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in _SBATCH_FLAGS:
            skip = _SBATCH_FLAGS[name] and "=" not in a
            continue
        out.append(a)
    return out


def _sbatch_options(f):
    """--sbatch and the Slurm settings of its job; the command receives `sbatch`: None, or the
    job's #SBATCH settings."""
    import functools

    @functools.wraps(f)
    def wrapper(*args, sbatch: bool, partition: str | None, account: str | None, qos: str | None,
                time_limit: str, sbatch_args: tuple[str, ...], **kw):
        job = None
        if sbatch:
            from mixer.executors import Executor, parse_sbatch_arg

            Executor(kind="slurm", partition=partition, account=account, qos=qos, time=time_limit)  # validates
            job = {k: v for k, v in (("partition", partition), ("account", account), ("qos", qos)) if v}
            job.update(parse_sbatch_arg(a) for a in sbatch_args)
            job["time"] = time_limit
        return f(*args, sbatch=job, **kw)

    for opt in reversed(_SBATCH_OPTIONS):
        wrapper = opt(wrapper)
    return wrapper


def _wrote_sbatch(path: Path) -> None:
    click.echo(f"wrote {path}\nsubmit: sbatch {shlex.quote(str(path))}  (the job's output: "
               f"{path.parent}/slurm-<job id>.out; an unfinished run resumes when the job runs again)")


def _machine(precision: str | None, devices: int | None, num_nodes: int | None, threads: int | None,
             trainer: str | None):
    from mixer.training.config import Machine

    return Machine(trainer=trainer, precision=precision, devices=devices, threads=threads, nodes=num_nodes)


def _common(f):
    f = _sbatch_options(f)
    for opt in reversed([
        click.argument("mix", type=click.Path(file_okay=False, path_type=Path)),
        click.option("--out", required=True, type=_path, help="Run folder (RUN)."),
        click.option("--tokens", help="Train on this many tokens (default: the whole mix), e.g. 2M."),
        click.option("--batch-size", type=int, help="Global batch in samples (default: the preset's)."),
        click.option("--micro-batch-size", type=int, help="Samples per device per forward pass."),
        click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True),
        click.option("--precision", help="Trainer precision (LitGPT: 32-true on CPU, bf16-mixed on GPU by default)."),
        click.option("--devices", type=int,
                     help="Devices per node (default: 1 on CPU, all GPUs); on CPU, N ranks train with DDP over gloo."),
        click.option("--num-nodes", type=int,
                     help="Nodes (default 1); above 1, mixer train runs inside a Slurm allocation of that many nodes "
                          "and starts one srun task per device (docs/trainers.md)."),
        click.option("--threads", type=int, help="CPU threads for torch (default: half the cores on CPU)."),
        click.option("--dry-run", is_flag=True, help="Print the trainer's config (LitGPT: its YAML) and stop."),
        click.option("--verbose", is_flag=True, help="Echo the trainer's output (always in RUN/train.log)."),
        click.option("--eval-samples", type=int,
                     help="The evaluation after training uses the first N samples of each held-out set (default: all)."),
        click.option("--no-eval", is_flag=True,
                     help="Train only: evaluate later with `mixer eval RUN`, which also records a finetune's winner "
                          "(so a multi-GPU job does not idle its other GPUs while one evaluates)."),
        json_option,
    ]):
        f = opt(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def train() -> None:
    """Train from mixes (LitGPT by default): pretrain, finetune (early stopping), replay.

    \b
    mixer train pretrain mixes/spt --model tiny --out runs/spt
    mixer train finetune mixes/ft --from runs/spt --out runs/spt-ft      # the paper's LR grid, chosen on val
    mixer train finetune mixes/ft --from runs/spt --out runs/g --lr 1e-5,4e-5,1e-4 --warmup 50,100,200
    mixer train replay mixes/replay --from runs/spt --out runs/spt-replay
    """


@train.command()
@_common
@click.option("--model", required=True, help="Preset: tiny, small, olmo-300m, olmo-600m, olmo-1b, olmo-3b.")
@click.option("--lr", type=float, help="Peak learning rate (default: the preset's; paper 4e-4).")
@click.option("--min-lr", type=float, help="Cosine floor (default: the preset's; paper 4e-5).")
@click.option("--warmup", type=int, help="Warmup optimizer steps (default: the preset's share of the run).")
@click.option("--horizon", type=float,
              help="Cosine horizon as a multiple of the run (default 10: the paper decays over 2T tokens and stops "
                   "at 200B, so no checkpoint is annealed).")
@click.option("--schedule-tokens", help="Cosine horizon in tokens (instead of --horizon), at least the run's.")
@click.option("--anneal", is_flag=True, help="Decay to the floor by the last step (horizon = the run; not the paper's).")
@click.option("--checkpoints", type=int, default=10, show_default=True, help="Evenly spaced checkpoints.")
@click.option("--save-every", type=int, help="Checkpoint every N optimizer steps (instead of --checkpoints).")
@click.option("--trainer", default="litgpt", show_default=True,
              help="Training framework, by name (docs/trainers.md); recorded in run.json.")
def pretrain(mix: Path, out: Path, model: str, tokens: str | None, batch_size: int | None,
             micro_batch_size: int | None, seed: int, precision: str | None, devices: int | None,
             num_nodes: int | None, threads: int | None,
             dry_run: bool, verbose: bool, eval_samples: int | None, no_eval: bool, as_json: bool,
             lr: float | None, min_lr: float | None, warmup: int | None,
             horizon: float | None, schedule_tokens: str | None, anneal: bool, checkpoints: int,
             save_every: int | None, trainer: str, sbatch: dict | None) -> None:
    """Pretrain a model from scratch on MIX: a cosine laid out over 10x the run (the paper's
    regime: every checkpoint at ~98% of the peak rate); --anneal to decay by the last step."""
    from mixer import api
    from mixer.cli.common import ARGV
    from mixer.training.config import PretrainConfig

    config = PretrainConfig(model=model, tokens=parse_optional_count(tokens, "--tokens"), lr=lr, min_lr=min_lr,
                            warmup=warmup, batch=batch_size, micro=micro_batch_size, checkpoints=checkpoints,
                            save_every=save_every, horizon=horizon,
                            schedule_tokens=parse_optional_count(schedule_tokens, "--schedule-tokens"), anneal=anneal,
                            seed=seed,
                            machine=_machine(precision, devices, num_nodes, threads, trainer))
    plan = api.pretrain_plan(mix, out, config, dry_run=dry_run or sbatch is not None)
    if sbatch is not None:
        _wrote_sbatch(plan.write_sbatch(_job_argv(ARGV), sbatch))
    elif dry_run:
        click.echo(plan.config_text(), nl=False)
    else:
        _report(plan.run(echo=verbose, eval_samples=eval_samples, evaluate=not no_eval), as_json)


def _finetune_command(kind: str):
    @_common
    @click.argument("grid_rest", nargs=-1, metavar="")
    @click.option("--from", "parent", required=True, type=click.Path(file_okay=False, path_type=Path),
                  help="The run to start from: a pretraining run, or a finetuned one (a post-training stage; a grid "
                       "continues from its winner).")
    @click.option("--checkpoint", help="Its checkpoint (step-00000100; default: a pretraining run's final, else "
                                       "last step; a finetuned run's early-stopping winner).")
    @click.option("--lr", help="Learning rate(s), absolute, comma-separated for a grid (default: --lr-ratio).")
    @click.option("--lr-ratio",
                  help="Learning rate(s) as multiples of the rate the parent's pretraining had reached at the "
                       "checkpoint, comma-separated (default: the paper's grid 1e-5, 4e-5, 1e-4 over its ~3.91e-4: "
                       "0.0256,0.102,0.256).")
    @click.option("--warmup", help="Warmup optimizer steps, comma-separated for a grid (default: the preset's; "
                                   "OLMo presets the paper's 50,100,200).")
    @click.option("--schedule", type=click.Choice(FINETUNE_SCHEDULES), default="constant", show_default=True,
                  help="Rate after warmup (mixer.training.schedules.SCHEDULES).")
    @click.option("--min-lr", type=float, help="WSD: the rate decayed to (default lr/10).")
    @click.option("--decay-fraction", type=float, default=0.2, show_default=True, help="WSD: share of steps decaying.")
    @click.option("--weight-decay", type=float, help="Default: the preset's (paper 1e-7).")
    @click.option("--patience", type=int, default=2, show_default=True,
                  help="Stop after this many evaluations without a lower loss on the --select-on split (0: never).")
    @click.option("--select-on", type=click.Choice(list(SELECT_ON)), default="val", show_default=True,
                  help="Split that early stopping and the grid's winner are chosen on; the test split is reported. "
                       "test: the paper's protocol (chosen and reported on the test split).")
    @click.option("--eval-every", type=int, help="Evaluate/save every N steps (default: once per domain epoch).")
    @click.option("--grid", "grid", multiple=True,
                  help="More grid axes: --grid weight_decay=0,1e-7 (keys lr, lr_ratio, warmup, weight_decay, min_lr).")
    @click.option("--trainer", help="Training framework (default: the parent run's).")
    def command(mix: Path, out: Path, tokens: str | None, batch_size: int | None, micro_batch_size: int | None,
                seed: int, precision: str | None, devices: int | None, num_nodes: int | None, threads: int | None,
                dry_run: bool,
                verbose: bool, eval_samples: int | None, no_eval: bool, as_json: bool, grid_rest: tuple[str, ...],
                parent: Path,
                checkpoint: str | None, lr: str | None, lr_ratio: str | None, warmup: str | None, schedule: str,
                min_lr: float | None, decay_fraction: float, weight_decay: float | None, patience: int,
                select_on: str, eval_every: int | None, grid: tuple[str, ...], trainer: str | None,
                sbatch: dict | None) -> None:
        from mixer import api
        from mixer.cli.common import ARGV
        from mixer.training.config import FinetuneConfig

        if grid_rest and not grid:
            raise UsageError(f"unexpected argument {grid_rest[0]!r}")
        config = FinetuneConfig(checkpoint=checkpoint, schedule=schedule, min_lr=min_lr, decay_fraction=decay_fraction,
                                weight_decay=weight_decay, batch=batch_size, micro=micro_batch_size,
                                tokens=parse_optional_count(tokens, "--tokens"), patience=patience, eval_every=eval_every,
                                select_on=select_on, seed=seed,
                                machine=_machine(precision, devices, num_nodes, threads, trainer))
        plans = api.finetune_plan(mix, out, parent, config, kind=kind, lr=lr, lr_ratio=lr_ratio, warmup=warmup,
                                  grid=[*grid, *grid_rest], dry_run=dry_run or sbatch is not None)
        if sbatch is not None:
            _wrote_sbatch(plans.write_sbatch(_job_argv(ARGV), sbatch))
        elif dry_run:
            for where, plan in plans.points():
                click.echo((f"# --- {where}\n" if plans.is_grid else "") + plan.config_text(), nl=False)
        else:
            _report(plans.run(echo=verbose, eval_samples=eval_samples, evaluate=not no_eval), as_json)

    command.__doc__ = {
        "finetune": "Finetune a pretrained run on MIX at constant rates after warmup, over a grid of rates relative "
                    "to the parent's (the paper's by default); early stopping and the winner on the domain "
                    "validation split, the test split reported.",
        "replay": "Finetune on a replay MIX (domain + a general share), as finetune.",
    }[kind]
    return command


train.command("finetune")(_finetune_command("finetune"))
train.command("replay")(_finetune_command("replay"))


def _report(meta: dict, as_json: bool) -> None:
    best = meta.get("best")
    lines = [f"run {meta['name']} ({meta['kind']}, {meta['model']}): {meta['status']}, "
             f"{meta.get('tokens', 0):,} tokens; mix {meta['mix']}"]
    capped = (meta.get("hparams") or {}).get("warmup_capped")
    if capped:
        lines.append(f"warmup capped: {capped['reason']}")
    if best:
        where = f"{best['run']}/{best['checkpoint']}" if "run" in best else best["checkpoint"]
        on = best.get("selected_on", "test")
        chosen = f"chosen on domain {on} loss {best.get(f'domain_{on}_loss') or 0:.4f}, " if on != "test" else ""
        lines.append(f"best: {where}, {chosen}domain test loss {best['domain_test_loss']:.4f}")
    elif meta.get("evaluated") is False:
        lines.append("not evaluated (--no-eval): `mixer eval` of the run folder scores its checkpoints and records "
                     "the winner")
    lines += time_lines(meta)
    emit(meta, as_json, "\n".join(lines))


def time_lines(meta: dict) -> list[str]:
    """The summary of where the command's time went and how fast it trained (run.json's
    `time` and `throughput`)."""
    t, tp = meta.get("time"), meta.get("throughput")
    out = []
    if t:
        named = [("startup", "startup"), ("compile", "compile"), ("train_steps", "training steps"),
                 ("validation", "validation"), ("checkpoints", "checkpoint writes"), ("evaluation", "evaluation"),
                 ("other", "other")]
        parts = ", ".join(f"{label} {t[k]:.1f}" for k, label in named if t.get(k) is not None)
        share = f" (training steps {t['train_steps_share']:.0%} of it)" if t.get("train_steps_share") is not None else ""
        out.append(f"time: {t['seconds']:.1f} s{share}: {parts}")
    if tp and tp.get("tokens_per_second"):
        mfu = (f"MFU {tp['mfu']:.1%} of {tp['devices']} x {tp['peak']['device']} "
               f"({tp['peak']['flops_per_second'] / 1e12:.1f} TFLOP/s bf16 dense)" if tp.get("mfu") is not None
               else f"MFU n/a ({tp.get('mfu_note')})")
        flops = tp.get("model_flops_per_second")
        out.append(f"throughput: {tp['tokens_per_second']:,.0f} tokens/s on {tp['devices']} x {tp['device']}"
                   + (f", {flops / 1e12:.3g} model TFLOP/s" if flops else "") + f"; {mfu}")
    return out
