"""Checks that keep the repository's layout true (docs/architecture.md): what is installed,
who may import whom, and that ``shared/`` holds only what is shared.

Imports are read from the source with ``ast`` (nothing is imported), so the checks are cheap and
see every import, including those inside functions.
"""
from __future__ import annotations

import ast
import pathlib
import tomllib

import pytest
from setuptools import find_namespace_packages

ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVICES = sorted(path.parent.name for path in (ROOT / "services").glob("*/service.py"))

# services/<a> modules that import another service's internals, each with why (none today: errors
# travel as shared.exceptions types, and services talk over RPC and events).
CROSS_SERVICE_EXCEPTIONS: set[tuple[str, str]] = set()
# shared/ modules used by fewer than two services and not by ops, each with why it is still there
# (none today: a module one service uses lives in that service).
SHARED_ALLOWED: dict[str, str] = {}


def python_files(*tops: str, tests: bool = False) -> list[pathlib.Path]:
    """The .py files under ``tops`` (relative to the repository); test folders only with ``tests``."""
    found = []
    for top in tops:
        for path in sorted((ROOT / top).rglob("*.py")):
            if tests or "tests" not in path.relative_to(ROOT).parts:
                found.append(path)
    return found


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: pathlib.Path) -> set[str]:
    """Every module ``path`` imports, dotted and absolute (``from a import b`` counts as ``a`` and
    ``a.b``: b may be a module)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_the_installed_packages_leave_out_the_development_tooling():
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    installed = find_namespace_packages(str(ROOT), include=include)
    assert "ops" in installed and "shared" in installed and "services.gateway" in installed
    assert not [name for name in installed if name == "devtools" or name.startswith("devtools.")], installed


@pytest.mark.parametrize("top", ["shared", "services", "ops"])
def test_nothing_installed_imports_the_development_tooling(top):
    offenders = {str(path.relative_to(ROOT)): sorted(name for name in imported(path)
                                                     if name.split(".")[0] == "devtools")
                 for path in python_files(top)}
    assert not {path: names for path, names in offenders.items() if names}


def test_a_service_imports_no_other_service():
    """(Its tests may: integration tests run the services it calls.)"""
    crossing = set()
    for service in SERVICES:
        for path in python_files(f"services/{service}"):
            for name in imported(path):
                parts = name.split(".")
                if parts[0] == "services" and len(parts) > 2 and parts[1] != service:
                    crossing.add((str(path.relative_to(ROOT)), ".".join(parts[:3])))
    assert crossing - CROSS_SERVICE_EXCEPTIONS == set()


def shared_modules() -> list[str]:
    """shared's top-level modules and packages (``shared.x``)."""
    modules = [path.stem for path in (ROOT / "shared").glob("*.py") if path.stem != "__init__"]
    modules += [path.parent.name for path in (ROOT / "shared").glob("*/__init__.py") if path.parent.name != "tests"]
    return sorted(f"shared.{name}" for name in modules)


def users_of_shared() -> dict[str, set[str]]:
    """shared.x -> the services (by name) and ``ops`` whose code (tests aside) imports it, directly
    or through other shared modules."""
    def top_shared(name: str) -> str | None:
        parts = name.split(".")
        return ".".join(parts[:2]) if parts[0] == "shared" and len(parts) > 1 else None

    shared_deps: dict[str, set[str]] = {module: set() for module in shared_modules()}
    for path in python_files("shared"):
        owner = top_shared(module_name(path))
        if owner in shared_deps:
            shared_deps[owner] |= {m for m in map(top_shared, imported(path)) if m in shared_deps and m != owner}

    def closure(modules: set[str]) -> set[str]:
        seen, todo = set(), list(modules)
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(shared_deps.get(module, ()))
        return seen

    users: dict[str, set[str]] = {module: set() for module in shared_deps}
    for user, top in [*((service, f"services/{service}") for service in SERVICES), ("ops", "ops")]:
        direct = {m for path in python_files(top) for m in map(top_shared, imported(path)) if m in users}
        for module in closure(direct):
            users[module].add(user)
    return users


def test_shared_holds_only_what_two_services_or_ops_use():
    users = users_of_shared()
    lonely = {module: sorted(who) for module, who in users.items()
              if module not in SHARED_ALLOWED and "ops" not in who and len(who) < 2}
    assert not lonely, f"used by fewer than two services and not by ops: move each into its one user: {lonely}"
    needless = [module for module in SHARED_ALLOWED if module in users and ("ops" in users[module]
                                                                            or len(users[module]) >= 2)]
    assert not needless, "allowed though shared by two services (or ops) now: remove the allowance"
