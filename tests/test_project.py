"""The house rules that a refactor could quietly break: layering, listed dependencies, the lock file."""
from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("models", "utils", "pages", "benchmarks")
TOP_FILES = ("app.py", "cli.py")
FIRST_PARTY = {"models", "utils", "pages", "app", "cli", "benchmarks", "tests"}


def _source_files() -> list[Path]:
    files = [ROOT / name for name in TOP_FILES]
    for folder in SOURCE_DIRS:
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def _imports(path: Path) -> set[str]:
    """Every module an import statement names, at any depth (lazy imports count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[<>=!~\[; ]", line)[0].lower().replace("_", "-"))
    return names


@pytest.mark.parametrize("package,forbidden", [
    ("models", ("utils", "pages", "app", "cli")),
    ("utils", ("pages", "app", "cli")),
])
def test_layers_import_only_downwards(package, forbidden):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            if name.split(".")[0] in forbidden:
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, offenders


def test_contract_imports_nothing_from_the_project():
    names = _imports(ROOT / "models" / "contract.py")
    assert not {n for n in names if n.split(".")[0] in FIRST_PARTY}


def test_pages_never_import_torch_or_an_adapter():
    adapters = {p.stem for p in (ROOT / "models").glob("*.py")} - {"contract", "registry", "base", "__init__"}
    offenders = []
    for path in [ROOT / "app.py", *sorted((ROOT / "pages").rglob("*.py"))]:
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] in ("torch", "transformers") or (parts[0] == "models" and len(parts) > 1 and parts[1] in adapters):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, offenders


def test_every_imported_package_is_a_listed_runtime_requirement():
    listed = _requirement_names(ROOT / "requirements.txt")
    # Benchmarks are run by developers: they may also use the dev tools (bench_ui.py drives a browser).
    for_benchmarks = listed | _requirement_names(ROOT / "requirements-dev.txt")
    distributions = packages_distributions()
    stdlib = sys.stdlib_module_names
    missing = set()
    for path in _source_files():
        allowed = for_benchmarks if path.is_relative_to(ROOT / "benchmarks") else listed
        for name in _imports(path):
            top = name.split(".")[0]
            if top in stdlib or top in FIRST_PARTY or top == "__future__":
                continue
            dists = {d.lower().replace("_", "-") for d in distributions.get(top, [top])}
            if not dists & allowed:
                missing.add(f"{top} ({path.relative_to(ROOT)})")
    assert not missing, f"imported but not in requirements.txt: {sorted(missing)}"


def test_the_lock_pins_every_requirement():
    locked = {}
    for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            locked[name.strip().lower().replace("_", "-")] = version.strip()
    wanted = _requirement_names(ROOT / "requirements.txt") | _requirement_names(ROOT / "requirements-dev.txt")
    assert not wanted - set(locked), f"run `make lock`: not pinned: {sorted(wanted - set(locked))}"
    assert locked["torch"] == "2.14.1" and locked["torchvision"] == "0.29.1"
