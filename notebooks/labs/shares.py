"""How much of each lab's server the student writes: a measure for instructors (INSTRUCTORS.md).

For lab N, the *code lines* of the reference solution ``solutions/labN_server.py`` (no blank
lines, no comments, no docstrings, each line stripped) are compared with those of a file the
student starts from, with :class:`difflib.SequenceMatcher`. A reference line that the starting
file already holds, in the same order, is given; every other reference line is the student's.
The share is the student's lines over the reference's code lines.

Two starting points are measured: the handed-out ``labN_server.py`` (labs 1-4: the same frame,
so the share counts everything the student has written by the end of lab N), and, for labs
2-4, ``start/labN_server.py`` (the reference of lab N-1 with lab N's rules: what lab N alone
adds). Run ``python shares.py`` in this folder for the table; ``tests/test_labs.py`` keeps the
shares above their targets.
"""

from __future__ import annotations

import ast
import difflib
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
LABS = (1, 2, 3, 4, 5)


def code_lines(source: str) -> list[str]:
    """The lines of ``source`` that are code: stripped, without comments, docstrings or blanks."""
    docstring_lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    docstring_lines.update(range(body[0].lineno, (body[0].end_lineno or 0) + 1))
    comment_at: dict[int, int] = {}  # line number -> column where its comment starts
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comment_at[token.start[0]] = token.start[1]
    lines = []
    for number, line in enumerate(source.splitlines(), start=1):
        if number in docstring_lines:
            continue
        line = line[: comment_at.get(number, len(line))].strip()
        if line:
            lines.append(line)
    return lines


@dataclass(frozen=True)
class Share:
    """What the student writes of one reference, starting from one file."""

    reference_lines: int  # code lines of the reference solution
    written: int  # of those, the lines the starting file does not already hold

    @property
    def share(self) -> float:
        return self.written / self.reference_lines


def measure(start: Path, reference: Path) -> Share:
    """The share of ``reference``'s code lines that ``start`` does not already contain."""
    given, wanted = code_lines(start.read_text("utf-8")), code_lines(reference.read_text("utf-8"))
    matcher = difflib.SequenceMatcher(None, given, wanted, autojunk=False)
    kept = sum(block.size for block in matcher.get_matching_blocks())
    return Share(len(wanted), len(wanted) - kept)


def handed_out(number: int) -> Share:
    return measure(HERE / f"lab{number}_server.py", HERE / "solutions" / f"lab{number}_server.py")


def from_start_file(number: int) -> Share | None:
    path = HERE / "start" / f"lab{number}_server.py"
    return measure(path, HERE / "solutions" / f"lab{number}_server.py") if path.exists() else None


def main() -> None:
    print("lab  reference code lines  written from labN_server.py  written from start/labN_server.py")
    for number in LABS:
        if not (HERE / "solutions" / f"lab{number}_server.py").exists():
            print(f"{number:3}  (no reference solution here: a student's handout leaves them out)")
            continue
        ours = handed_out(number)
        start = from_start_file(number)
        later = f"{start.written:4} ({start.share:.0%})" if start else "   -"
        print(f"{number:3}  {ours.reference_lines:20}  {ours.written:15} ({ours.share:4.0%})        {later}")


if __name__ == "__main__":
    main()
