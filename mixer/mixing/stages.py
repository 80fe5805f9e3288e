"""Multi-stage recipes: NPT, SPT, SCPT, finetune, replay and compute-matched are all data.

A recipe is TOML: `[vars]` (defaults, overridable with `--set name=value`), `[mix]` (keys
shared by every stage) and a list of `[[stage]]` tables whose keys are MixSpec fields:

    [vars]
    lam = 0.5                        # not `lambda`: a Python keyword does not parse in '=' expressions
    tokens = "4M"
    [mix]
    domain = "music"
    [[stage]]
    name = "pretrain"
    epochs = "=lam"                  # '=' marks arithmetic over vars: lam x |D| tokens of the domain
    tokens = "{tokens}"              # '{name}' substitutes a var into a string
    [[stage]]
    name = "posttrain"
    epochs = 1                       # one pass over the (1 - lam) |D| tokens no earlier stage touched
    exclude_seen_in = ["pretrain"]   # (epochs = 1 - lam here would give (1 - lam)^2 |D|)

Each stage is built into OUT/<stage name>; a stage whose domain epochs come to 0 (for
example lambda = 1 leaves nothing for post-training) is skipped and recorded as such.
Every stage's manifest records the total exposure of each domain document over the
stages up to and including it.
"""

from __future__ import annotations

import ast
import dataclasses
import operator
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mixer.formats.atomic import read_json, write_json
from mixer.mixing.build import build
from mixer.mixing.request import check_name, check_settings
from mixer.errors import MixerError, UsageError
from mixer.mixing.spec import MixSpec, domain_documents, resolve
from mixer.units import parse_count
if TYPE_CHECKING:
    from mixer.executors import Executor

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.USub: operator.neg, ast.Pow: operator.pow}
_FIELDS = {f.name for f in dataclasses.fields(MixSpec)} - {"stores", "exclude_seen_in"}
_COUNTS = {"tokens", "domain_subset_tokens", "samples_per_shard"}
_INTS = {"seq_len", "seed", "subset_seed"}
_FLOATS = {"fraction", "epochs", "replay", "max_epochs", "max_general_epochs"}
RECIPE_BUILD_FORMAT = "mixer-recipe-build/1"


