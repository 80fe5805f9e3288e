"""The laptop study behind `make demo` and `make study`: SPT against NPT on real corpora.

Driven only by `mixer` commands, so every step is one a user can type:

    fetch-samples -> [carve a slice of each domain into the general data] -> tokenize (music,
    proofs, general) -> build NPT / SPT / SCPT / FT mixes
    -> verify + audit -> train pretrain -> train finetune (early stopping), each evaluating
    every checkpoint as `mixer eval` does -> report (table + plots) -> fit -> plan --fit

    python examples/study.py --size demo               # ~10-15 min on 2 CPU cores
    python examples/study.py --size study              # the papers' headline results (examples/headline.py)
    python examples/study.py --size study --parts law  # its two law sweeps alone (pretraining at every seed + fits)
    python examples/study.py --size demo --model olmo-300m --tokens 2B --seq-len 2048 \
        --tokenizer gpt2 --jobs 1 --train-args "--devices 1 --precision bf16-true"   # on a GPU

Each pretraining run and its finetunes form a chain; chains are independent, so on a CPU
they run `--jobs` at a time (default: one per core, up to 8) with one torch thread each.

The report goes to OUT/report and, with --publish (make demo / make study), its
Markdown and plots to docs/results/<size>/, where the README shows them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Size:
    domains: tuple[str, ...]
    seeds: tuple[int, ...]
    fractions: tuple[float, ...]  # SPT fractions (NPT = 0 always included)
    scpt: tuple[float, str] | None  # (fraction inside the window, window)
    replay: float | None  # general share of a replay finetune from the best SPT
    tokens: str  # pretraining budget per run
    seq_len: int
    domain_subset: str  # the domain train set (the paper's small-data regime)
    model: str
    ft_epochs: int
    patience: int
    save_interval: int  # checkpoints per pretraining run, for the loss-vs-tokens curves
    vocab: int = 1024  # the study's own BPE; 0 = GPT-2's (the paper's scale of vocabulary, GPU)
    eval_samples: int = 256  # per held-out set and checkpoint, finetunes alike (before/after on the same samples)
    train_args: tuple[str, ...] = field(default_factory=tuple)
    # General data as web data is: the Python/Perl documentation plus a slice of every domain
    # corpus ((domain, share of its documents)), carved out before tokenizing so no carved
    # document is in any domain split (examples/carve.py). None: the documentation alone.
    slices: tuple[tuple[str, float], ...] | None = None
    seed_trainer: bool = False  # a seed reseeds the model's initialisation and the trainer too (mixer train --seed)
    # The tiny CPU models take ~10 optimizer steps per epoch of a 20K-100K-token domain set: at
    # the paper's finetuning rates (2.6-26% of the pretraining peak) their domain loss was still
    # falling after 16 epochs and every grid's winner sat at its top rate. 25%-200% brackets the
    # optimum (measured: NPT picks 1x, SPT 0.5x).
    ft_args: tuple[str, ...] = ("--lr-ratio", "0.25,0.5,1,2")


SIZES = {
    # Two finetuning rates, not the study's four: the two the study's NPT and SPT runs picked,
    # at half the finetuning time, so that `make demo` stays well under 10 minutes.
    "demo": Size(domains=("music",), seeds=(0,), fractions=(0.05, 0.2), scpt=(0.2, "0.75:1.0"), replay=None,
                 tokens="800K", seq_len=128, domain_subset="100K", model="tiny", ft_epochs=8, patience=1, save_interval=4,
                 ft_args=("--lr-ratio", "0.5,1")),
    # The papers' headline results (examples/headline.py): fractions 0-20% of a 20K-token domain
    # subset in 4.2M tokens (4-42 epochs), 12 checkpoints per run, every fraction at 3 seeds (mix,
    # model and trainer), finetunes along the runs, a larger model and paper 2's lambda sweep
    # (proofs is its D_ft); the general data holds a 5% slice of each domain corpus's documents.
    # Finetunes stop by patience on the validation split; 32 epochs is a cap that a finetune
    # still improving reaches (the report counts them), not the rule.
    # 128 samples per held-out set (the same for every run, before and after finetuning alike).
    # Three times the runs of the first design: 2 h 48 min on a 2-core machine, measured, not the
    # first design's hour (README); --jobs N runs N chains at a time on a larger one.
    "study": Size(domains=("music", "proofs"), seeds=(0, 1, 2), fractions=(0.02, 0.05, 0.1, 0.15, 0.2), scpt=None,
                  replay=None, tokens="4194304", seq_len=128, domain_subset="20K", model="tiny", ft_epochs=32,
                  patience=2, save_interval=12, slices=(("music", 0.05), ("proofs", 0.05)), seed_trainer=True,
                  eval_samples=128, ft_args=("--lr-ratio", "0.125,0.25,0.5,1,2")),
}


def describe(args: tuple[str, ...]) -> str:
    """`train pretrain MIX ... --out RUN` -> `train pretrain RUN`: how the heartbeat names a step."""
    args = list(args)
    where = args[args.index("--out") + 1] if "--out" in args else (args[1] if len(args) > 1 else "")
    head = args[:2] if args[0] == "train" else args[:1]
    return " ".join([*head, where])


class Study:
    def __init__(self, size: Size, out: Path, log: Path) -> None:
        self.size, self.out, self.log = size, out, log
        self.mixer = [sys.executable, "-m", "mixer"]
        self.stores = out / "stores"
        self.cache = Path(os.environ.get("MIXER_CACHE") or "~/.cache/mixer").expanduser()
        self.t0 = time.perf_counter()
        # Chains run commands from several threads: the log gets whole blocks, and a failure
        # stops the other chains' commands instead of waiting for them to finish.
        self.lock = threading.Lock()
        self.live: set[subprocess.Popen] = set()
        self.started: dict[subprocess.Popen, tuple[float, str]] = {}  # for the heartbeat
        self.failed = False
        self.last_print = time.perf_counter()
        threading.Thread(target=self.heartbeat, daemon=True).start()

    def say(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.0f}s] {text}", flush=True)
        self.last_print = time.perf_counter()

    def heartbeat(self, every: float = 60.0) -> None:
        """A line a minute while nothing else printed: which runs are going and for how long, so
        a study that takes an hour never looks hung (each run's own progress is in its train.log)."""
        while True:
            time.sleep(5)
            with self.lock:
                if time.perf_counter() - self.last_print < every or not self.started:
                    continue
                now = time.perf_counter()
                going = "; ".join(f"{what} ({now - t:.0f} s)" for t, what in sorted(self.started.values()))
                self.say(f"running: {going}")

    def run(self, *args: str, check: bool = True, show: bool = False) -> subprocess.CompletedProcess:
        cmd = [*self.mixer, *args]
        line = "mixer " + " ".join(shlex.quote(a) for a in args)
        with self.lock:
            if self.failed:
                sys.exit("study: stopped after another step failed")
            self.say(line)
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.live.add(proc)
            self.started[proc] = (time.perf_counter(), describe(args))
        stdout, stderr = proc.communicate()
        p = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
        with self.lock:
            self.live.discard(proc)
            t, what = self.started.pop(proc)
            with open(self.log, "a") as log:
                log.write(f"\n$ {line}\n{p.stdout}{p.stderr}")
            if args[0] in ("train", "eval"):
                self.say(f"{'done' if p.returncode == 0 else 'FAILED'}: {what} in {time.perf_counter() - t:.0f} s")
        if show:
            print(p.stdout, end="", flush=True)
        if check and p.returncode:
            self.stop()
            sys.exit(f"study: step failed ({line}):\n{p.stderr.strip()[-2000:]}\n(full log: {self.log})")
        return p

    def stop(self) -> None:
        with self.lock:
            self.failed = True
            for proc in self.live:
                proc.terminate()

    # -- data -----------------------------------------------------------------------

    def tokenizer(self) -> Path:
        """GPT-2's tokenizer, or (default on CPU) a small byte-level BPE trained on the sample texts.

        Why: with GPT-2's 50,257-token vocabulary the softmax over the logits is most of a tiny
        model's step on a CPU (1.6k tokens/s here, against 24k with 2,048 and 38k with 1,024
        tokens), so the laptop study uses its own 1,024-token BPE. Stores record its sha256 like
        any tokenizer's.
        """
        if not self.size.vocab:
            return self.cache / "tokenizers" / "gpt2" / "tokenizer.json"
        path = self.out / f"tokenizer-bpe{self.size.vocab}.json"
        if path.exists():
            return path
        import zstandard
        from tokenizers import ByteLevelBPETokenizer

        def texts():
            for name in ("pydocs", "perldocs", *self.size.domains):
                budget = 3_000_000  # characters per corpus: enough for 2k merges, seconds to train
                with zstandard.open(self.cache / "samples" / f"{name}.jsonl.zst", "rt") as f:
                    for line in f:
                        text = json.loads(line)["text"]
                        yield text
                        budget -= len(text)
                        if budget <= 0:
                            break

        tok = ByteLevelBPETokenizer()
        tok.train_from_iterator(texts(), vocab_size=self.size.vocab, min_frequency=2, special_tokens=["<|endoftext|>"],
                                show_progress=False)
        tmp = path.with_suffix(".tmp")
        tok.save(str(tmp))
        tmp.rename(path)
        print(f"         trained a {self.size.vocab}-token byte-level BPE on the sample texts -> {path.name}", flush=True)
        return path

    @property
    def general(self) -> str:
        """The general store: `web` when it holds slices of the domains, `prose` when not."""
        return "web" if self.size.slices else "prose"

    def data(self) -> None:
        self.run("fetch-samples", "--only", ",".join(["gpt2", "pydocs", "perldocs", *self.size.domains]))
        tok = self.tokenizer()
        samples = self.cache / "samples"
        domain_input = {d: samples / f"{d}.jsonl.zst" for d in self.size.domains}
        general_input = [samples / "pydocs.jsonl.zst", samples / "perldocs.jsonl.zst"]
        if self.size.slices:
            from carve import carve  # examples/carve.py, beside this script

            corpora = self.out / "corpora"
            report = carve(samples, corpora, dict(self.size.slices), seed=0)
            for d, r in report["domains"].items():
                print(f"         general data: {r['carved_documents']} of {r['documents']} {d} documents "
                      f"({r['carved_characters']:,} of {r['characters']:,} characters, {r['carved_groups']} whole "
                      f"near-duplicate groups) carved out of the {d} store into {self.general}; shared with the "
                      f"{d} store: {r['shared_text_hashes']} texts, {r['shared_groups']} groups "
                      f"({(corpora / 'carve.json').relative_to(self.out)})", flush=True)
            domain_input.update({d: corpora / f"{d}.jsonl.zst" for d in report["domains"]})
            general_input.append(corpora / "slices.jsonl.zst")
        held_out = {"music": "0.02", "proofs": "0.05", "chem": "0.08"}
        if not (self.stores / self.general / "store.json").exists():
            self.run("tokenize", "--source", self.general, "--role", "general",
                     *[a for f in general_input for a in ("--input", str(f))], "--tokenizer", str(tok),
                     "--test-fraction", "0.03", "--stores", str(self.stores))
        for domain in self.size.domains:
            meta = self.stores / domain / "store.json"
            if meta.exists() and "val" not in json.loads(meta.read_text())["splits"]:
                # Finetunes are chosen on the domain's validation split; the mixes and runs here
                # were made from stores without one, so re-making the store alone would not do.
                sys.exit(f"study: {self.out} was made before domain stores had a validation split; "
                         "remove it (or pass another --out) and run again")
            if not meta.exists():
                self.run("tokenize", "--source", domain, "--role", "domain", "--input", str(domain_input[domain]),
                         "--tokenizer", str(tok), "--test-fraction", held_out[domain], "--stores", str(self.stores))

    def mix(self, name: str, *flags: str) -> Path:
        out = self.out / "mixes" / name
        fresh = not (out / "manifest.json").exists()
        # Built on every run: a finished build with the same settings is a no-op (~0.1 s), and one
        # made with other settings (an earlier --tokens in the same --out) is refused by `mixer
        # build` instead of silently reused by the study.
        self.run("build", "--stores", str(self.stores), "--seq-len", str(self.size.seq_len),
                 "--domain-subset", self.size.domain_subset, "--out", str(out), "--quiet", *flags)
        if fresh:
            self.run("verify", str(out), "--quiet")
        return out

    def mixes(self, domain: str, seed: int) -> dict[str, Path]:
        s, tag = self.size, f"{domain}/s{seed}"
        common = ("--domain", domain, "--seed", str(seed))
        out = {"npt": self.mix(f"{tag}/npt", *common, "--fraction", "0", "--tokens", s.tokens)}
        for f in s.fractions:
            out[f"spt{f:g}"] = self.mix(f"{tag}/spt{f:g}", *common, "--fraction", str(f), "--tokens", s.tokens)
        if s.scpt:
            f, window = s.scpt
            out["scpt"] = self.mix(f"{tag}/scpt{f:g}", *common, "--fraction", str(f), "--window", window, "--tokens", s.tokens)
        out["ft"] = self.mix(f"{tag}/ft", *common, "--epochs", str(s.ft_epochs))
        if s.replay:
            out["replay"] = self.mix(f"{tag}/replay", *common, "--epochs", str(s.ft_epochs), "--replay", str(s.replay))
        return out

    def audit(self, mix: Path) -> None:
        p = self.run("audit", str(mix), "--json", check=False)
        if p.returncode not in (0, 1):
            sys.exit(f"study: audit failed: {p.stderr.strip()}")
        r = json.loads(p.stdout)
        for src in r["sources"]:
            print(f"         audit {src['source']}/{src['split']}: {src['documents']} held-out docs, "
                  f"{src['exact']} exact copies in training, max n-gram share {src['max_share']:.1%} "
                  f"(boilerplate discounted; see {self.log.name})", flush=True)
        # The audit's verdict (exit 1): exact copies, near copies or quotes. A domain held-out
        # document copied (exactly or nearly whole) into training would void the study's numbers.
        # A quote (>= 20 tokens shared with another source's training data) is fatal too, except
        # where the general source holds a carved slice of that domain: related documents share
        # passages (tunes of one Essen book share their header lines), and through the general
        # source that natural overlap reads as a quote; examples/carve.py proves no carved
        # document, nor a near copy of one, is in the domain's splits. A general validation
        # document with a twin in the general training data (Perl ships stub pages of identical
        # text, e.g. perltoot.pod and perltooc.pod) only blurs the forgetting figures: reported.
        sliced = {d for d, _ in self.size.slices or ()}
        fatal = []
        for src in (x for x in r["sources"] if x["flagged"]):
            ids = ", ".join(w["id"] for w in src.get("worst", []) if w.get("flagged"))
            copies = src["exact"] + src["near_copies"]
            print(f"         audit {src['source']}/{src['split']}: {src['flagged']} flagged: {src['exact']} exact, "
                  f"{src['near_copies']} near copies, {src['quotes']} quotes (longest {src['longest_quote']} tokens; "
                  f"{ids})", flush=True)
            if src["source"] in self.size.domains and (copies or src["source"] not in sliced):
                fatal.append(src)
            elif src["source"] in sliced:
                print(f"         audit {src['source']}/{src['split']}: quotes only, from the {self.general} source's "
                      f"carved slice of {src['source']} (related documents share passages; no document is shared: "
                      "corpora/carve.json)", flush=True)
        if fatal:
            sys.exit(f"study: held-out domain documents found in training data: {p.stderr.strip()}")

    # -- runs -----------------------------------------------------------------------

    @staticmethod
    def done(run: Path) -> bool:
        """`mixer train` marks a run done only after evaluating every checkpoint (with
        --eval-samples), so a done run needs no separate `mixer eval`."""
        return (run / "run.json").exists() and json.loads((run / "run.json").read_text()).get("status") == "done"

    def _seed(self, seed: int) -> tuple[str, ...]:
        return ("--seed", str(seed)) if self.size.seed_trainer and seed else ()

    def pretrain(self, mix: Path, run: Path, *flags: str, model: str | None = None,
                 checkpoints: int | None = None, seed: int = 0) -> Path:
        if not self.done(run):
            self.run("train", "pretrain", str(mix), "--model", model or self.size.model, "--out", str(run),
                     "--checkpoints", str(checkpoints or self.size.save_interval),
                     "--eval-samples", str(self.size.eval_samples), *self._seed(seed), *flags, *self.size.train_args)
        return run

    def finetune(self, mix: Path, parent: Path, run: Path, kind: str = "finetune", *flags: str, seed: int = 0,
                 grid: tuple[str, ...] | None = None) -> Path:
        """A finetune (a grid over `grid`, default the size's rates) evaluated on the same number
        of samples as pretraining, its start included (mixer eval scores it as row `start`)."""
        if not self.done(run):
            self.run("train", kind, str(mix), "--from", str(parent), "--out", str(run),
                     "--patience", str(self.size.patience), "--eval-samples", str(self.size.eval_samples),
                     *(grid if grid is not None else self.size.ft_args), *self._seed(seed), *flags,
                     *self.size.train_args)
        return run

    def chains(self, domain: str, seed: int, mixes: dict[str, Path]) -> list[Callable[[], list[Path]]]:
        """One chain per pretraining mix: pretrain, finetune (and replay from the largest SPT)."""
        base = self.out / "runs" / domain / f"s{seed}"
        largest = f"spt{self.size.fractions[-1]:g}"

        def chain(name: str, mix: Path) -> list[Path]:
            pre = self.pretrain(mix, base / name)
            made = [pre, self.finetune(mixes["ft"], pre, base / f"{name}-ft")]
            if "replay" in mixes and name == largest:
                made.append(self.finetune(mixes["replay"], pre, base / f"{name}-replay", "replay"))
            return made

        return [partial(chain, name, mix) for name, mix in mixes.items() if name not in ("ft", "replay")]

    def train(self, chains: list[Callable[[], list[Path]]], jobs: int) -> list[Path]:
        """Run the chains `jobs` at a time; the runs come back in chain order, whatever finished first."""
        pool = ThreadPoolExecutor(max_workers=jobs)
        futures = [pool.submit(c) for c in chains]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
            for f in futures:
                if f.done() and f.exception() is not None:
                    raise f.exception()
            return [run for f in futures for run in f.result()]
        except BaseException:
            self.stop()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # -- answers --------------------------------------------------------------------

    def answers(self, runs: list[Path], publish: Path | None) -> None:
        report = self.out / "report"
        self.run("report", *map(str, runs), "--out", str(report), show=True)
        for domain in self.size.domains:
            fit_dir = self.out / "fit" / domain
            domain_runs = [str(r) for r in runs if f"/runs/{domain}/" in str(r)]
            # A failed fit stops the study (check): a report beside an old fit and its plot would
            # look current and be wrong.
            self.run("fit", *domain_runs, "--domain", domain, "--out", str(fit_dir), show=True)
            # The forecast at the largest measured checkpoint: the runs stop a few tokens short of
            # --tokens (whole batches), and `plan --fit` refuses to extrapolate unasked.
            measured = json.loads((fit_dir / "fit.json").read_text())["data"]["token_range"][1]
            self.run("plan", "--fit", str(fit_dir / "fit.json"), "--domain-tokens", self.size.domain_subset,
                     "--tokens", str(int(measured)), "--plot", str(fit_dir / "forecast.png"), show=True)
        if publish:
            files = [*report.glob("*.md"), *report.glob("*.png"),
                     *(self.out / "fit" / d / n for d in self.size.domains for n in ("fit.png", "forecast.png"))]
            replace_folder(publish, {(f.name if f.parent == report else f"{f.parent.name}-{f.name}"): f for f in files})
            print(f"published report and plots to {publish.relative_to(ROOT)}")


def replace_folder(dest: Path, files: dict[str, Path]) -> None:
    """`dest` holds exactly `files` (name -> source) afterwards, swapped in whole: no plot of an
    earlier study stays beside a new report, and an interrupted copy leaves the old folder."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name, src in files.items():
        shutil.copyfile(src, tmp / name)
    old = dest.with_name(f".{dest.name}.old")
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    if old.exists():
        shutil.rmtree(old)


def threads(train_args: list[str]) -> tuple[str, ...]:
    """One torch thread per chain unless the user chose: two 1-thread chains did 1.46x the work of
    one 2-thread chain here, and the published CPU figures then do not depend on the core count."""
    return tuple(train_args) if "--threads" in train_args else ("--threads", "1", *train_args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="demo")
    ap.add_argument("--out", type=Path, help="Working folder (default examples/out/<size>).")
    ap.add_argument("--model", help="Model preset (default: the size's, 'tiny' on CPU).")
    ap.add_argument("--tokens", help="Pretraining tokens per run.")
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--seeds", help="Comma-separated seeds.")
    ap.add_argument("--tokenizer", choices=["bpe", "gpt2"], default="bpe",
                    help="bpe: the study's 1,024-token BPE (CPU speed); gpt2: GPT-2's vocabulary (GPU).")
    ap.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 8),
                    help="Training chains at a time (default: one per core, at most 8: each holds ~1 GB). "
                         "Use 1 on a GPU.")
    ap.add_argument("--train-args", default="",
                    help="Extra flags for every `mixer train` (e.g. --devices 1 --precision bf16-true).")
    ap.add_argument("--ft-grid", help="Finetuning rates as multiples of the parent's, comma-separated "
                                      "(default 0.25,0.5,1,2).")
    ap.add_argument("--large", default="small", help="study: the larger model of the gap-closed comparison "
                                                     "(a preset; e.g. olmo-3b beside --model olmo-1b on GPUs).")
    ap.add_argument("--eval-samples", type=int, help="Samples per held-out set and evaluated checkpoint.")
    ap.add_argument("--publish", action="store_true", help="Copy the report and plots to docs/results/<size>/.")
    ap.add_argument("--parts", default="all",
                    help="study: which parts to run, comma-separated: all (default), law (the two law sweeps, "
                         "pretraining only, at every seed, and their fits), paper2 (paper 2's sweep alone).")
    a = ap.parse_args()
    if a.jobs < 1:
        ap.error("--jobs must be at least 1")
    size = SIZES[a.size]
    size = replace(size, model=a.model or size.model, tokens=a.tokens or size.tokens, seq_len=a.seq_len or size.seq_len,
                   seeds=tuple(int(x) for x in a.seeds.split(",")) if a.seeds else size.seeds,
                   train_args=threads(shlex.split(a.train_args)), vocab=size.vocab if a.tokenizer == "bpe" else 0,
                   ft_args=("--lr-ratio", a.ft_grid) if a.ft_grid else size.ft_args,
                   eval_samples=a.eval_samples or size.eval_samples)
    out = (a.out or ROOT / "examples" / "out" / a.size).resolve()
    out.mkdir(parents=True, exist_ok=True)
    study = Study(size, out, out / "study.log")
    print(f"study '{a.size}': domains {', '.join(size.domains)}, seeds {size.seeds}, fractions 0 + {size.fractions}, "
          f"{size.tokens} tokens per pretraining run, model {size.model}; log: {study.log}", flush=True)
    study.data()
    if a.size == "study":
        from headline import PARTS, Design, Headline  # examples/headline.py, beside this script

        parts = set(a.parts.split(","))
        if not parts <= set(PARTS):
            ap.error(f"--parts {a.parts}: expected all, law or paper2")
        if a.publish and parts != {"all"}:
            ap.error("--publish publishes the whole study (docs/results/study): leave out --parts")
        h = Headline(study, a.jobs, Design(large=a.large), parts)
        h.run()
        h.answers(ROOT / "docs" / "results" / "study" if a.publish else None)
        print(f"study '{a.size}' done in {time.perf_counter() - study.t0:.0f} s")
        return
    chains = []
    for domain in size.domains:
        for seed in size.seeds:
            mixes = study.mixes(domain, seed)
            if seed == size.seeds[0]:
                study.audit(mixes[f"spt{size.fractions[-1]:g}"])
            chains += study.chains(domain, seed, mixes)
    runs = study.train(chains, a.jobs)
    study.answers(runs, ROOT / "docs" / "results" / a.size if a.publish else None)
    print(f"study '{a.size}' done in {time.perf_counter() - study.t0:.0f} s")


if __name__ == "__main__":
    main()
