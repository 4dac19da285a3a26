"""The built book as a reader sees it: every page opened from disk in headless Chromium, offline.

For every page in the table of contents: the equations are typeset by the book's own copy of MathJax
(no raw TeX left on the page), every image loaded, the console shows no error, no request leaves the
machine, and a notebook page offers its download, Binder and Colab buttons. On a page with exercises,
a solution dropdown opens on click.

At a desktop width (1280 px) and a phone width (390 px): no display equation, inline formula, table
or figure is wider than the column that holds it, the page never scrolls sideways, and the text in
every figure is at least 9 px tall as shown. On a desktop no printed output is wider than its box (at
most 78 characters a line, 75 inside a solution); on a phone an output may scroll in its own box, as
code does (39 characters fit). At both widths the sidebar toggle opens the table of contents and the
"Contents" button (or the wide window itself) shows the page's outline; every link inside the book
leads to a page and an anchor that exist. The search page, served over HTTP as a web host serves it,
shows its snippets' formulas typeset. A full-page screenshot of every page at both widths lands in
_build/screenshots/.

The test reads the book that `make test` builds first (_build/html; BOOK_HTML names another build).
It needs Debian's Chromium (/usr/bin/chromium, installed by .ci/run) and Playwright's Python package;
without a browser it is skipped, except under CI, where it fails.
"""

import functools
import http.server
import json
import os
import re
import shutil
import struct
import threading
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

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
DESKTOP, PHONE = 1280, 390
WIDTHS = {"desktop": DESKTOP, "phone": PHONE}
SMALLEST_TEXT_PX = 9  # the smallest letters a figure may show, in CSS pixels as displayed
SMALLEST_FONT_KEY = "Smallest font"  # the PNG text chunk in which course_code.plots records it, in points
DROPDOWN = re.compile(r'class="(?=[^"]*\badmonition\b)(?=[^"]*\bdropdown\b)[^"]*"')  # an exercise's solution

# Text outside code that still holds TeX (a backslash command or a dollar sign) was not typeset; a
# `[^label]` is a Markdown footnote without its definition (the build does not warn about those: see
# _config.yml).
UNRENDERED = re.compile(r"\\[A-Za-z]+|\\[()\[\]{},;!]|\$|\[\^[^\]\s]+\]")
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
# What is wider than the column that holds it: a display equation or printed output that scrolls
# sideways in its box, an inline formula past its paragraph's edge, a table or figure wider than its
# parent, and the page itself wider than the window. Display equations and outputs say whether their
# box scrolls (the reader can still reach the end) or cuts them off.
TOO_WIDE = """() => {
  const article = document.querySelector("article.bd-article") || document.body;
  const where = el => {
    const section = el.closest("section[id], div[id]");
    return (section ? section.id + ": " : "") + el.textContent.replace(/\\s+/g, " ").trim().slice(0, 60);
  };
  const wide = el => el.scrollWidth > el.clientWidth + 1 && el.getBoundingClientRect().width > 0;
  const scrolling = el => ["auto", "scroll"].includes(getComputedStyle(el).overflowX);
  const pastParent = el => el.getBoundingClientRect().width > el.parentElement.clientWidth + 1;
  const block = el => el.parentElement.closest("p, li, dd, td, th, div");
  const found = {equations: [], tables: [], figures: [], outputs: [], page: []};
  for (const el of article.querySelectorAll("mjx-container")) {
    if (el.getAttribute("display") === "true") {
      if (wide(el)) found.equations.push({where: where(el), scrolls: scrolling(el)});
    } else if (el.getBoundingClientRect().right > block(el).getBoundingClientRect().right + 1)
      found.equations.push({where: where(el), scrolls: false, inline: true});
  }
  for (const el of article.querySelectorAll("table")) if (pastParent(el)) found.tables.push({where: where(el)});
  for (const el of article.querySelectorAll("img")) if (pastParent(el)) found.figures.push({where: el.getAttribute("src")});
  for (const el of article.querySelectorAll(".cell_output pre"))
    if (wide(el)) found.outputs.push({where: where(el), scrolls: scrolling(el)});
  const root = document.documentElement;
  if (root.scrollWidth > window.innerWidth)
    found.page.push({where: `${root.scrollWidth} px wide in a ${window.innerWidth} px window`});
  return found;
}"""
# The figures the notebooks drew (PNGs under _images/), with the width each is shown at. A figure in
# a closed solution has no width yet: it is taken as wide as the box around it allows.
FIGURES = """() => [...document.querySelectorAll("article.bd-article img")]
  .filter(img => /_images\\/[^/]+\\.png$/.test(img.getAttribute("src")))
  .map(img => {
    let box = img;
    while (box && box.clientWidth === 0) box = box.parentElement;
    const shown = img.getBoundingClientRect().width || Math.min(img.naturalWidth, box.clientWidth);
    return {src: img.src, shown, natural: img.naturalWidth};
  })"""
