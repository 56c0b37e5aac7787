"""The import direction of DESIGN.md, enforced (`make lint` runs this file too).

control → listen → {l4, l7} → upstream → balance; `codec`, `balance` and `config` import
neither asyncio nor socket; the data plane never imports the control plane (control, runtime,
cli). Read from the source with `ast`, so a lazy import inside a function counts as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "bascule"

# What each top-level part of the package may import from bascule (besides itself).
_BASE = {"errors"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "codec": _BASE,
    "balance": _BASE,
    "config": _BASE | {"balance", "codec"},
    "observe": _BASE | {"config", "codec"},
    "upstream": _BASE | {"balance", "codec", "config", "observe"},
    "l7": _BASE | {"upstream", "balance", "codec", "config", "observe"},
    "l4": _BASE | {"upstream", "balance", "codec", "config", "observe"},
    "listen": _BASE | {"l7", "l4", "upstream", "balance", "codec", "config", "observe"},
    "testing": _BASE | {"l7", "l4", "listen", "upstream", "balance", "codec", "config", "observe"},
    "packet": _BASE | {"upstream", "balance", "codec", "config", "observe"},
    "control": _BASE | {"listen", "l7", "l4", "upstream", "balance", "codec", "config", "observe"},
}
# These may import anything: they assemble the program.
TOP = {"runtime", "cli", "__main__", "demo_backend", "build_info"}
NO_IO = {"codec", "balance", "config"}
IO_MODULES = {"asyncio", "socket", "uvloop", "selectors"}


def _part(path: Path, root: Path) -> str:
    rel = path.relative_to(root)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem


def _imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = ["bascule", *path.relative_to(root).parent.parts]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return found


def _violations(root: Path = SRC) -> list[str]:
    problems: list[str] = []
    for path in sorted(root.rglob("*.py")):
        part = _part(path, root)
        if part in TOP or part == "__init__":
            continue
        allowed = ALLOWED.get(part)
        if allowed is None:
            problems.append(f"{path.relative_to(root)}: part {part!r} has no place in the layers")
            continue
        for line, module in _imports(path, root):
            names = module.split(".")
            where = f"{path.relative_to(root)}:{line}"
            if names[0] == "bascule" and len(names) > 1:
                target = names[1]
                if target != part and target not in allowed:
                    problems.append(f"{where}: {part} may not import bascule.{target}")
            elif part in NO_IO and names[0] in IO_MODULES:
                problems.append(f"{where}: {part} is sans-I/O and may not import {module}")
    return problems


def test_import_direction() -> None:
    problems = _violations()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("part", "source", "bad"),
    [
        ("codec", "import asyncio\n", True),
        ("codec", "from bascule.l7 import exchange\n", True),
        ("l7", "from bascule.control import admin\n", True),
        ("l7", "from bascule.upstream.pool import Pool\n", False),
        ("upstream", "from ..l7 import exchange\n", True),
    ],
)
def test_the_checker_sees_violations(tmp_path: Path, part: str, source: str, bad: bool) -> None:
    """The rule can fail: a planted bad import is reported, a good one is not."""
    root = tmp_path / "bascule"
    (root / part).mkdir(parents=True)
    (root / part / "mod.py").write_text(source)
    assert bool(_violations(root)) is bad
