"""README.md's two commands stay true: CI runs the README's test command, and the main job's
command line names options that exist."""

from __future__ import annotations

import re
from pathlib import Path

from mlplab.cli import build_parser

REPO = Path(__file__).resolve().parent.parent


def code_after(heading_text: str) -> str:
    readme = (REPO / "README.md").read_text()
    start = readme.index(heading_text)
    block = re.search(r"```bash\n(.*?)```", readme[start:], re.S)
    return block.group(1).strip()


def test_ci_runs_the_readme_test_command():
    command = code_after("Run the tests")
    ci = (REPO / ".ci" / "run").read_text()
    assert command in ci.splitlines()


def test_readme_main_commands_parse():
    parser = build_parser()
    for heading in ("Install and run the main job", "The same on CIFAR-10"):
        command = code_after(heading)
        mlplab_part = command.split("&&")[-1].split()
        assert mlplab_part[0] == "mlplab"
        args = parser.parse_args([a if a != "DIR" else "/tmp/x" for a in mlplab_part[1:]])
        assert args.command == "train"
