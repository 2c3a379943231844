"""The course website (``make site``, site/build.py) in a real Chromium, read like a visitor.

The site is built afresh from this tree into a temporary folder (Sphinx, MyST-NB, Furo: about
10 s), served on 127.0.0.1, and every page reachable from the home page (and the search page)
is opened once, about 30 s in all:

0. the checker itself reports a missing picture, a dead link, a missing anchor and a script
   from another host (so the checks below can fail);
1. every page loads (HTTP 200), every file it asks for is there, and it asks nothing of any
   other host; every picture shows (``naturalWidth > 0``); no internal link or ``#anchor``
   is dead;
2. the home page lists every lesson and lab in notebooks/ in course order (lessons by number,
   then labs), then the protocol, the instructors' page and the README;
3. every lesson and lab page shows as many pictures as its stored notebook holds, says how to
   run it (``make lab``), and has a note under each widget saying it is live only in a kernel;
4. the protocol page is the README's section and the instructors' page is INSTRUCTORS.md, as
   they are now;
5. the search box finds the lessons (its index is part of the site).

The tests skip, saying why, without Chromium, Playwright or the site's tools
(``pip install -r site/requirements.txt``, which ``make site`` does); where
CHATLAB_REQUIRE_BROWSER is set (CI) they fail instead. Screenshots of the home page, a lesson
with a picture and a lab land in tests/browser/screenshots/ (``site_*.png``).
"""

from __future__ import annotations

import functools
import importlib.util
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urlsplit

import nbformat
import pytest

from .conftest import NOTEBOOKS, lab_names, lesson_names, missing
from .lab import SCREENSHOTS

REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 240  # about 10 s here; a cold Python on a busy machine takes longer
MAX_PAGES = 200  # the course has about 25; a link loop must not run away
SITE_TOOLS = {"sphinx": "Sphinx", "myst_nb": "MyST-NB", "furo": "Furo"}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

