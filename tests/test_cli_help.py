"""`mixer --help` names only what exists: its recipes resolve and its mix names are the
names `mixer build` gives."""

import re

from mixer.mixing.spec import MixSpec
from mixer.recipe_catalog import find_recipe
from mixer.units import parse_count
from tests.mixutil import run_cli


def test_help_examples_name_real_things(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for recipe in re.findall(r"--recipe (\S+)", out):
        assert find_recipe(recipe).is_file()
    build = re.search(r"mixer build --domain (\S+) --fraction (\S+) --tokens (\S+)", out)
    name = MixSpec(stores=".", domain=build[1], fraction=float(build[2]), tokens=parse_count(build[3])).default_name()
    assert set(re.findall(r"mixes/(\S+)", out)) == {name}
    commands = re.findall(r"^  (\w[\w-]*)\s{2,}", out, re.M)
    assert len(commands) >= 10, commands
    for command in commands:
        assert run_cli(capsys, command, "--help")[0] == 0
