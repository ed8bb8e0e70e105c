"""The rooms' import rules: app -> models and training -> models only; serving never needs torchvision."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "app": {"training", "torchvision", "matplotlib", "tqdm"},
    "training": {"app"},
    "models": {"app", "training", "torchvision", "fastapi", "PIL"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_room_allows(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    violations = {str(f.relative_to(ROOT)): imported_roots(f) & FORBIDDEN[package] for f in files}
    assert {f: v for f, v in violations.items() if v} == {}