SIDEBAR_SHOWN = """selector => {
  const el = document.querySelector(selector);
  if (!el) return null;
  const r = el.getBoundingClientRect(), style = getComputedStyle(el);
  return r.width > 0 && r.height > 0 && r.right > 1 && r.left < window.innerWidth - 1
    && style.visibility !== "hidden" && style.display !== "none";
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
    """Open a built page from disk once per width; return the page and the list of errors it reports.

    Errors are what the console reports, uncaught exceptions, resources that failed to load, and any
    request that leaves the machine (refused: the book must work offline). The tests of a page share
    one loaded copy of it at each width.
    """
    opened = {}

    def _open(docname, width=DESKTOP):
        if (docname, width) in opened:
            return opened[docname, width]
        path = page_path(docname)
        assert path.exists(), f"{docname} is in _toc.yml but {path.relative_to(ROOT)} was not built"
        page = browser_context.new_page()
        page.set_viewport_size({"width": width, "height": 900})
        errors = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
        page.on("requestfailed", lambda req: errors.append(f"failed to load {req.url}: {req.failure}"))
        page.route(re.compile(r"^(https?|wss?)://"),
                   lambda route: (errors.append(f"network request: {route.request.url}"), route.abort()))
        page.goto(path.as_uri(), wait_until="load")
        opened[docname, width] = page, errors
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


def png_facts(path: Path) -> tuple[float | None, dict]:
    """A PNG's resolution in dots per inch (its pHYs chunk) and its text chunks."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    dpi, text, at = None, {}, 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        if kind == b"pHYs" and body[8] == 1:  # unit 1: pixels per metre
            dpi = struct.unpack(">I", body[:4])[0] * 0.0254
        elif kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            text[key.decode("latin-1")] = value.decode("latin-1")
        at += 12 + length
    return dpi, text


def tolerated(kind: str, item: dict, width: int) -> bool:
    """What may be wider than its column: on a phone, a printed output that scrolls in its own box
    (a line of 39 characters fills it, so a printed table cannot fit)."""
    return kind == "outputs" and width == PHONE and item["scrolls"]


@pytest.mark.parametrize("width", WIDTHS.values(), ids=WIDTHS.keys())
@pytest.mark.parametrize("docname", PAGES, ids=page_id)
def test_fits_the_column(open_page, docname, width):
    page, _ = open_page(docname, width)
    page.evaluate(TYPESET)  # wait for MathJax: a formula has its width only once typeset
    if width != DESKTOP:
        page.screenshot(path=str(SCREENSHOTS / f"{page_id(docname)}-{width}px.png"), full_page=True)
    too_wide = {}
    for kind, found in page.evaluate(TOO_WIDE).items():
        found = [item for item in found if not tolerated(kind, item, width)]
        if found:
            too_wide[kind] = [item["where"] for item in found]
    assert not too_wide, f"wider than their column at {width} px: {json.dumps(too_wide, ensure_ascii=False)}"


@pytest.mark.parametrize("width", WIDTHS.values(), ids=WIDTHS.keys())
@pytest.mark.parametrize("docname", PAGES, ids=page_id)
def test_figure_text_is_legible(open_page, docname, width):
    """Letters at least SMALLEST_TEXT_PX tall as shown: a figure's smallest font (which course_code.plots
    records in the PNG) times its dpi, scaled by the width it is shown at. On a phone the column is 358 px
    wide, so a figure drawn wider than that is shown smaller than it was drawn."""
    page, _ = open_page(docname, width)
    small = []
    for figure in page.evaluate(FIGURES):
        path = Path(url2pathname(urlparse(figure["src"]).path))
        dpi, text = png_facts(path)
        name = path.name[:12]
        if dpi is None or SMALLEST_FONT_KEY not in text:
            small.append(f"{name}: no record of its smallest font (draw it with the course's style, course_code.plots)")
            continue
        shown = float(text[SMALLEST_FONT_KEY]) / 72 * dpi * figure["shown"] / figure["natural"]
        if shown < SMALLEST_TEXT_PX:
            small.append(f"{name}: {shown:.1f} px text ({figure['natural']} px drawn, shown {figure['shown']:.0f} px wide)")
    assert not small, f"figures whose text is smaller than {SMALLEST_TEXT_PX} px at {width} px: {small}"


