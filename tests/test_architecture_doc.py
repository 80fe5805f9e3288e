"""docs/architecture.md lists every module of every package, and no module that is not there."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def listed() -> dict[str, set[str]]:
    """folder -> the module names its table row lists."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\| [^|]+ \| `([\w/]+)/` \(([^)]*)\)", line)
        if m:
            rows[m.group(1)] = set(re.findall(r"`(\w+)`", m.group(2)))
    return rows


def modules(folder: str) -> set[str]:
    return {p.stem for p in (ROOT / folder).glob("*.py") if not p.stem.startswith("__")}


def test_every_package_and_module_is_in_the_architecture_doc():
    rows = listed()
    packages = {"mixer", "trainer_adapters/litgpt"} | {
        str(p.parent.relative_to(ROOT)) for p in (ROOT / "mixer").glob("*/__init__.py")}
    assert packages == set(rows), f"packages without a row: {packages - set(rows)}; rows without one: {set(rows) - packages}"
    for folder, names in rows.items():
        have = modules(folder)
        assert names == have, f"{folder}: not listed {sorted(have - names)}; listed but absent {sorted(names - have)}"


def test_each_command_has_its_own_cli_module():
    from mixer.cli import COMMANDS

    for name, (target, _) in COMMANDS.items():
        module = target.split(":")[0].rsplit(".", 1)[1]
        assert module == name.replace("-", "_"), f"mixer {name} lives in mixer/cli/{module}.py"


# What a command module may take from a stage besides the API: its output's formatter, flag
# choices and constants, the typed configs it fills, and the parser of its --set strings.
CLI_MAY_IMPORT = {"parse_set", "parse_overrides", "PretrainConfig", "FinetuneConfig", "Machine"}


def test_every_command_is_flags_over_the_api():
    import re

    for name in ("tokenize", "plan", "build", "verify", "audit", "train", "eval", "report", "fit", "similarity"):
        src = (ROOT / "mixer" / "cli" / f"{name}.py").read_text()
        assert "from mixer import api" in src, f"mixer/cli/{name}.py does not call mixer.api"
        for mod, names in re.findall(r"from mixer\.(?:ingest|mixing|checks|training|analysis)\.(\w+) import ([\w, ]+)",
                                     src):
            for n in (x.strip() for x in names.split(",")):
                assert n.startswith("format_") or n.isupper() or n in CLI_MAY_IMPORT, \
                    f"mixer/cli/{name}.py takes {n} from {mod}: stage work belongs behind mixer/api.py"
