"""Build the course website from the stored notebooks: ``python site/build.py [--out DIR]``.

The site is made of what the repository holds at build time, nothing else:

- every lesson (``notebooks/NN_*.ipynb``) and lab (``notebooks/labs/labN_*.ipynb``) that exists,
  in course order (lessons by number, then labs by number), rendered with their stored outputs
  and pictures; nothing is executed;
- the README's protocol section, the whole README, and INSTRUCTORS.md, read now (so the site
  follows their edits).

It writes Sphinx sources into ``DIR/src`` (copies of the notebooks with two kinds of added
note: how to run this page, and, under each widget, that widgets live only in a kernel), then
runs Sphinx with MyST-NB and the Furo theme (``site/conf.py``) into ``DIR/html``. Links
between the pages are rewritten to point at the site's pages; a link to a repository file
that has no page becomes plain text, so the site has no dead internal link. Sources are
rewritten only when they change, so a second build is incremental.

Nothing is downloaded: Sphinx, MyST-NB and Furo come from site/requirements.txt (PyPI), and
the pages load no script, font or style from another host.
"""

from __future__ import annotations

import argparse
import posixpath
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / "site"
NOTEBOOKS = REPO / "notebooks"
DEFAULT_OUT = REPO / "build" / "site"

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# Pages made from the two Markdown files, by their names in the site's sources.
PROTOCOL_PAGE = "protocol.md"
README_PAGE = "readme.md"
INSTRUCTORS_PAGE = "instructors.md"
FILES = "_files"  # pictures the Markdown files show, copied from the repository
PROTOCOL_WORD = "protocol"  # the README's section on it is its first "## ..." heading with this word
# Marks the added notes, so that a test can find them in the pages.
RUN_NOTE_CLASS = "chatlab-how-to-run"
WIDGET_NOTE_CLASS = "chatlab-widget-note"


@dataclass(frozen=True)
class Notebook:
    """One lesson or lab: where it is in the repository and where its page's source goes."""

    path: Path  # in the repository
    kind: str  # "lesson" or "lab"
    number: int

    @property
    def repo_name(self) -> str:
        return self.path.relative_to(REPO).as_posix()  # notebooks/labs/lab1_....ipynb

    @property
    def src_name(self) -> str:
        return self.path.relative_to(NOTEBOOKS).as_posix()  # labs/lab1_....ipynb


def course_notebooks(notebooks: Path = NOTEBOOKS) -> list[Notebook]:
    """The lessons by their number, then the labs by theirs: the order of the course."""
    lessons = []
    for path in notebooks.glob("[0-9]*_*.ipynb"):
        number = re.match(r"(\d+)_", path.name)
        if number:
            lessons.append(Notebook(path, "lesson", int(number.group(1))))
    labs = []
    for path in (notebooks / "labs").glob("lab[0-9]*_*.ipynb"):
        number = re.match(r"lab(\d+)_", path.name)
        if number:
            labs.append(Notebook(path, "lab", int(number.group(1))))
    by_order = lambda notebook: (notebook.number, notebook.path.name)  # noqa: E731
    return sorted(lessons, key=by_order) + sorted(labs, key=by_order)


# ---- Markdown: sections, slugs and links ----------------------------------------------------

FENCE = re.compile(r"^\s*(```|~~~)")


def headings(markdown: str) -> list[tuple[int, int, str]]:
    """(line index, level, title) of every ATX heading outside fenced code."""
    found, in_fence = [], False
    for index, line in enumerate(markdown.splitlines()):
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (match := re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)):
            found.append((index, len(match.group(1)), match.group(2)))
    return found


def protocol_section(readme: str) -> tuple[str, int, int]:
    """The README's section on the protocol (from its heading to the next heading of its level
    or higher), with its first and past-last line index."""
    lines = readme.splitlines()
    marks = headings(readme)
    for position, (index, level, text) in enumerate(marks):
        if level == 2 and PROTOCOL_WORD in text.lower():
            end = next((i for i, lvl, _ in marks[position + 1 :] if lvl <= level), len(lines))
            return "\n".join(lines[index:end]), index, end
    raise SystemExit(f"site: README.md has no '## ...' section about the {PROTOCOL_WORD}")


def slug(title: str) -> str:
    """A heading's anchor as GitHub and MyST make it."""
    text = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return text.replace(" ", "-")


def first_paragraph(markdown: str) -> str:
    """The first paragraph after the top heading."""
    paragraphs = [p for p in re.split(r"\n\s*\n", markdown) if p.strip()]
    return next(p for p in paragraphs if not p.lstrip().startswith("#")).strip()