def _arith(expr: str, env: dict, where: str) -> float:
    """Arithmetic over numbers and vars only; why not eval(): recipes are data, not code."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name) and node.id in env:
            return float(env[node.id])
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise UsageError(f"{where}: cannot evaluate {expr!r} (numbers, + - * / ** and vars {sorted(env)} only)")

    try:
        return ev(ast.parse(expr.strip(), mode="eval"))
    except SyntaxError:
        raise UsageError(f"{where}: cannot parse {expr!r}") from None


def _value(v, env: dict, where: str):
    if isinstance(v, str) and v.startswith("="):
        return _arith(v[1:], env, where)
    if isinstance(v, str):
        try:
            return v.format(**env)
        except KeyError as e:
            raise UsageError(f"{where}: unknown var {e.args[0]!r} in {v!r}") from None
    if isinstance(v, list):
        return [_value(x, env, where) for x in v]
    return v


def parse_set(pairs: tuple[str, ...]) -> dict:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep:
            raise UsageError(f"--set: expected name=value, got {p!r}")
        out[k.strip()] = float(v) if v.strip().lstrip("-").replace(".", "", 1).isdigit() else v.strip()
    return out


def load_stages(recipe: Path, stores: Path, overrides: dict | None = None) -> tuple[dict, list[tuple[str, MixSpec | None, list[str]]]]:
    """Return the recipe's header and [(stage name, spec or None if skipped, stages it excludes)]."""
    if not recipe.exists():
        raise MixerError(f"{recipe}: no such recipe")
    try:
        doc = tomllib.loads(recipe.read_text())
    except tomllib.TOMLDecodeError as e:
        raise MixerError(f"{recipe}: invalid TOML ({e})") from None
    if not doc.get("stage"):
        raise MixerError(f"{recipe}: no [[stage]] tables (a source recipe? use mixer tokenize --recipe)")
    env = {**doc.get("vars", {}), **(overrides or {})}
    unknown = set(overrides or {}) - set(doc.get("vars", {}))
    if unknown:
        raise UsageError(f"--set {', '.join(sorted(unknown))}: not a var of {recipe} (vars: {', '.join(doc.get('vars', {})) or 'none'})")
    stages, seen = [], set()
    for i, table in enumerate(doc["stage"]):
        merged = {**doc.get("mix", {}), **table}
        name = str(merged.pop("name", f"stage{i}"))
        where = f"{recipe} [[stage]] {name}"
        check_name(name, f"{recipe} [[stage]] name")  # each stage is built into OUT/<name>
        if name in seen:
            raise MixerError(f"{where}: duplicate stage name")
        seen.add(name)
        excludes = [str(x) for x in _value(merged.pop("exclude_seen_in", []), env, where)]
        bad = [x for x in excludes if x not in seen]
        if bad:
            raise MixerError(f"{where}: exclude_seen_in names {bad}, not an earlier stage")
        kw = {}
        for key, raw in merged.items():
            key = {"domain_subset": "domain_subset_tokens"}.get(key, key)
            if key not in _FIELDS:
                raise MixerError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(_FIELDS))})")
            v = _value(raw, env, where)
            if key == "domain_subset_tokens" and str(v).strip() in ("", "0", "0.0", "all"):
                v = None  # a recipe var's default: no subset, the whole train split
            if key in _COUNTS and v is not None:
                v = parse_count(v, f"{where} {key}")
            if key in _INTS:
                v = _whole(v, f"{where}: {key}")
            if key in _FLOATS and v is not None:
                v = _number(v, f"{where}: {key}")
            if key == "window" and isinstance(v, str):
                v = tuple(_number(x, f"{where}: window") for x in v.split(":"))
            if key == "extra":  # extra = [["proofs", 0.01], ...]: further placed sources
                try:
                    v = [(str(n), float(f)) for n, f in v]
                except (TypeError, ValueError):
                    raise MixerError(f"{where}: extra must be a list of [name, fraction] pairs, got {v!r}") from None
            kw[key] = v
        if kw.get("epochs") is not None and float(kw["epochs"]) <= 0:
            if kw.get("tokens") is None:
                stages.append((name, None, excludes))  # nothing of the domain left for this stage
                continue
            kw["epochs"], kw["fraction"] = None, 0.0  # a pretraining stage with no domain: NPT
        kw.setdefault("name", name)
        spec = MixSpec(stores=str(Path(stores).resolve()), **kw)
        check_settings(spec, lambda key: f"{where}: {key}")
        stages.append((name, spec, excludes))
    return doc, stages


def _number(v, where: str) -> float:
    try:
        if isinstance(v, bool):
            raise ValueError
        return float(v)
    except (TypeError, ValueError):
        raise MixerError(f"{where} must be a number, got {v!r}") from None


def _whole(v, where: str) -> int:
    f = _number(v, where)
    if not f.is_integer():
        raise MixerError(f"{where} must be a whole number, got {v!r}")
    return int(f)


def _unseen(spec: MixSpec) -> int:
    """Domain documents left to this stage: of its own set (a subset when it has one), those no
    stage it excludes touched."""
    from mixer.formats.store import open_store

    store = open_store(spec.stores, spec.domain)
    docs = domain_documents(spec, store)
    return store.n_docs("train") if docs is None else len(docs)


def default_name(recipe: Path, defaults: dict, overrides: dict) -> str:
    """mixes/<recipe>, plus each var the command line changed (`spt-fraction0.02`), so a sweep
    over a var needs no --out per point and never meets the folder of another point."""
    changed = sorted((k, v) for k, v in overrides.items() if defaults.get(k) != v)

    def show(v: object) -> str:
        text = f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
        return re.sub(r"[^A-Za-z0-9.+_-]", "_", text)

    return recipe.stem + "".join(f"-{k}{show(v)}" for k, v in changed)


