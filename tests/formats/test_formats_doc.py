"""docs/formats.md matches what the code writes: every key of each documented JSON example
is read back from a real output of the command that writes it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.mixutil import make_stores, run_cli
from tests.runutil import write_run

DOC = Path(__file__).resolve().parents[2] / "docs" / "formats.md"


def documented(heading: str) -> dict:
    """The first ```json block under the `## heading...` section, comments and ... removed."""
    text = DOC.read_text()
    start = text.index("\n## " + heading)
    block = re.search(r"```json\n(.*?)```", text[start:], re.S).group(1)
    block = re.sub(r"//[^\n]*", "", block)
    return json.loads(block)


def missing(doc, real, path="") -> list[str]:
    """Documented keys absent from the real output (recursing into dicts and first list items)."""
    out = []
    if isinstance(doc, dict):
        if real is None:  # a nullable field (e.g. relative gain of the NPT row itself)
            return []
        if not isinstance(real, dict):
            return [f"{path or '.'} is {type(real).__name__}, documented as an object"]
        for k, v in doc.items():
            if k == "...":
                continue
            if k not in real:
                out.append(f"{path}.{k}")
            else:
                out += missing(v, real[k], f"{path}.{k}")
    elif isinstance(doc, list) and doc and isinstance(doc[0], dict):
        if real:
            out += missing(doc[0], real[0], f"{path}[0]")
    return out


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmt")
    stores = make_stores(root / "stores")
    from mixer.mixing.build import build
    from mixer.mixing.spec import MixSpec

    build(MixSpec(stores=str(stores), domain="music", fraction=0.05, tokens=40_000, seq_len=32), root / "mix",
          progress=False)
    return root / "mix"


def test_manifest_keys_are_written(mix):
    real = json.loads((mix / "manifest.json").read_text())
    assert missing(documented("Mix"), real) == []


def test_store_keys_are_written(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["doc a b c d e f g"], trainers.WordLevelTrainer(special_tokens=["[UNK]", "<|endoftext|>"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    tok = tmp_path / "tokenizer.json"
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"d{i}", "text": "doc " + "abcdefg"[i % 7] * (i % 5 + 1)}) + "\n"
                            for i in range(200)))
    code, _, err = run_cli(capsys, "tokenize", "--source", "music", "--role", "domain", "--input", str(data),
                           "--tokenizer", str(tok), "--stores", str(tmp_path / "st"), "--test-fraction", "0.1")
    assert code == 0, err
    real = json.loads((tmp_path / "st/music/store.json").read_text())
    assert missing(documented("Token store"), real) == []


def test_report_and_fit_keys_are_written(tmp_path, capsys):
    runs = []
    for f, base in ((0.0, 4.0), (0.05, 3.8), (0.2, 3.7)):
        evals = [(t, base + 1e5 / t, base - 0.1 + 1e5 / t, 3.0) for t in (1e5, 2e5, 4e5, 8e5)]
        runs.append(write_run(tmp_path, f"pre-{f}", evals, fraction=f))
    for i, (f, pre) in enumerate(zip((0.0, 0.05, 0.2), runs)):
        runs.append(write_run(tmp_path, f"ft-{f}", [(1e4, 3.5 - i * 0.05, 3.4, 3.1)], kind="finetune", fraction=1.0,
                              parent=pre, pretrain_tokens=800_000))
    code, _, err = run_cli(capsys, "report", *map(str, runs), "--out", str(tmp_path / "rep"))
    assert code == 0, err
    rep = json.loads((tmp_path / "rep/report.json").read_text())
    assert missing(documented("Report"), rep) == []
    code, _, err = run_cli(capsys, "fit", *map(str, runs), "--out", str(tmp_path / "fit"))
    assert code == 0, err
    fit = json.loads((tmp_path / "fit/fit.json").read_text())
    doc = documented("Fit")
    for optional in ("law", "holdout", "holdout_fraction"):  # null or absent when the data cannot support them
        doc.pop(optional)
    assert missing(doc, fit) == []


def test_run_keys_are_written(mix, tmp_path, capsys, monkeypatch):
    """A finetune's run.json (through the test trainer of tests/training/count_trainer.py)."""
    from mixer.training import registry

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "training"))
    monkeypatch.setattr(registry, "TRAINERS", dict(registry.TRAINERS))
    monkeypatch.setattr(registry, "_loaded", {})
    registry.register("count", "count_trainer:TRAINER")
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    code, _, err = run_cli(capsys, "train", "pretrain", str(mix), "--model", "bigram", "--trainer", "count",
                           "--out", str(pre), "--checkpoints", "2")
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "finetune", str(mix), "--from", str(pre), "--out", str(ft), "--lr", "0.5",
                           "--tokens", "4K", "--eval-every", "2")
    assert code == 0, err
    doc = documented("Run")
    doc.pop("throughput")  # only trainers that account for their launch (LitGPT: tests/training/test_gpu_check.py)
    doc["time"] = {k: doc["time"][k] for k in ("seconds", "training", "evaluation", "other")}
    assert missing(doc, json.loads((ft / "run.json").read_text())) == []
