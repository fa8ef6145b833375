"""The documentation stays true: the module map is generated, links between pages resolve."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_module_map_is_up_to_date():
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "make_module_map.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout


def test_relative_links_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to a missing {target}"


def test_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_text().splitlines()) < 300
