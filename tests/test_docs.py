"""The documentation: the site builds with `mkdocs build --strict` (a broken link or anchor, a page
missing from the nav, a CLI command or API object the references name that no longer exists: each
fails it), and README.md stays a front page whose relative links all resolve on GitHub too."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 250

# [text](target) and ![alt](target); the target ends at the first space or ")"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e '.[docs]'")
    out = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    # the generated references are there, not empty placeholders
    cli_page = (out / "reference" / "cli" / "index.html").read_text()
    for command in ("query", "index", "serve", "add", "eval", "tune"):
        assert f'id="medsearch-{command}"' in cli_page, f"CLI reference lacks `medsearch {command}`"
    api_page = (out / "reference" / "api" / "index.html").read_text()
    for name in ("medsearch.Searcher", "medsearch.index.build.build_index", "medsearch.index.writes.upsert",
                 "medsearch.server.app.create_app", "medsearch.server.settings.ServerSettings"):
        assert f'id="{name}"' in api_page, f"API reference lacks {name}"
    # the benchmark results the pages link to are part of the site
    assert (out / "bench" / "results" / "chaos.json").is_file(), "bench/results/ is missing from the site"


def test_readme_is_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines (at most {MAX_README_LINES}): move reference text to docs/")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading (MkDocs' toc gives the same for these headings)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(path: Path) -> set[str]:
    found, fence = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"^#{1,6} (.*)$", line)):
            found.add(github_slug(m.group(1)))
    return found


def relative_links(path: Path) -> list[str]:
    text, fence, links = path.read_text().splitlines(), False, []
    for line in text:
        if line.startswith("```"):
            fence = not fence
        elif not fence:
            links += LINK.findall(line)
    return [t for t in links if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # not http:, mailto: ...


def test_readme_relative_links_resolve():
    links = relative_links(README)
    assert links, "README.md links to no docs page"
    broken = []
    for target in links:
        file_part, _, anchor = target.partition("#")
        path = (README.parent / file_part).resolve() if file_part else README
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in headings(path):
            broken.append(f"{target}: no heading with that anchor in {path.relative_to(ROOT)}")
    assert not broken, "README.md has broken links:\n" + "\n".join(broken)


def test_readme_test_command_matches_ci():
    """The README's test command and .ci/run install the same extras (CI runs the README's command)."""
    pattern = re.compile(r"pip install -e '(\.\[[^\]]*\])'")
    readme = pattern.findall(README.read_text())
    ci = pattern.findall((ROOT / ".ci" / "run").read_text())
    assert ci, ".ci/run installs no extras"
    assert ci[0] in readme, f".ci/run installs {ci[0]}, the README's commands {readme}"