LINK = r"(?P<bang>!?)\[(?P<text>(?:[^\[\]]|\[[^\]]*\])*)\]\((?P<link>[^()\s]+)(?P<title>\s+\"[^\"]*\")?\)"
# A `code span` or a [link](target), whichever starts first: a link's text may hold code.
CODE_OR_LINK = re.compile(r"(?P<code>`+)(?P<span>.*?[^`])(?P=code)(?!`)|" + LINK)


class Links:
    """Where a link written in the repository (relative to its file) leads on the site."""

    def __init__(self, notebooks: list[Notebook], protocol_anchors: list[str]) -> None:
        self.pages = {nb.repo_name: nb.src_name for nb in notebooks}
        self.pages["INSTRUCTORS.md"] = INSTRUCTORS_PAGE
        self.pages["README.md"] = README_PAGE
        self.protocol_anchors = protocol_anchors  # its section's heading first, then those inside
        # a lesson's or lab's names in code spans: "01_sockets", "labs/lab1_...", "notebooks/..."
        self.named = {}
        for nb in notebooks:
            stem = nb.src_name.removesuffix(".ipynb")
            for name in (stem, posixpath.basename(stem), "notebooks/" + stem):
                self.named[name] = nb.src_name
        self.files: dict[str, Path] = {}  # pictures to copy: path under src/ -> repository file

    def target(self, repo_file: str, link: str, page: str) -> str | None:
        """The link to write in the site's source ``page`` (a path under src/), or None where
        the repository file has no page."""
        if re.match(r"^[a-z][a-z0-9+.-]*:", link, re.I):  # https:, mailto:
            return link
        path, _, anchor = link.partition("#")
        resolved = repo_file
        if path:
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(repo_file), path))
        if resolved == "README.md" and anchor in self.protocol_anchors:
            site_path = PROTOCOL_PAGE  # the README's protocol section has a page of its own
            anchor = "" if anchor == self.protocol_anchors[0] else anchor
        elif resolved in self.pages:
            site_path = self.pages[resolved]
        else:
            return None
        relative = posixpath.relpath(site_path, posixpath.dirname(page) or ".")
        if relative == posixpath.basename(page) and anchor:
            return f"#{anchor}"
        return relative + (f"#{anchor}" if anchor else "")

    def picture(self, repo_file: str, link: str, page: str) -> str:
        """A picture from the repository is copied into the site's ``_files/`` (same path as
        in the repository); any other link is left as it is (Sphinx warns if it is missing)."""
        if re.match(r"^[a-z][a-z0-9+.-]*:", link, re.I):
            return link
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(repo_file), link))
        if resolved.startswith("../") or not (REPO / resolved).is_file():
            return link
        copy = f"{FILES}/{resolved}"
        self.files[copy] = REPO / resolved
        return posixpath.relpath(copy, posixpath.dirname(page) or ".")

    def rewrite(self, markdown: str, repo_file: str, page: str) -> str:
        """Rewrite every Markdown link outside code blocks for ``page``'s place on the site, and
        make a `code span` naming a lesson or lab (`01_sockets`, `labs/lab1_....ipynb`) a link
        to its page."""

        def one(match: re.Match[str]) -> str:
            if match.group("code"):
                src_name = self.named.get(match.group("span").strip().removesuffix(".ipynb"))
                if src_name is None:
                    return match.group(0)
                return f"[{match.group(0)}]({posixpath.relpath(src_name, posixpath.dirname(page) or '.')})"
            text, link, title = match.group("text"), match.group("link"), match.group("title") or ""
            if match.group("bang"):
                return f"![{text}]({self.picture(repo_file, link, page)}{title})"
            target = self.target(repo_file, link, page)
            return text if target is None else f"[{text}]({target}{title})"

        return outside_fences(markdown, lambda text: CODE_OR_LINK.sub(one, text))


def outside_fences(markdown: str, change: Callable[[str], str]) -> str:
    """Apply ``change`` to the Markdown outside fenced code blocks."""
    parts, block, in_fence = [], [], False
    for line in markdown.splitlines(keepends=True):
        if FENCE.match(line):
            if not in_fence:
                parts.append(change("".join(block)))
                block = []
            in_fence = not in_fence
            block.append(line)
            if not in_fence:
                parts.append("".join(block))
                block = []
            continue
        block.append(line)
    parts.append("".join(block) if in_fence else change("".join(block)))
    return "".join(parts)