TOC_LINKS = "article .toctree-wrapper a.reference.internal"  # the home page's table of contents
IMAGES_JS = """async () => {
    const images = [...document.images];
    await Promise.all(images.map((image) => image.decode().catch(() => null)));
    return images.map((image) => ({src: image.currentSrc || image.src, width: image.naturalWidth,
                                   output: image.closest('.cell_output') !== null}));
}"""
LINKS_JS = "() => [...document.querySelectorAll('a[href]')].map((a) => a.href)"
TEXTS_JS = """() => ({
    title: document.querySelector('article h1')?.innerText ?? '',
    run_notes: [...document.querySelectorAll('.chatlab-how-to-run')].map((e) => e.innerText),
    widget_notes: [...document.querySelectorAll('.chatlab-widget-note')].map((e) => e.innerText),
})"""
IDS_JS = "() => [...document.querySelectorAll('[id], a[name]')].map((e) => e.id || e.getAttribute('name'))"


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built from this tree by site/build.py, as ``make site`` builds it."""
    for module, name in SITE_TOOLS.items():
        if importlib.util.find_spec(module) is None:
            missing(f"the site test needs {name}: pip install -r site/requirements.txt (make site does)")
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, str(REPO / "site" / "build.py"), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert build.returncode == 0, f"site/build.py failed:\n{build.stdout}\n{build.stderr}"
    # Sphinx prints its warnings (a missing picture or cross-reference, a notebook it cannot
    # read, a page in no table of contents) on stderr: a clean build prints none.
    warnings = [line for line in build.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert not warnings, "Sphinx warned:\n" + "\n".join(warnings)
    return out / "html"


@pytest.fixture(scope="module")
def site_url(site_dir: Path) -> Iterator[str]:
    """The built site, served over HTTP on 127.0.0.1 (a free port)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site_dir)))
    thread = threading.Thread(target=server.serve_forever, name="site-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class Page:
    """What one page showed: its status, pictures, links, anchors and failed requests."""

    url: str
    status: int
    images: list[dict[str, Any]] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    texts: dict[str, Any] = field(default_factory=dict)  # its title and the notes build.py adds
    failed: list[str] = field(default_factory=list)  # same-site requests answered >= 400 or failed
    foreign: list[str] = field(default_factory=list)  # requests to any other host (blocked)


@dataclass(repr=False)
class Crawl:
    base: str
    pages: dict[str, Page]
    files: dict[str, int]  # same-site links to files that are not pages: their HTTP status

    def __repr__(self) -> str:  # short, for pytest's report of a failed assertion
        return f"<Crawl of {self.base}: {len(self.pages)} pages, {len(self.files)} other files>"

    def problems(self) -> list[str]:
        """Everything a visitor would find broken, one line each."""
        found = []
        for url, page in self.pages.items():
            name = url.removeprefix(self.base)
            if page.status != 200:
                found.append(f"{name}: HTTP {page.status}")
            found += [f"{name}: request failed: {what}" for what in page.failed]
            found += [f"{name}: asked another host for {what}" for what in page.foreign]
            found += [f"{name}: picture not shown: {img['src']}" for img in page.images if img["width"] <= 0]
            for link in page.links:
                target, anchor = urldefrag(link)
                if not target.startswith(self.base):
                    continue
                target = page_url(target)
                if target in self.pages:
                    if self.pages[target].status == 200 and anchor and anchor not in self.pages[target].ids:
                        found.append(f"{name}: dead anchor {link.removeprefix(self.base)}")
                elif self.files.get(target, 0) != 200:
                    found.append(f"{name}: dead link {link.removeprefix(self.base)}")
        return found


def page_url(url: str) -> str:
    url = urldefrag(url)[0].split("?")[0]
    return url + "index.html" if url.endswith("/") else url


def crawl(context: Any, base: str, starts: tuple[str, ...] = ("index.html",)) -> Crawl:
    """Open every page reachable from ``starts`` (same site only), one at a time, and record
    what each showed; links to other files are fetched for their status."""
    page = context.new_page()
    events: dict[str, list[str]] = {"failed": [], "foreign": []}

    def only_this_site(route: Any) -> None:
        if route.request.url.startswith(base):
            route.continue_()
        else:  # blocked: it never leaves the machine
            events["foreign"].append(route.request.url)
            route.abort()

    def failed(request: Any) -> None:
        if request.url.startswith(base):
            events["failed"].append(f"{request.url} ({request.failure})")

    def answered(response: Any) -> None:
        if response.status >= 400:
            events["failed"].append(f"{response.url} (HTTP {response.status})")

    page.route("**/*", only_this_site)
    page.on("requestfailed", failed)
    page.on("response", answered)
    pages: dict[str, Page] = {}
    files: dict[str, int] = {}
    queue = [base + start for start in starts]
    try:
        while queue and len(pages) < MAX_PAGES:
            url = queue.pop(0)
            if url in pages or url in files:
                continue
            if not urlsplit(url).path.endswith(".html"):
                files[url] = page.request.get(url).status
                continue
            events["failed"].clear()
            events["foreign"].clear()
            response = page.goto(url, wait_until="load")
            found = Page(url, response.status if response else 0)
            if found.status == 200:
                found.images = page.evaluate(IMAGES_JS)
                found.links = page.evaluate(LINKS_JS)
                found.ids = set(page.evaluate(IDS_JS))
                found.texts = page.evaluate(TEXTS_JS)
            # the page's own status is reported above; the files it asked for are reported here
            found.failed = [f for f in events["failed"] if not f.startswith(url + " ")]
            found.foreign = list(events["foreign"])
            pages[url] = found
            queue += [page_url(link) for link in found.links if link.startswith(base)]
    finally:
        page.close()
    assert len(pages) < MAX_PAGES, f"more than {MAX_PAGES} pages: a link loop?"
    return Crawl(base, pages, files)


@pytest.fixture(scope="module")
def site(chromium: Any, site_url: str) -> Crawl:
    # the search page is reached by the search box (a form), not by a link
    return crawl(chromium, site_url, ("index.html", "search.html"))


def stored(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def page_of(notebook_name: str) -> str:
    return notebook_name.removesuffix(".ipynb") + ".html"


def number(name: str) -> int:
    """A lesson's or lab's number: "10_..." is 10, "labs/lab2_..." is 2."""
    return int(re.search(r"(\d+)_", name).group(1))


def pictures_stored(notebook: nbformat.NotebookNode) -> int:
    return sum(
        1
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {}) or "image/jpeg" in output.get("data", {})
    )


def widget_cells(notebook: nbformat.NotebookNode) -> int:
    return sum(
        1
        for cell in notebook.cells
        if cell.cell_type == "code" and any(WIDGET_VIEW in output.get("data", {}) for output in cell.outputs)
    )


def screenshot(context: Any, url: str, name: str, selector: str | None = None) -> Path:
    """A screenshot of ``url`` (scrolled to the first ``selector`` if given) in
    tests/browser/screenshots/."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page = context.new_page()
    try:
        page.goto(url, wait_until="load")
        if selector:
            target = page.locator(selector).first
            target.scroll_into_view_if_needed()
            target.evaluate("(element) => element.scrollIntoView({block: 'center'})")
        page.screenshot(path=str(path))
    finally:
        page.close()
    return path


# ---- 0: the checker can fail ----------------------------------------------------------------

BROKEN_PAGE = """<!doctype html><html><head><title>broken</title>
<script src="https://cdn.example.invalid/theme.js"></script></head><body>
<h1 id="top">A broken page</h1>
<img src="missing.png" alt="a picture that is not there">
<img src="empty.png" alt="a picture that is no picture">
<a href="nowhere.html">a page that is not there</a>
<a href="index.html#no-such-anchor">an anchor that is not there</a>
<a href="index.html#top">a good anchor</a>
<a href="notes.txt">a file that is not there</a>
</body></html>
"""


def test_checker_sees_what_is_broken(chromium, tmp_path):
    (tmp_path / "index.html").write_text(BROKEN_PAGE, encoding="utf-8")
    (tmp_path / "empty.png").write_bytes(b"")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, name="site-http-broken", daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        problems = crawl(chromium, base).problems()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    text = "\n".join(problems)
    assert "asked another host for https://cdn.example.invalid/theme.js" in text, text
    assert "picture not shown: " + base + "missing.png" in text, text
    assert "picture not shown: " + base + "empty.png" in text, text
    assert "request failed: " + base + "missing.png (HTTP 404)" in text, text
    assert "nowhere.html: HTTP 404" in text, text
    assert "dead anchor index.html#no-such-anchor" in text, text
    assert "dead link notes.txt" in text, text
    assert "#top" not in text, text


# ---- 1-4: the course website ----------------------------------------------------------------


def test_every_page_loads_shows_its_pictures_and_has_no_dead_link(site):
    problems = site.problems()
    assert not problems, f"{len(problems)} problems on the site:\n" + "\n".join(problems)
    pictures = sum(len(page.images) for page in site.pages.values())
    print(f"site: {len(site.pages)} pages, {pictures} pictures shown, {len(site.files)} other files")
    assert pictures >= sum(pictures_stored(stored(name)) for name in lesson_names() + lab_names())


def test_home_page_lists_the_course_in_order(chromium, site):
    page = chromium.new_page()
    try:
        page.goto(site.base + "index.html", wait_until="load")
        listed = page.eval_on_selector_all(TOC_LINKS, "(links) => links.map((a) => a.getAttribute('href'))")
    finally:
        page.close()
    course = [page_of(name) for name in sorted(lesson_names(), key=number) + sorted(lab_names(), key=number)]
    assert lesson_names() and lab_names(), "no lessons or labs found in notebooks/"
    assert listed == [*course, "protocol.html", "instructors.html", "readme.html"]
    screenshot(chromium, site.base + "index.html", "site_home")


@pytest.mark.parametrize("name", lesson_names() + lab_names())
def test_lesson_page_shows_the_stored_notebook(name, site):
    url = site.base + page_of(name)
    assert url in site.pages, f"{page_of(name)} is not reachable from the home page"
    notebook = stored(name)
    shown = [image for image in site.pages[url].images if image["output"]]
    assert len(shown) == pictures_stored(notebook), "pictures on the page vs outputs in the notebook"
    assert all(image["width"] > 0 for image in shown)
    texts = site.pages[url].texts
    assert len(texts["run_notes"]) == 1, "the page says how to run it, once"
    assert "make lab" in texts["run_notes"][0] and f"notebooks/{name}" in texts["run_notes"][0]
    assert len(texts["widget_notes"]) == widget_cells(notebook), "a note under each widget"
    assert all("live only in a running kernel" in note for note in texts["widget_notes"])
    markdown = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    heading = re.search(r"^# (.+)$", outside_fences(markdown), re.M)
    assert heading, f"{name} has no '# title' heading"
    assert texts["title"].rstrip("#¶ \n") == heading.group(1).replace("`", "").strip()


def test_screenshots_of_a_lesson_with_a_picture_and_of_a_lab(chromium, site):
    with_picture = next(name for name in lesson_names() if pictures_stored(stored(name)))
    lab = lab_names()[0]
    with_widget = next((name for name in lesson_names() if widget_cells(stored(name))), None)
    paths = [
        screenshot(chromium, site.base + page_of(with_picture), "site_lesson_picture", ".cell_output img"),
        screenshot(chromium, site.base + page_of(lab), "site_lab", ".chatlab-how-to-run"),
    ]
    if with_widget:
        url = site.base + page_of(with_widget)
        paths.append(screenshot(chromium, url, "site_lesson_widget", ".chatlab-widget-note"))
    assert all(path.stat().st_size > 0 for path in paths)


def outside_fences(markdown: str) -> str:
    return re.sub(r"^```.*?^```[^\n]*$", "", markdown, flags=re.S | re.M)


def section_of(markdown: str, word: str) -> str:
    """The first "## ..." section whose heading has ``word`` in it."""
    match = re.search(rf"^## [^\n]*{word}[^\n]*\n(.*?)(?=^## |\Z)", markdown, re.S | re.M | re.I)
    assert match, f"README.md has no '## ...{word}...' section"
    return match.group(1)


def test_protocol_and_instructors_pages_follow_the_markdown(chromium, site):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    protocol = section_of(readme, "protocol")
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", protocol, re.S | re.M)
    instructors = (REPO / "INSTRUCTORS.md").read_text(encoding="utf-8")
    page = chromium.new_page()
    try:
        page.goto(site.base + "protocol.html", wait_until="load")
        assert "protocol" in page.locator("article h1").first.inner_text().lower()
        shown = page.locator("article pre").all_inner_texts()
        assert blocks and [block.rstrip("\n") for block in blocks] == [text.rstrip("\n") for text in shown]
        page.goto(site.base + "instructors.html", wait_until="load")
        first_heading = re.search(r"^# (.+)$", instructors, re.M).group(1)
        assert page.locator("article h1").first.inner_text().rstrip("#¶ \n") == first_heading.strip()
        sections = [line for line in outside_fences(instructors).splitlines() if line.startswith("## ")]
        assert page.locator("article h2").count() == len(sections)
    finally:
        page.close()


def test_search_finds_the_lessons(chromium, site):
    """The search box works offline: its index is part of the site."""
    page = chromium.new_page()
    try:
        page.goto(site.base + "search.html?q=socket", wait_until="load")
        results = page.locator("#search-results ul.search li a")
        results.first.wait_for()
        found = results.evaluate_all("(links) => links.map((a) => a.getAttribute('href'))")
    finally:
        page.close()
    assert any(href.startswith(page_of(lesson_names()[0])) for href in found), found
