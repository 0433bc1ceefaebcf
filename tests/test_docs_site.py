"""The built docs site (scripts/docs.sh -> _site/) in a real browser: headless Chromium, no network, a local
server. Every page loads without console errors, formulas are rendered by the bundled MathJax, chapters with plots
show their figures, show_doc entries are there, hidden cells are not, every internal link resolves, and a screenshot
of each page is saved under artifacts/screenshots/. Skipped when the site or Chromium is missing, unless
LLAMA_LIT_REQUIRE_SITE=1 (as in CI), where that is a failure. LLAMA_LIT_SITE=dir tests the site built there
(scripts/test.sh's AVX2 run: _site_avx2/, screenshots under artifacts/screenshots_avx2/)."""
import functools
import http.server
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / os.environ.get("LLAMA_LIT_SITE", "_site")
SHOTS = ROOT / "artifacts" / ("screenshots" + SITE.name.removeprefix("_site"))
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
sys.path.insert(0, str(ROOT / "docs"))
from prepare import directives, public_names  # noqa: E402

missing = [what for what, ok in (("site (run scripts/docs.sh)", (SITE / "index.html").is_file()),
                                 ("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not ok]
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
except ImportError:
    missing.append("selenium (pip install -r docs/requirements.txt)")
if missing and os.environ.get("LLAMA_LIT_REQUIRE_SITE") != "1":
    pytest.skip(f"docs site browser test needs: {', '.join(missing)}", allow_module_level=True)

NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))


def notebook_facts(path: Path) -> dict:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    md = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    code = [("".join(c["source"])) for c in cells if c["cell_type"] == "code"]
    exported = [n for src in code if "export" in directives(src) and "hide" not in directives(src)
                for n in public_names("\n".join(l for l in src.splitlines() if not l.startswith("#|")))]
    prose = re.sub(r"```.*?```|`[^`]*`", "", md, flags=re.S)          # a `$` in code is not a formula
    return {"math": "$" in prose, "plots": sum(src.count("plt.show()") for src in code), "exported": exported}


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass                               # no line per request


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        "A browser that drops a connection mid-file (a page left early) is no error; anything else still prints."
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def server():
    handler = functools.partial(QuietHandler, directory=str(SITE))
    httpd = QuietServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def load(driver, url):
    driver.get(url)
    driver.execute_async_script(   # wait until MathJax (if the page has it) has typeset everything
        "const done = arguments[arguments.length - 1];"
        "if (window.MathJax && MathJax.startup && MathJax.startup.promise) MathJax.startup.promise.then(() => done(1), () => done(0));"
        "else done(1);")


def internal_links(driver, page_url):
    hrefs = driver.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.href)")
    base = urllib.parse.urlparse(page_url)
    return sorted({h.split("#")[0] for h in hrefs if urllib.parse.urlparse(h).netloc == base.netloc})


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_page(nb, server, browser):
    facts = notebook_facts(nb)
    url = server + ("index.html" if nb.stem == "index" else f"{nb.stem}.html")
    load(browser, url)
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / f"{nb.stem}.png"))

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors

    text = browser.execute_script("return document.querySelector('article').innerText")
    assert "from fastcore.test import" not in text and "nbdev.nbdev_export()" not in text  # #| hide cells stay hidden
    code = browser.execute_script("return [...document.querySelectorAll('article .cell_input pre')].map(p => p.innerText)")
    assert not [c for c in code if any(l.startswith("#|") for l in c.splitlines())], "a #| directive is shown"

    if facts["math"]:
        shown = browser.execute_script(
            "return [...document.querySelectorAll('mjx-container')].filter(e => e.getBoundingClientRect().width > 0).length")
        assert shown > 0, "no rendered formula"
        assert "$$" not in text, "raw $$ left on the page"

    if facts["plots"]:
        ok = browser.execute_script(
            "return [...document.querySelectorAll('article img')].filter(i => i.complete && i.naturalWidth > 0).length")
        assert ok >= facts["plots"], f"{ok} figures loaded, the notebook draws {facts['plots']}"

    documented = browser.execute_script(   # the show_doc blocks: input hidden, output headed by the name
        "return [...document.querySelectorAll('.tag_remove-input .cell_output strong code')].map(e => e.innerText)")
    for name in facts["exported"]:
        assert name in documented, f"show_doc entry for {name} missing"

    remote = browser.execute_script(   # everything the page fetched (scripts, fonts, images) came from our server
        "return performance.getEntriesByType('resource').map(r => r.name).filter(n => !n.startsWith(location.origin))")
    assert not remote, remote

    for link in internal_links(browser, url):
        try:
            status = urllib.request.urlopen(link, timeout=10).status
        except urllib.error.HTTPError as e:
            status = e.code
        assert status == 200, f"{link} -> {status}"


def test_home_links_every_chapter(server, browser):
    load(browser, server + "index.html")
    links = internal_links(browser, server + "index.html")
    for nb in NOTEBOOKS:
        if nb.stem != "index":
            assert any(l.endswith(f"/{nb.stem}.html") for l in links), nb.stem
    first = browser.execute_script("return document.querySelector('article').innerText.slice(0, 600)")
    assert "literate" in first and "installable package" in first


def test_next_previous_navigation(server, browser):
    load(browser, server + "01_norm.html")
    nav = browser.execute_script("return [...document.querySelectorAll('.related-pages a')].map(a => a.href)")
    assert any(h.endswith("/02_rope.html") for h in nav) and any(h.endswith("/00_tokenizer.html") for h in nav), nav
