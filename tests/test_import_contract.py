"""The packages meet only at the contracts: the four libraries never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGES = Path(__file__).resolve().parents[1] / "packages"
LIBRARIES = ["wd_tokenizer", "wd_stpt", "wd_masking", "wd_data"]


def imported_top_level_modules(source_dir: Path) -> dict[str, set[Path]]:
    """Map each top-level module imported anywhere under `source_dir` to the files importing it."""
    found: dict[str, set[Path]] = {}
    for path in source_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path)
    return found


@pytest.mark.parametrize("library", LIBRARIES)
def test_library_imports_no_other_workspace_package(library: str) -> None:
    package_dir = PACKAGES / library.replace("_", "-")
    imports = imported_top_level_modules(package_dir)
    others = {"wd_cli", *LIBRARIES} - {library}
    offending = {name: sorted(map(str, files)) for name, files in imports.items() if name in others}
    assert not offending, f"{library} imports other workspace packages: {offending}"
