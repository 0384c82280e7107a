"""The map of the house holds: no module imports against the direction docs/architecture.md states.

The layer table is read from the document itself, so the map and the check cannot drift apart. Every import
counts, at module level or inside a function (the lazy imports that keep clients out of import time).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"


def layers() -> dict[str, int]:
    """Folder (or top-level module) -> layer, from the table between the layer markers."""
    text = DOC.read_text("utf-8")
    block = text.split("<!-- layers: begin", 1)[1].split("<!-- layers: end -->", 1)[0]
    found: dict[str, int] = {}
    for row in block.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].isdigit():
            continue
        for name in re.findall(r"`([^`]+)`", cells[1]):
            found[name.removesuffix(".py")] = int(cells[0])
    return found


def sources(name: str) -> list[Path]:
    folder = REPO / name
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [REPO / f"{name}.py"]


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, top-level name) of every absolute import in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def test_the_map_names_every_package_of_the_house() -> None:
    mapped = layers()
    assert len(set(mapped.values())) >= 5, f"the layer table in {DOC} could not be read: {mapped}"
    packages = {p.parent.name for p in REPO.glob("*/__init__.py") if p.parent.name != "tests"}
    assert packages - set(mapped) == set(), "a package of the house is missing from docs/architecture.md"


def test_no_module_imports_against_the_direction_of_the_map() -> None:
    mapped = layers()
    wrong = []
    for name, layer in mapped.items():
        for path in sources(name):
            for line, target in imported(path):
                if target == name or target not in mapped:
                    continue  # within its own folder, or outside the house (stdlib, third party, tests)
                if mapped[target] >= layer:
                    where = path.relative_to(REPO)
                    wrong.append(f"{where}:{line} imports {target} (layer {mapped[target]} >= {layer})")
    assert wrong == [], "imports against docs/architecture.md:\n" + "\n".join(wrong)


def test_the_check_sees_an_import_that_points_up(tmp_path: Path) -> None:
    # The reader of imports is the one the test above relies on: a lazy import inside a function counts.
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from tasks.app import app\n    return app\n")
    assert imported(module) == [(2, "tasks")]
    assert layers()["tasks"] > layers()["services"]
