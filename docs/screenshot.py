"""Screenshots of the search page for the README: a hybrid search, and the compare-tiers view.

    python docs/screenshot.py            # serves indexes/default (built from corpus/ if missing)
Needs Debian's chromium (apt-get install chromium) and playwright (the test extra).
"""

from __future__ import annotations

import shutil
import sys
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from playwright.sync_api import sync_playwright  # noqa: E402
from servers import uvicorn_thread  # noqa: E402

from medsearch import Encoder, Searcher, build_index, open_index  # noqa: E402
from medsearch.index.folder import index_exists  # noqa: E402
from medsearch.server.app import create_app  # noqa: E402

SHOTS = {
    "search-page.png": "/?" + urllib.parse.urlencode({"q": "warfarin dose and the INR blood test", "tier": "fast", "k": 5, "mode": "hybrid"}),
    "compare-tiers.png": "/?" + urllib.parse.urlencode({"q": "what are the early signs of type 2 diabetes", "tier": "fast", "k": 6, "compare": 1}),
}


def main() -> None:
    index = REPO / "indexes" / "default"
    if not index_exists(index) or "lexical" not in open_index(index).manifest:
        build_index(REPO / "corpus", index, Encoder())
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with uvicorn_thread(create_app(Searcher(open_index(index), Encoder(open_index(index).manifest["model"]["spec"])))) as url:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1180, "height": 860})
            for name, path in SHOTS.items():
                page.goto(url + path)  # once to warm up, once for the picture
                page.wait_for_selector(".hit")
                page.goto(url + path)
                page.wait_for_selector(".hit")
                page.screenshot(path=str(REPO / "docs" / name))
                print(f"wrote docs/{name}")
            browser.close()


if __name__ == "__main__":
    main()