# ---- How to run a page ----------------------------------------------------------------------


def ways_to_run(readme_anchors: set[str]) -> list[str]:
    """The ways this repository offers to run the notebooks, as Markdown (links written from the
    site's root): the ones present now."""
    how = "readme.md#two-commands" if "two-commands" in readme_anchors else "readme.md"
    ways = [
        "**On your computer** (Python 3.11+ and `make`): `make lab` in the repository creates "
        "`.venv`, installs chatlab with everything and opens the lessons in JupyterLab "
        f"(see [the README]({how})).",
    ]
    if (REPO / ".devcontainer").exists():
        ways.append(
            "**In a container**: open the repository in its Dev Container (VS Code) or in "
            "GitHub Codespaces; it comes with everything installed."
        )
    if (REPO / "binder").exists():
        ways.append(
            "**On Binder**: launch the repository on mybinder.org (its `binder/` folder sets "
            "it up); nothing to install, but the session ends after some idle minutes."
        )
    return ways


def relative_links(markdown: str, page: str) -> str:
    """Links in the notes are written from the site's root: make them relative to ``page``."""
    depth = page.count("/")
    if not depth:
        return markdown
    return re.sub(r"\]\((?![a-z]+:|#)", "](" + "../" * depth, markdown)


def run_note(notebook: Notebook, ways: list[str]) -> str:
    where = f"`notebooks/{notebook.src_name}`"
    extra = (
        f" The lab's server file, `lab{notebook.number}_server.py`, is next to it in `notebooks/labs/`."
        if notebook.kind == "lab"
        else ""
    )
    bullets = "\n".join(f"- {way}" for way in ways)
    text = (
        f":::{{admonition}} Run this {notebook.kind}\n:class: tip {RUN_NOTE_CLASS}\n\n"
        f"This page shows {where} as it is stored: its outputs and pictures come from a real "
        f"run, and nothing runs in your browser. To run it yourself, open it in JupyterLab "
        f"and run the cells in order (Run > Run All Cells works too).{extra}\n\n{bullets}\n:::\n"
    )
    return relative_links(text, notebook.src_name)


WIDGET_NOTE = (
    f":::{{admonition}} A widget: live only in a running kernel\n:class: note {WIDGET_NOTE_CLASS}\n\n"
    "The output above is a widget (ipywidgets). Widgets live only in a running kernel: this page "
    "shows its text form. Run the notebook (see *Run this* at the top) to use it.\n:::\n"
)


def site_notebook(notebook: Notebook, links: Links, ways: list[str]) -> nbformat.NotebookNode:
    """The stored notebook with its links rewritten, a note on how to run it after the title
    cell, and a note after each cell that shows a widget. Outputs stay as stored."""
    nb = nbformat.read(notebook.path, as_version=4)
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = links.rewrite(cell.source, notebook.repo_name, notebook.src_name)
        cells.append(cell)
        if cell.cell_type == "code" and any(WIDGET_VIEW in out.get("data", {}) for out in cell.outputs):
            note_id = f"{cell.get('id', 'cell')}-widget-note"
            cells.append(nbformat.v4.new_markdown_cell(WIDGET_NOTE, id=note_id))
    title_at = next((i for i, c in enumerate(cells) if c.cell_type == "markdown"), -1)
    note = nbformat.v4.new_markdown_cell(run_note(notebook, ways), id="chatlab-how-to-run")
    cells.insert(title_at + 1, note)
    nb.cells = cells
    return nb


# ---- The pages made from README.md and INSTRUCTORS.md ---------------------------------------


def home_page(readme: str, notebooks: list[Notebook], ways: list[str]) -> str:
    intro = first_paragraph(readme)
    bullets = "\n".join(f"- {way}" for way in ways)
    lessons = "\n".join(nb.src_name.removesuffix(".ipynb") for nb in notebooks if nb.kind == "lesson")
    labs = "\n".join(nb.src_name.removesuffix(".ipynb") for nb in notebooks if nb.kind == "lab")
    count = {kind: sum(nb.kind == kind for nb in notebooks) for kind in ("lesson", "lab")}
    counts = f"{count['lesson']} lessons and {count['lab']} labs"
    return f"""# chatlab: sockets and threads, one chat at a time

{intro}

The course has {counts}, listed below in the order to take them. Each page is a Jupyter
notebook as it is stored in the repository, with the outputs and pictures of a real run.
The server and clients speak [a small line protocol](protocol.md); teachers start with
[the instructors' guide](instructors.md).

## How to run the lessons

These pages are for reading: nothing runs in your browser. To run a lesson or a lab:

{bullets}

The chat windows and the server dashboard are widgets: they come alive only when their cells
run in a kernel. On these pages each widget shows as its text form, with a note saying so.

```{{toctree}}
:caption: Lessons
:maxdepth: 1
:titlesonly:

{lessons}
```

```{{toctree}}
:caption: Labs
:maxdepth: 1
:titlesonly:

{labs}
```

```{{toctree}}
:caption: Reference
:maxdepth: 1
:titlesonly:

{PROTOCOL_PAGE.removesuffix(".md")}
{INSTRUCTORS_PAGE.removesuffix(".md")}
{README_PAGE.removesuffix(".md")}
```
"""


