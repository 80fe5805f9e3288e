"""The `mixer` command line. This package only parses flags and calls the toolkit.

Subcommands are imported lazily: `mixer --help` must not pay for torch or datatrove.
Errors follow one contract: `mixer: error: <one line>` on stderr, exit 2 for usage
and 1 for data problems, a traceback only with `--debug` (or MIXER_DEBUG=1).
"""

from __future__ import annotations

import errno
import importlib
import os
import sys

import click

from mixer import __version__
from mixer.errors import MixerError

# name -> (module:attribute, one-line help). The help lives here so listing is instant.
COMMANDS: dict[str, tuple[str, str]] = {
    "fetch-samples": ("mixer.cli.fetch_samples:fetch_samples", "Fetch the offline sample corpora and GPT-2 tokenizer into a cache."),
    "recipes": ("mixer.cli.recipes:recipes", "List the shipped recipes (sources and stage recipes)."),
    "tokenize": ("mixer.cli.tokenize:tokenize", "Tokenize a corpus into a token store with train/test (or val) splits."),
    "plan": ("mixer.cli.plan:plan", "Show what a build would produce (samples, epochs, fraction), or forecast from a fit."),
    "build": ("mixer.cli.build:build", "Build an exact, pre-shuffled mix of token shards with a manifest."),
    "verify": ("mixer.cli.verify:verify", "Re-derive a mix's epochs, fractions and checksums from the bytes; or check a token store."),
    "audit": ("mixer.cli.audit:audit", "Prove held-out documents do not leak into training data (n-gram overlap)."),
    "train": ("mixer.cli.train:train", "Train from mixes (LitGPT by default): pretrain, finetune (early stopping), replay."),
    "eval": ("mixer.cli.eval:eval_run", "Evaluate every checkpoint of a run: domain test/train and general val loss."),
    "report": ("mixer.cli.report:report", "Paper metrics over runs: relative gain, compute multiplier, forgetting; plots."),
    "fit": ("mixer.cli.fit:fit", "Fit the overfitting scaling law (and finetuning gain) to runs."),
    "similarity": ("mixer.cli.similarity:similarity", "Jensen-Shannon divergence of n-gram distributions between two stores."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mixer")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Exact, verifiable data mixes for specialized-pretraining studies.

    \b
    mixer fetch-samples                       # offline sample corpora + GPT-2 tokenizer
    mixer tokenize --recipe samples            # a shipped recipe, or a path to your own
    mixer build --domain music --fraction 0.02 --tokens 200B   # -> mixes/music-f0.02-200B
    mixer verify mixes/music-f0.02-200B && mixer audit mixes/music-f0.02-200B
    """


# OSError numbers a user can act on, in words that say what to do about them
_OS_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large (the file-size limit, see ulimit -f, or the file system's maximum)",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "not a directory",
    errno.EISDIR: "is a directory",
    errno.EMFILE: "too many open files (raise ulimit -n)",
}


def describe_os_error(e: OSError) -> str:
    """One line naming the file (when the error knows it) and the reason."""
    reason = _OS_REASONS.get(e.errno, e.strerror or str(e) or type(e).__name__)
    if e.filename is None:
        return f"{reason} ({type(e).__name__}; re-run with --debug to see where)"
    where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else str(e.filename)
    return f"{where}: {reason}"


def _fail(message: str, code: int, as_json: bool) -> None:
    """The one error line on stderr; with --json also {"error", "exit_code"} on stdout (unless
    the command printed its JSON result already), so a program reading it gets an answer."""
    from mixer.cli.common import EMITTED

    if as_json and not EMITTED["json"]:  # a result already printed (an audit's report) carries the verdict
        import json

        click.echo(json.dumps({"error": message, "exit_code": code}))
    click.echo(f"mixer: error: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MIXER_DEBUG") == "1"
    as_json = "--json" in argv
    from mixer.cli.common import ARGV, EMITTED

    EMITTED["json"] = False
    ARGV[:] = argv  # `mixer train --sbatch` writes this same command into its job script
    if debug:  # worker processes read it too (mixer.lifetime)
        os.environ["MIXER_DEBUG"] = "1"
    try:
        # standalone_mode=False returns ctx.exit()'s code instead of exiting: pass it on.
        sys.exit(cli.main(args=argv, prog_name="mixer", standalone_mode=False) or 0)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        _fail("aborted", 130, as_json)
    except click.ClickException as e:
        if debug:
            raise
        _fail(e.format_message(), 2, as_json)
    except MixerError as e:
        if debug:
            raise
        _fail(str(e), e.exit_code, as_json)
    except OSError as e:
        if debug:
            raise
        _fail(describe_os_error(e), 1, as_json)
    except KeyboardInterrupt:
        _fail("interrupted (re-run the same command to resume)", 130, as_json)
    except Exception as e:  # noqa: BLE001 - the contract is one line, not a traceback
        if debug:
            raise
        _fail(f"internal error: {type(e).__name__}: {e} (re-run with --debug)", 1, as_json)


if __name__ == "__main__":
    main()
