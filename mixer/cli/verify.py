"""`mixer verify`: a mix re-derived from its stores, or a token store's checksums."""

from __future__ import annotations

from pathlib import Path

import click

from mixer.units import format_count
from mixer.cli.common import emit, json_option, table


@click.command()
@click.argument("mix", type=click.Path(file_okay=False, path_type=Path))
@click.option("--quick", is_flag=True, help="Checksums, manifest fields and provenance only; samples are not compared with the stores.")
@click.option("--workers", type=int, help="Shards checked at once, each by its own process  [default: one per core, at most 8]")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option
def verify(mix, quick, workers, quiet, as_json) -> None:
    """Re-derive MIX's epochs, fractions and bytes from the stores; exit 1 on any mismatch.

    MIX may also be a token store (a folder with store.json): its checksums and format."""
    from mixer import api

    result = api.verify(mix, quick=quick, progress=not quiet, workers=workers)
    emit(result, as_json, format_verify_store if "store" in result else format_verify)


def format_verify_store(r: dict) -> str:
    splits = ", ".join(f"{name} {s['documents']:,} documents / {format_count(s['tokens'])} tokens"
                       for name, s in r["splits"].items())
    return (f"OK {r['store']} ({r['source']}, {r['role']}): {r['files']} files match their checksums; {splits}; "
            f"indexes, EOS, ids and vocab checked ({r['bytes'] / 1e6:.1f} MB in {r['seconds']} s)")


def format_verify(r: dict) -> str:
    rows = [[s["name"], s["role"], f"{s['samples']:,}", f"{s['epochs']:.3f}",
             ", ".join(f"{v:,}x{k}" for k, v in s["passes"].items()) or "-", s["partial_documents"]] for s in r["sources"]]
    wd = r["max_window_deviation"]
    lines = [
        f"OK {r['mix']}: {r['shards']} shards, {r['samples']:,} samples, {format_count(r['tokens'])} tokens"
        + (" (quick: checksums + provenance)" if r["quick"] else " (every sample re-read from the stores)"),
        table(rows, ["source", "role", "samples", "epochs", "docs x full passes", "partial"]),
        f"fraction: requested {r['fraction']['requested']}, achieved {r['fraction']['achieved']:.6g}"
        + (f"; worst window deviation {max(wd.values()):.3f} samples (< 1 required) over W = 1..{max(int(k) for k in wd)}" if wd else ""),
        f"{r['bytes'] / 1e6:.1f} MB in {r['seconds']} s ({r['mb_per_s']} MB/s)",
    ]
    checked = r.get("stores_checked")
    lines.append(f"stores: {', '.join(checked)} match the checksums in the manifest" if checked is not None
                 else "stores: not checked (the mix was built before manifests recorded store checksums)")
    return "\n".join(lines)
