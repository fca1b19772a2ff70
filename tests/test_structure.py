"""Structure the rest relies on: three wings whose imports point one way, settings read in one place, the engine
Dagster-free, run splitting in one function, docs whose links resolve."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from random_diffusion_dagster.defs.run_ranges import partition_ranges


def test_importing_the_engine_imports_no_dagster():
    code = (
        "import sys, pkgutil, importlib, random_diffusion_dagster.engine as e;"
        "[importlib.import_module(f'random_diffusion_dagster.engine.{m.name}')"
        " for m in pkgutil.iter_modules(e.__path__)];"
        "print(sorted(m for m in sys.modules if m.split('.')[0].startswith('dagster')))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


KEYS = [f"k{i}" for i in range(10)]


def _spans(ranges):
    return [(r.first, r.last, len(r.keys)) for r in ranges]


def test_ranges_hold_only_wanted_keys_unless_gaps_may_be_bridged():
    wanted = ["k1", "k2", "k5", "k9"]
    assert _spans(partition_ranges(KEYS, wanted, 32)) == [("k1", "k2", 2), ("k5", "k5", 1), ("k9", "k9", 1)]
    assert _spans(partition_ranges(KEYS, wanted, 32, bridge_gaps=True)) == [("k1", "k9", 9)]
    assert _spans(partition_ranges(KEYS, wanted, 4, bridge_gaps=True)) == [
        ("k1", "k2", 2),
        ("k5", "k5", 1),
        ("k9", "k9", 1),
    ]


def test_ranges_respect_the_per_run_limit():
    assert _spans(partition_ranges(KEYS, KEYS, 4)) == [("k0", "k3", 4), ("k4", "k7", 4), ("k8", "k9", 2)]
    assert partition_ranges(KEYS, [], 4) == []
    with pytest.raises(ValueError, match="at least 1"):
        partition_ranges(KEYS, KEYS, -1)


# The package's import graph, read from the sources: module -> the package modules it imports (at any depth of
# the file, lazy imports included), and each imported name.
PACKAGE = "random_diffusion_dagster"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def _imports(module: str) -> list[tuple[str, str | None]]:
    """(imported package module, imported name or None) for each import in `module`."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.startswith(PACKAGE)]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if not base.startswith(PACKAGE):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule, None) if submodule in MODULES else (base, alias.name))
    return found


GRAPH = {module: {target for target, _ in _imports(module) if target in MODULES} for module in MODULES}


def _wing(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_the_package_has_no_import_circle():
    def cycle_from(start: str, path: list[str], seen: set[str]) -> list[str] | None:
        for target in sorted(GRAPH[path[-1]]):
            if target == start:
                return [*path, target]
            if target not in seen:
                seen.add(target)
                found = cycle_from(start, [*path, target], seen)
                if found:
                    return found
        return None

    # A package's __init__ importing its own modules is Python's, not a circle between modules.
    circles = [cycle_from(m, [m], set()) for m in MODULES]
    circles = [c for c in circles if c and not any(MODULES[m].name == "__init__.py" for m in c)]
    assert not circles, " -> ".join(circles[0])


def test_the_wings_depend_one_way_runtime_then_definitions_then_defs_then_settings_then_engine():
    allowed = {
        "engine": {"engine"},
        "demo": {"demo", "engine"},
        "settings": {"engine"},
        "defs": {"defs", "engine", "settings"},
        "definitions": {"defs", "settings"},
        "runtime": {"runtime", "definitions", "defs", "engine", "demo", "settings"},
    }
    wrong = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _wing(module) in allowed
        for target in targets
        if _wing(target) not in allowed[_wing(module)]
    ]
    assert not wrong, wrong


def test_no_module_imports_another_modules_private_names():
    private = [
        f"{module} imports {name} from {target}"
        for module in MODULES
        for target, name in _imports(module)
        if name and name.startswith("_") and target != module
    ]
    assert not private, private


def test_every_name_imported_from_the_package_exists():
    """Lazy imports inside functions run only when their command does: a moved name must not wait for that."""
    import importlib

    missing = [
        f"{module} imports {name} from {target}"
        for module in MODULES
        for target, name in _imports(module)
        if name and name != "*" and not hasattr(importlib.import_module(target), name)
    ]
    assert not missing, missing


def _environment_reads(tree: ast.AST) -> list[int]:
    """Lines that read one variable of os.environ (get, [], setdefault, getenv, pop): copying the whole environment
    for a child process is not a read of a setting."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("getenv", "putenv") and ast.unparse(node.value) == "os":
            lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            lines.append(node.lineno)
        elif isinstance(node, ast.Attribute) and ast.unparse(node.value) == "os.environ":
            lines.append(node.lineno)
    return lines


def test_settings_are_read_only_in_settings_py():
    """Every environment variable the project reads or sets goes through settings.py, and nothing else names one
    of the project's variables as a value to look up."""
    variable = re.compile(r"RANDOM_DIFFUSION_[A-Z_]+")
    outside = []
    for module, path in MODULES.items():
        if module == f"{PACKAGE}.settings":
            continue
        tree = ast.parse(path.read_text())
        outside += [f"{path.name}:{line} reads os.environ" for line in _environment_reads(tree)]
        outside += [
            f"{path.name}:{node.lineno} names {node.value}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and variable.fullmatch(node.value)
        ]
    assert not outside, outside
    assert _environment_reads(ast.parse(MODULES[f"{PACKAGE}.settings"].read_text()))  # the check sees reads


def test_every_relative_link_in_the_readme_and_docs_resolves():
    root = PACKAGE_DIR.parent
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md")), root / "benchmarks" / "results" / "README.md"]
    link = re.compile(r"\]\(([^)\s]+)\)")
    broken = []
    for page in pages:
        for target in link.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (page.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{page.relative_to(root)} -> {target}")
    assert not broken, broken
    readme_links = link.findall((root / "README.md").read_text())
    assert any(target.startswith("docs/") for target in readme_links)  # the README points into docs/


def test_a_dagster_yaml_naming_the_old_storage_class_path_still_loads(tmp_path):
    """Deployments' dagster.yaml files name the instance storage by class path; the old path is an alias."""
    import dagster as dg

    storage = {"module": "random_diffusion_dagster.sqlite_storage", "class": "BatchingSqliteStorage"}
    overrides = {"storage": {"custom": {**storage, "config": {"base_dir": str(tmp_path / "storage")}}}}
    with dg.instance_for_test(overrides=overrides) as instance:
        assert instance.get_runs() == []
        assert type(instance.event_log_storage).__name__ == "BatchingSqliteEventLogStorage"
