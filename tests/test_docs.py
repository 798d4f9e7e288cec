"""The pages a newcomer reads: every relative link and every file path they print exists."""

from __future__ import annotations

import re
from pathlib import Path

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