@pytest.mark.parametrize("width", WIDTHS.values(), ids=WIDTHS.keys())
def test_sidebar_buttons_open_the_contents(browser_context, width):
    """The sidebar toggle shows the table of contents; the "Contents" button, the page's outline."""
    page = browser_context.new_page()
    page.set_viewport_size({"width": width, "height": 900})
    try:
        page.goto(page_path(next(d for d in PAGES if CHAPTER.match(d))).as_uri(), wait_until="load")
        for toggle, sidebar in ((".primary-toggle", ".bd-sidebar-primary"), (".secondary-toggle", ".bd-sidebar-secondary")):
            shown = page.evaluate(SIDEBAR_SHOWN, sidebar)
            assert shown is not None, f"the page has no {sidebar}"
            button = page.locator(toggle).locator("visible=true")
            if button.count() == 0:  # a wide window shows the sidebar without a button
                assert shown, f"{sidebar} is hidden at {width} px and no button shows it"
                continue
            for _ in range(2 if shown else 1):  # when shown already, it must hide and come back
                button.first.click()
                page.wait_for_timeout(400)  # the sidebars slide in
                now = page.evaluate(SIDEBAR_SHOWN, sidebar)
                assert now != shown, f"{toggle} did not {'hide' if shown else 'show'} {sidebar} at {width} px"
                shown = now
            page.keyboard.press("Escape")
            if page.evaluate(SIDEBAR_SHOWN, sidebar) and width == PHONE:
                page.mouse.click(width - 5, 450)  # the drawer closes on a click beside it
            assert page.locator(f"{sidebar} a[href]").count() > 0, f"{sidebar} holds no links"
    finally:
        page.close()


def test_internal_links_resolve(open_page):
    """Every link from one page of the book to another names a built file and an anchor on it."""
    broken = []
    for docname in PAGES:
        page, _ = open_page(docname)
        for href in set(page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)")):
            url = urlparse(href)
            if url.scheme != "file":
                continue
            target = Path(url2pathname(url.path))
            if not target.exists():
                broken.append(f"{docname} -> {href}")
            elif url.fragment and target.suffix == ".html" and f'id="{url.fragment}"' not in target.read_text():
                broken.append(f"{docname} -> {target.name}#{url.fragment}")
    assert not broken, f"links to missing pages or anchors: {broken}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def served_book():
    """The built book served over HTTP on this machine, as a web host serves it: the search page fetches
    each result's page to quote it, which a browser refuses to do from file://."""
    if not (HTML / "search.html").exists():
        pytest.skip(f"the book is not built ({HTML / 'search.html'} is missing)")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(HTML)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


SNIPPETS = """() => [...document.querySelectorAll("#search-results li")].map(li => {
  const copy = li.cloneNode(true);
  copy.querySelectorAll("mjx-container").forEach(math => math.remove());
  return {text: copy.textContent, formulas: li.querySelectorAll("mjx-container").length};
})"""


def test_search_snippets_show_typeset_math(browser_context, served_book):
    """The snippet under each search result quotes the page: its formulas are typeset, not TeX."""
    page = browser_context.new_page()
    try:
        page.route(re.compile(r"^(https?|wss?)://"),
                   lambda route: route.continue_() if route.request.url.startswith(served_book) else route.abort())
        page.goto(f"{served_book}/search.html?q=ELBO", wait_until="load")
        page.wait_for_function("document.querySelectorAll('#search-results p.context').length >= 5", timeout=20000)
        page.wait_for_timeout(500)  # the last pages' snippets
        snippets = page.evaluate(SNIPPETS)
    finally:
        page.close()
    raw = [s["text"][:120] for s in snippets if UNRENDERED.search(s["text"])]
    assert not raw, f"search snippets showing TeX: {raw}"
    assert sum(s["formulas"] for s in snippets) > 0, "no snippet shows a typeset formula"
