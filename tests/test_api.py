"""The Python API: docs/api.md's example runs as written, and the functions return data."""

import os
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_docs_api_example_runs(tmp_path, capsys, monkeypatch):
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[1]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(DOC), "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "True" and (tmp_path / "mixes/spt-5pct/manifest.json").is_file()
    assert "samples;" in out[0]


def test_api_errors_are_mixer_errors(tmp_path):
    from mixer import plan
    from mixer.errors import MixerError

    with pytest.raises(MixerError):
        plan(stores=tmp_path, domain="nope", fraction=0.1, tokens="1M")


def test_import_mixer_is_light():
    import subprocess
    import sys

    code = "import sys, mixer; from mixer import build; print(sorted(m for m in ('torch', 'datatrove', 'scipy') if m in sys.modules))"
    out = subprocess.check_output([sys.executable, "-c", code], text=True, env={**os.environ})
    assert out.strip() == "[]"
