"""The generated pages in docs/reference/ say what the code says now."""

from __future__ import annotations

import subprocess
import sys

import reference


def test_the_generated_pages_are_what_the_code_says_now():
    """In a fresh process: ``--help`` lists the subclasses imported so far, which a test process accumulates."""
    check = subprocess.run(
        [sys.executable, str(reference.ROOT / "reference.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr[-500:]


def test_the_troubleshooting_table_lists_every_one_line_error_with_where_it_is_raised():
    page = reference.errors_page()
    assert all(f"## {name}\n" in page for name in reference.ERRORS)
    assert (
        "| The checkpoint does not fit this model" in page and "`lightning_modules/base.py: on_load_checkpoint`" in page
    )
