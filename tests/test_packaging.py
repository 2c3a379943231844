"""The set-up files agree with each other: conda users get what pip users get."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pip_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    (dev,) = extras["dev"]
    wanted = re.fullmatch(r"chatlab\[(.*)\]", dev).group(1).split(",")
    return {requirement for extra in wanted for requirement in extras[extra]}


def conda_requirements() -> set[str]:
    """The conda dependencies, without python and pip, plus what the pip: block installs from
    PyPI (packages conda-forge does not have), without chatlab itself."""
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = lines.index("dependencies:")
    found = set()
    for line in lines[start + 1:]:
        match = re.fullmatch(r"  - (\S+)", line) or re.fullmatch(r"      - ([A-Za-z]\S+)", line)
        if match and not re.match(r"(python|pip)\b", match.group(1)):
            found.add(match.group(1))
    return found


def test_dev_extra_covers_the_lessons_and_the_tests():
    names = {re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in pip_requirements()}
    assert {"jupyterlab", "ipywidgets", "matplotlib", "pytest", "nbval", "hypothesis", "playwright"} <= names


def test_environment_yml_lists_the_same_requirements_as_the_dev_extra():
    assert conda_requirements() == pip_requirements()


def test_environment_yml_installs_chatlab_itself_and_the_same_python():
    text = (ROOT / "environment.yml").read_text()
    assert "      - -e ." in text
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f"  - python{requires}" in text


def test_console_scripts_point_at_the_cli_mains():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"chatlab-server": "chatlab.server:main", "chatlab-client": "chatlab.client:main"}


def test_constraints_pin_every_requirement_to_a_version_it_allows():
    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    for requirement in map(Requirement, pip_requirements()):
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in constraints.txt (run `make constraints`)"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} breaks {requirement}"


def test_every_package_of_chatlab_goes_into_the_wheel():
    """setuptools packages exactly what pyproject.toml lists: a sub-package left out is missing
    from a normal (non-editable) install, though every editable install still finds it."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "chatlab").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert "chatlab.servers" in found and "chatlab.grade" in found
    assert listed == found
