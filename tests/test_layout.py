"""The rooms' import rules (app -> models and training -> models only; serving never needs torchvision) and sizes."""

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


MAX_APP_MODULE_LINES = 300
MAX_FUNCTION_LINES = 50


def test_no_app_module_over_300_lines() -> None:
    sizes = {str(f.relative_to(ROOT)): len(f.read_text().splitlines()) for f in sorted((ROOT / "app").rglob("*.py"))}
    assert len(sizes) > 10
    assert {f: n for f, n in sizes.items() if n > MAX_APP_MODULE_LINES} == {}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_function_over_50_lines(package: str) -> None:
    long = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.name}"] = length
    assert long == {}
