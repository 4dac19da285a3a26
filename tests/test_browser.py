"""The built book as a reader sees it: every page opened from disk in headless Chromium, offline.

For every page in the table of contents: the equations are typeset by the book's own copy of MathJax
(no raw TeX left on the page), every image loaded, the console shows no error, no request leaves the
machine, and a notebook page offers its download, Binder and Colab buttons. On a page with exercises,
a solution dropdown opens on click. A full-page screenshot of every page lands in _build/screenshots/.

The test reads the book that `make test` builds first (_build/html; BOOK_HTML names another build).
It needs Debian's Chromium (/usr/bin/chromium, installed by .ci/run) and Playwright's Python package;
without a browser it is skipped, except under CI, where it fails.
"""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from test_book import ROOT, toc_files

HTML = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html"))  # another build: BOOK_HTML=path/to/html
SCREENSHOTS = HTML.parent / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPOSITORY = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
MATHJAX_VERSION = re.search(r"^MATHJAX_VERSION\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
CHAPTER = re.compile(r"book/\d\d_")
DROPDOWN = re.compile(r'class="(?=[^"]*\badmonition\b)(?=[^"]*\bdropdown\b)[^"]*"')  # an exercise's solution

# Text outside code that still holds TeX delimiters was not typeset; a `[^label]` is a Markdown
# footnote without its definition (the build does not warn about those: see _config.yml).
UNRENDERED = re.compile(r"\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\$[^$\n]*\\[A-Za-z]+[^$\n]*\$|\[\^[^\]\s]+\]")
TEXT_OUTSIDE_CODE = """() => {
  const skip = "pre, code, script, style, textarea, mjx-container";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const parts = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode())
    if (!node.parentElement.closest(skip)) parts.push(node.textContent);
  return parts.join(" ");
}"""
TYPESET = """async () => {
  if (!document.querySelector(".math")) return null;
  if (!window.MathJax || !MathJax.startup) return "MathJax did not load";
  await MathJax.startup.promise;
  await document.fonts.ready;
  return {
    math: document.querySelectorAll(".math").length,
    untypeset: [...document.querySelectorAll(".math")]
      .filter(el => !el.querySelector("mjx-container")).map(el => el.textContent.slice(0, 80)),
    errors: [...document.querySelectorAll("mjx-merror")].map(el => el.textContent.slice(0, 80)),
    src: document.querySelector("script[src*='mathjax']").src,
    version: MathJax.version,
    processHtmlClass: MathJax.config.options.processHtmlClass,
  };
}"""
BROKEN_IMAGES = """() => [...document.images]
  .filter(img => !(img.complete && img.naturalWidth > 0)).map(img => img.getAttribute("src"))"""


def page_path(docname: str) -> Path:
    return HTML / f"{docname}.html"


def page_id(docname: str) -> str:
    return Path(docname).name


PAGES = toc_files()


def unavailable(reason: str):
    """Skip where the browser cannot be had; under CI, where it must be, fail."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    """One headless Chromium with a fresh profile."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright's Python package is not installed (pip install -r requirements.txt)")
    if not Path(CHROMIUM).exists():
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does it)")
    if not (HTML / "index.html").exists():
        pytest.skip(f"the book is not built: run `make book` or `make test` first ({HTML} is missing)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=FLAGS, viewport={"width": 1280, "height": 900})
        yield context
        context.close()


@pytest.fixture(scope="module")
def open_page(browser_context):
    """Open a built page from disk once; return the page and the list of errors it reports.

    Errors are what the console reports, uncaught exceptions, resources that failed to load, and any
    request that leaves the machine (refused: the book must work offline). The tests of a page share
    one loaded copy of it.
    """
    opened = {}

    def _open(docname):
        if docname in opened:
            return opened[docname]
        path = page_path(docname)
        assert path.exists(), f"{docname} is in _toc.yml but {path.relative_to(ROOT)} was not built"
        page = browser_context.new_page()
        errors = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
        page.on("requestfailed", lambda req: errors.append(f"failed to load {req.url}: {req.failure}"))
        page.route(re.compile(r"^(https?|wss?)://"),
                   lambda route: (errors.append(f"network request: {route.request.url}"), route.abort()))
        page.goto(path.as_uri(), wait_until="load")
        opened[docname] = page, errors
        return page, errors

    yield _open
    for page, _ in opened.values():
        page.close()


@pytest.mark.parametrize("docname", PAGES, ids=page_id)
def test_page_renders_offline(open_page, docname):
    page, errors = open_page(docname)
    typeset = page.evaluate(TYPESET)
    if typeset is not None:
        assert isinstance(typeset, dict), typeset
        assert not typeset["untypeset"], f"equations MathJax left untypeset: {typeset['untypeset']}"
        assert not typeset["errors"], f"TeX errors on the page: {typeset['errors']}"
        assert typeset["src"].startswith("file://"), f"MathJax came from {typeset['src']}, not the book"
        assert typeset["version"] == MATHJAX_VERSION, f"MathJax {typeset['version']}, not the pinned {MATHJAX_VERSION}"
        assert "math" in typeset["processHtmlClass"].split("|"), "Sphinx's mathjax3_config was not applied"
        assert page.locator("mjx-container").count() >= typeset["math"]
    raw = UNRENDERED.findall(page.evaluate(TEXT_OUTSIDE_CODE))
    assert not raw, f"raw TeX or footnote labels visible on the page: {raw[:5]}"
    broken = page.evaluate(BROKEN_IMAGES)
    assert not broken, f"images that did not load: {broken}"
    page.screenshot(path=str(SCREENSHOTS / f"{page_id(docname)}.png"), full_page=True)
    assert not errors, f"console errors: {errors}"


@pytest.mark.parametrize("docname", PAGES, ids=page_id)
def test_solution_dropdown_opens(open_page, docname):
    if page_path(docname).exists() and not DROPDOWN.search(page_path(docname).read_text()):
        assert not CHAPTER.match(docname), f"{docname} is a chapter but has no solution dropdown"
        pytest.skip(f"{docname} has no exercise solutions")
    page, errors = open_page(docname)
    dropdowns = page.locator(".solution.dropdown, .admonition.dropdown")
    assert dropdowns.count() > 0, "the page mentions a dropdown but shows none"
    dropdown = dropdowns.first
    body = dropdown.locator(":scope > :not(.admonition-title):not(button)").first
    assert body.is_hidden(), "the solution is visible before it is opened"
    dropdown.locator("button.toggle-button").first.click()  # "Click to show", right of the title
    body.wait_for(state="visible", timeout=5000)
    dropdown.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / f"{page_id(docname)}-solution.png"))
    assert not errors, f"console errors: {errors}"