def build_recipe(recipe: Path, stores: Path, out: Path | None, overrides: dict | None = None,
                 executor: "Executor | None" = None, progress: bool = True, recheck_stores: bool = False) -> dict:
    doc, stages = load_stages(recipe, stores, overrides)
    root = out or Path("mixes") / check_name(default_name(recipe, doc.get("vars", {}), overrides or {}), "recipe name")
    _claim_root(root, recipe)
    exposure: dict[str, np.ndarray] = {}
    results = []
    for name, spec, excludes in stages:
        if spec is None:
            results.append({"stage": name, "status": "skipped", "reason": "no domain epochs left for this stage"})
            continue
        spec.exclude_seen_in = [str(root / x) for x in excludes]
        if excludes and spec.domain and _unseen(spec) == 0:
            results.append({"stage": name, "status": "skipped", "reason": f"earlier stages {excludes} touched every domain document"})
            continue
        plan = resolve(spec)
        record = {"stage": {"recipe": str(recipe), "name": name, "vars": {**doc.get("vars", {}), **(overrides or {})}}}
        for src in plan.sources:
            if src.role != "domain":
                continue
            passes = np.zeros(src.store.n_docs("train"), dtype=np.int64) if src.stream.name not in exposure else exposure[src.stream.name]
            mine, _ = src.passes
            passes = passes.copy()
            if src.stream.documents is not None:
                passes[src.stream.documents] += mine
            else:
                passes += mine
            exposure[src.stream.name] = passes
            record["exposure"] = {
                "source": src.stream.name,
                "stages": [r["stage"] for r in results if r["status"] == "done"] + [name],
                "documents_total_full_passes": {str(k): int(v) for k, v in enumerate(np.bincount(passes)) if v},
            }
        r = build(spec, root / name, executor=executor, progress=progress, extra=record,
                  recheck_stores=recheck_stores)
        results.append({"stage": name, "status": r["status"], "out": str(root / name),
                        "kind": spec.kind, "samples": r.get("manifest", {}).get("samples"),
                        "exposure": record.get("exposure")})
        if r["status"] != "done":  # later stages may need this one's manifest (Slurm: re-run when done)
            break
    summary = {"format": RECIPE_BUILD_FORMAT, "recipe": str(recipe), "recipe_path": str(recipe.resolve()),
               "out": str(root), "stages": results}
    write_json(root / "recipe.json", summary)
    return summary


def _claim_root(root: Path, recipe: Path) -> None:
    """OUT holds the stages of one recipe: refuse a folder of anything else before writing,
    and mark a new one as ours (recipe.json) so a killed build can be resumed."""
    record = root / "recipe.json"
    try:
        previous = read_json(record) if record.is_file() else None
    except MixerError:  # not JSON: not ours either
        previous = None
    ours = isinstance(previous, dict) and previous.get("format") == RECIPE_BUILD_FORMAT
    if not ours and root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise MixerError(f"{root}: exists and is not the output of a recipe build (no mixer recipe.json); "
                         "choose another --out (nothing was changed there)")
    if ours and previous.get("recipe_path") != str(recipe.resolve()):
        raise MixerError(f"{root}: holds the stages of recipe {previous.get('recipe_path')}; choose another --out")
    if not ours:
        write_json(record, {"format": RECIPE_BUILD_FORMAT, "recipe": str(recipe), "recipe_path": str(recipe.resolve()),
                            "out": str(root), "stages": []})


def format_stages(r: dict) -> str:
    lines = [f"recipe {r['recipe']} -> {r['out']}"]
    for s in r["stages"]:
        if s["status"] == "skipped":
            lines.append(f"  {s['stage']:<12} skipped: {s['reason']}")
            continue
        exp = s.get("exposure") or {}
        hist = ", ".join(f"{v:,}x{k}" for k, v in exp.get("documents_total_full_passes", {}).items())
        lines.append(f"  {s['stage']:<12} {s['kind']:<9} {s['status']:<8} {s['samples'] or 0:>10,} samples  {s['out']}"
                     + (f"  (domain docs x total passes so far: {hist})" if hist else ""))
    return "\n".join(lines)