def demote_to_page(text: str, title: str) -> str:
    """A section as a page of its own: its heading becomes the page's title, the others move up
    as many levels."""
    marks = headings(text)
    shift = marks[0][1] - 1
    lines = text.splitlines()
    for index, _, _ in marks:
        lines[index] = lines[index][shift:]
    lines[marks[0][0]] = f"# {title}"
    return "\n".join(lines) + "\n"


def protocol_page(readme: str, links: Links) -> str:
    text, _, _ = protocol_section(readme)
    body = links.rewrite(text, "README.md", PROTOCOL_PAGE)
    page = demote_to_page(body, headings(text)[0][2])
    title, _, rest = page.partition("\n")
    return f"{title}\n\n*From the README: [the whole README](readme.md).*\n{rest}"


def readme_page(readme: str, links: Links) -> str:
    """The whole README; its protocol section becomes a pointer to the protocol's page."""
    lines = readme.splitlines()
    _, start, end = protocol_section(readme)
    pointer = [lines[start], "", f"The protocol has [a page of its own]({PROTOCOL_PAGE}).", ""]
    text = "\n".join(lines[:start] + pointer + lines[end:]) + "\n"
    marks = headings(text)
    text_lines = text.splitlines()
    text_lines[marks[0][0]] = "# The README"
    return links.rewrite("\n".join(text_lines) + "\n", "README.md", README_PAGE)


def instructors_page(instructors: str, links: Links) -> str:
    return links.rewrite(instructors, "INSTRUCTORS.md", INSTRUCTORS_PAGE)


# ---- Writing the sources and running Sphinx -------------------------------------------------


def write_if_changed(path: Path, text: str) -> None:
    """Keep a file's time when its text is the same, so Sphinx rebuilds only what changed."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_sources(src: Path) -> list[str]:
    """Write the site's sources into ``src``; return the names written, and remove any other."""
    notebooks = course_notebooks()
    if not notebooks:
        raise SystemExit("site: no lesson or lab found in notebooks/")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    instructors = (REPO / "INSTRUCTORS.md").read_text(encoding="utf-8")
    protocol, _, _ = protocol_section(readme)
    links = Links(notebooks, [slug(title) for _, _, title in headings(protocol)])
    ways = ways_to_run({slug(title) for _, _, title in headings(readme)})
    pages = {
        "index.md": home_page(readme, notebooks, ways),
        PROTOCOL_PAGE: protocol_page(readme, links),
        README_PAGE: readme_page(readme, links),
        INSTRUCTORS_PAGE: instructors_page(instructors, links),
    }
    for notebook in notebooks:
        pages[notebook.src_name] = nbformat.writes(site_notebook(notebook, links, ways)) + "\n"
    for name, text in pages.items():
        write_if_changed(src / name, text)
    for name, original in links.files.items():
        if not (src / name).exists() or (src / name).read_bytes() != original.read_bytes():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(original, src / name)
    for old in [p for p in src.rglob("*") if p.is_file()]:
        if old.relative_to(src).as_posix() not in pages.keys() | links.files.keys():
            old.unlink()  # a lesson renumbered or removed since the last build
    return list(pages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="build folder (default: build/site)")
    parser.add_argument("--fresh", action="store_true", help="rebuild every page, not only the changed ones")
    args = parser.parse_args(argv)
    started = time.monotonic()
    out = args.out.resolve()
    pages = write_sources(out / "src")
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-c", str(SITE)]
    command += ["-d", str(out / "doctrees")]
    if args.fresh:
        command.append("-E")
    subprocess.run([*command, str(out / "src"), str(out / "html")], check=True)
    print(f"site: {len(pages)} pages in {out / 'html'} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
