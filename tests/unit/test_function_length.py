"""No function or method in platform/ambient is longer than MAX_LINES lines.

A function's length is counted from its ``def`` line to its last line (``end_lineno``), so its
signature, docstring, comments and blank lines inside it all count; decorators above ``def`` do not.
A long function is split into well-named helpers instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "ambient"
MAX_LINES = 60


def long_functions(package: Path = PACKAGE, limit: int = MAX_LINES) -> list[str]:
    """``path:line name (N lines)`` for every function or method, nested ones included, over ``limit``."""
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(
                        f"{path.relative_to(package.parent)}:{node.lineno} {node.name} ({lines} lines)"
                    )
    return found


def test_long_functions_are_found_by_their_def_to_last_line(tmp_path):
    def body(indent: str, count: int) -> str:
        return "\n".join(f"{indent}x{i} = {i}" for i in range(count))

    # def + docstring + MAX_LINES - 2 statements: exactly the limit, allowed
    (tmp_path / "fits.py").write_text(f'def fits():\n    """Doc."""\n{body("    ", MAX_LINES - 2)}\n')
    # a method one line over, its decorator not counted
    (tmp_path / "long.py").write_text(
        f'class C:\n    @staticmethod\n    def long():\n        """Doc."""\n{body("        ", MAX_LINES - 1)}\n'
    )
    found = long_functions(tmp_path)
    assert len(found) == 1 and found[0].endswith(f":3 long ({MAX_LINES + 1} lines)"), found


def test_no_function_in_the_library_is_longer_than_the_limit():
    found = long_functions()
    assert not found, f"functions over {MAX_LINES} lines (split them into helpers):\n" + "\n".join(found)