@pytest.mark.parametrize("docname", [d for d in PAGES if (ROOT / f"{d}.ipynb").exists()], ids=page_id)
def test_notebook_buttons(open_page, docname):
    page, _ = open_page(docname)
    hrefs = page.eval_on_selector_all("a[href]", "links => links.map(a => a.getAttribute('href'))")
    repo = REPOSITORY["url"].removeprefix("https://github.com/")
    notebook = f"{docname}.ipynb"
    assert REPOSITORY["url"] in hrefs, "no link to the repository"
    assert f"https://mybinder.org/v2/gh/{repo}/{REPOSITORY['branch']}?urlpath=lab/tree/{notebook}" in hrefs
    assert f"https://colab.research.google.com/github/{repo}/blob/{REPOSITORY['branch']}/{notebook}" in hrefs
    download = next((h for h in hrefs if h.endswith(f"_sources/{notebook}")), None)
    assert download, "no button to download the page as .ipynb"
    downloaded = json.loads((page_path(docname).parent / download).read_text())
    assert downloaded["cells"], "the downloadable notebook is empty"


def test_index_leads_to_the_landing_page(open_page):
    page, errors = open_page("index")
    page.wait_for_url(re.compile(re.escape(page_path(PAGES[0]).as_uri())), timeout=5000)
    assert not errors, f"console errors: {errors}"
