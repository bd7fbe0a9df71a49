"""The picture of the code is three boxes and two arrows: apiserver -> clustermesh <- agent.

clustermesh imports neither daemon, and the daemons never import each other (DESIGN.md "Components and layout").
Checked on the source with ast, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FORBIDDEN = {"clustermesh": {"apiserver", "agent"}, "apiserver": {"agent"}, "agent": {"apiserver"}}


def imported_packages(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_down_only(package: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {bad}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for bad in imported_packages(path) & FORBIDDEN[package]
    ]
    assert not offenders, "\n".join(offenders)
