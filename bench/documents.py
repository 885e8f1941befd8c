"""The issue's folder, run as a user runs it: the bundled corpus plus a 3-page PDF, a web page with
navigation and a cookie banner, a Word file, a damaged, a password-protected and an image-only PDF
(made by tests/documents_factory.py), indexed by `medsearch index` with no flag; then questions
answered in each file, the boilerplate words in lexical mode, and `medsearch mcp` over stdio through
the mcp SDK's client. Also what citations cost a query: the search's median latency with
quote_sentences 0 (term highlights and quotes only) and 16 (quotes by meaning), side by side.

    python bench/documents.py            # table + bench/results/documents.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import documents_factory as factory  # noqa: E402
from common import print_table, write_results  # noqa: E402
from test_documents import ASTHMA, ASTHMA_TITLE, COOKIES, FOOTER, MEASLES, MEASLES_TITLE, NAV  # noqa: E402

QUESTIONS = [  # (question, the file that answers it, page, section)
    ("What is the antidote for a paracetamol overdose?", "leaflet.pdf", 3, "When to see a doctor"),
    ("At what temperature should paracetamol tablets be stored?", "leaflet.pdf", 3, "Storage and further information"),
    ("how often should I wash the spacer of my inhaler", "inhalers.docx", None, "Looking after your spacer > Cleaning the spacer"),
    ("at what age is the second MMR jab given", "measles.html", None, "The MMR vaccine"),
]


def medsearch(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medsearch", *map(str, args)], capture_output=True, text=True)


def make_folder(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels.tsv", "README.md"):
        (folder / name).write_bytes((ROOT / "corpus" / name).read_bytes())
    factory.make_pdf(folder / "leaflet.pdf", factory.SAMPLE_PAGES, title=factory.SAMPLE_TITLE)
    factory.make_pdf(folder / "locked.pdf", factory.SAMPLE_PAGES, title=factory.SAMPLE_TITLE, password="pw")
    factory.make_image_pdf(folder / "scan.pdf", "Chickenpox spots crust over within five days")
    factory.make_damaged_pdf(folder / "broken.pdf")
    factory.make_html(folder / "measles.html", MEASLES_TITLE, MEASLES, NAV, COOKIES, FOOTER)
    factory.make_docx(folder / "inhalers.docx", ASTHMA_TITLE, ASTHMA)


async def mcp_search(index: Path, question: str) -> tuple[list[str], dict]:
    from mcp import StdioServerParameters
    from mcp.client.session import ClientSession
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=sys.executable, args=["-m", "medsearch", "mcp", "--index", str(index)])
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = sorted(tool.name for tool in (await session.list_tools()).tools)
        result = await session.call_tool("search", {"query": question, "k": 3})
        return tools, result.structured_content


def citation_cost(index: Path, repeats: int) -> list[dict]:
    from medsearch.documents.corpus import read_queries
    from medsearch.retrieval.search import Searcher

    _, queries = read_queries(ROOT / "corpus" / "queries.jsonl")
    searcher = Searcher.open(index)
    searcher.search(queries[:5])  # warm
    rows = []
    samples = {0: [], 16: []}
    by_meaning = {0: 0, 16: 0}
    hits = 0
    for _ in range(repeats):
        for query in queries:
            for budget in (0, 16):
                started = time.perf_counter()
                result = searcher.search([query], quote_sentences=budget)[0]
                samples[budget].append(time.perf_counter() - started)
                if budget == 16:
                    hits += len(result.hits)
                    by_meaning[16] += sum(1 for h in result.hits if not h.highlights and h.quote)
    for budget, values in samples.items():
        values = sorted(values)
        rows.append({"quote_sentences": budget, "queries": len(values), "p50_ms": round(statistics.median(values) * 1000, 2),
                     "p95_ms": round(values[int(0.95 * (len(values) - 1))] * 1000, 2)})
    rows[1]["hits_without_query_terms"] = f"{by_meaning[16]}/{hits}"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the 99 bundled questions for the cost table")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medsearch-documents-"))
    folder, index = work / "corpus", work / "index"
    make_folder(folder)
    started = time.perf_counter()
    built = medsearch("index", folder, "--index", index, "--quiet")
    seconds = time.perf_counter() - started
    skipped = [line for line in built.stderr.splitlines() if line.startswith("skipped ")]
    print(f"index: exit {built.returncode} in {seconds:.1f} s (whole command)\n" + built.stdout + "\n".join(skipped) + "\n")
    rows = []
    for question, expected, page, section in QUESTIONS:
        out = medsearch("query", question, "--index", index, "--json", "--k", 3)
        hit = json.loads(out.stdout)["results"][0]
        rows.append({"question": question[:48], "first": hit["id"], "page": hit["citation"]["page"],
                     "section": hit["citation"]["section"], "ok": hit["id"] == expected
                     and hit["citation"]["page"] == page and hit["citation"]["section"] == section})
    print_table(rows, ["question", "first", "page", "section", "ok"])
    leaks = {}
    for word in NAV + COOKIES + FOOTER:
        out = json.loads(medsearch("query", word, "--index", index, "--json", "--mode", "lexical").stdout)
        leaks[word] = [h["id"] for h in out["results"] if h["id"] == "measles.html"]
    print(f"\nboilerplate words found in measles.html by --mode lexical: {sum(map(len, leaks.values()))} of {len(leaks)} words")
    tools, answer = asyncio.run(mcp_search(index, QUESTIONS[0][0]))
    first = answer["results"][0]
    print(f"mcp over stdio: tools {tools}; search -> {first['id']}, page {first['citation']['page']}, "
          f"section {first['citation']['section']!r}\n")
    cost = citation_cost(index, args.repeats)
    print_table(cost, ["quote_sentences", "queries", "p50_ms", "p95_ms", "hits_without_query_terms"])
    write_results("documents", {
        "index": {"exit": built.returncode, "seconds": round(seconds, 2), "stdout": built.stdout, "skipped": skipped},
        "questions": rows, "boilerplate_hits": leaks,
        "mcp": {"tools": tools, "first": first["id"], "page": first["citation"]["page"],
                "section": first["citation"]["section"]},
        "citation_cost": cost,
    })


if __name__ == "__main__":
    main()
