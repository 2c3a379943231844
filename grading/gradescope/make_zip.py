"""Build the Gradescope autograder zip: setup.sh and run_autograder at its root, the settings
(chatlab-grade.env, if you wrote one beside them) and the kit in chatlab/ (its package,
pyproject.toml and README.md: what ``pip install`` needs).

    python grading/gradescope/make_zip.py [OUT.zip]      # default: chatlab-gradescope.zip
"""

from __future__ import annotations

import stat
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
KIT = HERE.parent.parent


def add(archive: zipfile.ZipFile, path: Path, name: str) -> None:
    info = zipfile.ZipInfo.from_file(path, name)
    if path.name in ("setup.sh", "run_autograder"):
        info.external_attr = (stat.S_IFREG | 0o755) << 16  # Gradescope runs them
    archive.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "chatlab-gradescope.zip")
    with zipfile.ZipFile(out, "w") as archive:
        for name in ("setup.sh", "run_autograder", "chatlab-grade.env"):
            if (HERE / name).exists():
                add(archive, HERE / name, name)
        for name in ("pyproject.toml", "README.md"):
            add(archive, KIT / name, f"chatlab/{name}")
        for path in sorted((KIT / "chatlab").rglob("*.py")):
            add(archive, path, f"chatlab/{path.relative_to(KIT)}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
