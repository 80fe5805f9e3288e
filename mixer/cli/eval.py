"""`mixer eval RUN`: every checkpoint of a run scored on the sets its mixes hold."""

from __future__ import annotations

from pathlib import Path

import click

from mixer.cli.common import emit, json_option, table


@click.command("eval")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option("--max-samples", type=int, help="Use the first N samples of each held-out set (default: all).")
@click.option("--device", help="torch device (default: cuda if available, else cpu).")
@json_option
def eval_run(run: Path, max_samples: int | None, device: str | None, as_json: bool) -> None:
    """Evaluate every checkpoint of RUN -> RUN/evals.jsonl (skips evaluated ones), on the held-out
    sets, domain validation split and domain train sample its mixes hold."""
    from mixer import api

    results = api.evaluate(run, max_samples=max_samples, device=device)

    def human(data: dict) -> str:
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        out = []
        for r, rows in data.items():
            out.append(f"{r}/evals.jsonl")
            out.append(table([[x["checkpoint"], x["step"], f"{x['tokens']:,}", fmt(x.get("train_loss")),
                               fmt(x["domain_test_loss"]), fmt(x["domain_train_loss"]), fmt(x["general_val_loss"])]
                              for x in rows],
                             ["checkpoint", "step", "tokens", "train", "domain test", "domain train", "general val"]))
        return "\n".join(out)

    emit(results, as_json, human)
