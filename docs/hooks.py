"""MkDocs hook: the benchmark results in bench/results/ join the site under bench/results/, so the
pages can link to the JSON behind every figure and show the plots without a copy in docs/.

The pages link to them as GitHub resolves a link from docs/ (`../bench/results/x.json` from
docs/results.md, `../../bench/results/x.json` from docs/guides/*.md); in the site the same files sit
one level lower, under the site root, so those links are rewritten by one `../` before MkDocs
checks them (a link to a file that does not exist still fails `mkdocs build --strict`).

It also teaches mkdocs-click click's `\b` marker (a paragraph the terminal must not rewrap): the
command examples in a help text become a code block instead of one run-on paragraph.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

RESULTS = "bench/results"


def _repo(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_files(files, config):
    for path in sorted((_repo(config) / RESULTS).iterdir()):
        if path.is_file() and not path.name.startswith("."):
            files.append(File.generated(config, f"{RESULTS}/{path.name}", abs_src_path=str(path)))
    return files


def _unwrapped(lines):
    """Lines of a click help text as Markdown: a block after a line holding only `\b` stays as it is
    (a code block when it lists commands, else a paragraph)."""
    block = None
    for line in lines:
        if block is None and line.strip() == "\b":
            block = []
        elif block is not None and line.strip():
            block.append(line)
        else:
            if block is not None:
                if block and all(b.lstrip().startswith("medsearch ") for b in block):
                    yield from ["```text", *block, "```"]
                else:
                    yield from block
                block = None
            yield line
    if block:
        yield from (["```text", *block, "```"] if all(b.lstrip().startswith("medsearch ") for b in block) else block)


def on_config(config):
    import mkdocs_click._docs as click_docs  # the docs extra's mkdocs-click renders the CLI reference

    make_description = click_docs._make_description
    if not getattr(make_description, "unwraps_click_blocks", False):
        def patched(*args, **kwargs):
            return _unwrapped(list(make_description(*args, **kwargs)))

        patched.unwraps_click_blocks = True
        click_docs._make_description = patched
    return config


def on_page_markdown(markdown, page, config, files):
    depth = page.file.src_uri.count("/")
    escaped = re.escape("../" * (depth + 1) + RESULTS + "/")
    return re.sub(r"(\]\()" + escaped, lambda m: m.group(1) + "../" * depth + RESULTS + "/", markdown)
