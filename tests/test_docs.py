"""The pages a newcomer reads: every relative link and every file path they print exists."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH = re.compile(
    r"(?<![\w/.-])((?:configs|docs|benchmarks|checks|experiments|callbacks|datamodules|lightning_modules|models|storage|tests|zoo)/[\w./+-]*\w)"
)


def test_every_relative_link_in_the_docs_exists():
    missing, links = [], 0
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            links += 1
            if not (page.parent / target).exists():
                missing.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not missing and links >= 10


def test_every_project_path_the_docs_print_exists():
    """Config files, modules, tests and zoo folders named in the text (``...`` placeholders excepted)."""
    missing, checked = [], 0
    for page in PAGES:
        for path in PATH.findall(page.read_text()):
            if "..." in path or "<" in path:
                continue
            checked += 1
            if not (ROOT / path).exists() and not (ROOT / path.split("::")[0]).exists():
                missing.append(f"{page.relative_to(ROOT)}: {path}")
    assert not missing and checked >= 50


def printed_commands(prefix: str) -> list[str]:
    """Every command starting with ``prefix`` that the pages print in a bash block (continuations joined) or inline."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            found += [line.split("  #")[0].strip() for line in block.replace("\\\n", " ").splitlines()]
        found += re.findall(r"`([^`\n]+)`", text)
    return sorted({" ".join(c.split()) for c in found if c.startswith(prefix)})


PLACEHOLDERS = {"CONFIG": "configs/fashion_mnist/resnet8_from_resnet20+wrn_16_2.yaml"}
PLACEHOLDERS["C"] = PLACEHOLDERS["CONFIG"]


@pytest.mark.parametrize(
    "command", [c for c in printed_commands("python cli.py ") if "--from" not in c and "$" not in c]
)
def test_every_printed_cli_command_parses_as_printed(command, monkeypatch, capsys):
    """Its configs, arguments and values parse (``--print_config``); CONFIG / C stand for the demo's recipe, and a
    ``runs/...`` checkpoint is left out (running them: the tests of each page's workflow)."""
    from cli import main

    args = []
    for arg in shlex.split(command)[2:]:
        if arg.startswith("runs/.../"):  # a checkpoint of a run of yours: left out with its option
            args.pop()
        elif arg != "--print_config":
            args.append(PLACEHOLDERS.get(arg, arg))
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as info:
        main([*args, "--print_config"])
    assert info.value.code in (0, None) and "model:" in capsys.readouterr().out


@pytest.mark.parametrize("target", sorted({c.split()[1] for c in printed_commands("make ")}))
def test_every_printed_make_target_exists(target):
    dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
