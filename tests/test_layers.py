"""The layers hold: ``dashboard`` → ``collectors`` → ``mopq``, never back.

Checked two ways. Statically, on the real import graph: every ``import``
statement of every module (inside functions too, relative ones resolved) of
the three parts, read with ``ast``; a library module may import neither the
collectors nor the dashboard, and a collectors module not the dashboard.
And at run time: a fresh interpreter that imports the library's public API
has loaded nothing of Flask, Socket.IO, plotly, gunicorn, pydantic, the
collectors or the dashboard.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Folder -> installed package name (pyproject.toml's package-dir), by layer, lowest first.
PARTS = {"mopq": "mopq", "collectors": "mopq.collectors", "dashboard": "mopq.dashboard"}
LAYERS = ("mopq", "mopq.collectors", "mopq.dashboard")


def _module_of(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    parts[0] = PARTS[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> int | None:
    for index in range(len(LAYERS) - 1, -1, -1):
        name = LAYERS[index]
        if module == name or module.startswith(name + "."):
            return index
    return None


def _imports(path: Path, module: str) -> list[tuple[str, int]]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
    return found


def import_graph() -> dict[str, list[tuple[str, int]]]:
    graph = {}
    for folder in PARTS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            module = _module_of(path)
            graph[module] = _imports(path, module)
    return graph


def test_imports_point_one_way():
    graph = import_graph()
    assert {"mopq.queue", "mopq.collectors.batch", "mopq.dashboard.api"} <= set(graph)
    wrong = []
    for importer, imported in graph.items():
        for target, line in imported:
            low, high = _layer(importer), _layer(target)
            if low is not None and high is not None and high > low:
                wrong.append(f"{importer} (line {line}) imports {target}")
    assert not wrong, "layers broken:\n" + "\n".join(sorted(set(wrong)))


def test_the_check_sees_a_wrong_import(tmp_path):
    """Imports inside functions and relative ones count: an import pointing up is caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("def later():\n    from mopq.dashboard import create_app\n"
                     "from ..dashboard import live\n")
    edges = _imports(probe, "mopq.collectors.probe")
    assert ("mopq.dashboard.create_app", 2) in edges and ("mopq.dashboard.live", 3) in edges
    assert _layer("mopq.dashboard.create_app") > _layer("mopq.collectors.probe")


HEAVY = ("flask", "flask_socketio", "engineio", "plotly", "gunicorn", "pydantic",
         "prometheus_client", "mopq.collectors", "mopq.dashboard")


def test_importing_the_library_loads_nothing_of_the_parts_above():
    script = ("import sys\nfrom mopq import Queue, Worker, emit, flush\nimport mopq.cli\n"
              f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} "
              f"or m.startswith(('mopq.collectors', 'mopq.dashboard'))))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True, cwd="/").stdout.strip()
    assert loaded == "[]", loaded
