"""aurl's layers: a module imports only from its own layer and the ones below (README, Layout), so that the
package reads bottom-up and has no cycles. Lazy imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import aurl

PACKAGE = Path(aurl.__file__).parent
# bottom first; a module is in the first layer whose prefix matches it
LAYERS = (
    ("aurl", "aurl.console", "aurl.atomic", "aurl.score", "aurl.rundir"),
    ("aurl.vocab", "aurl.grammar", "aurl.codec"),
    ("aurl.data",),
    ("aurl.model",),
    ("aurl.config", "aurl.evaluate.config"),
    ("aurl.evaluate",),
    ("aurl.train",),
)
COMMANDS = ("aurl.generate", "aurl.slurm", "aurl.bench")  # and every __main__: the top, may import anything
# known upward imports, each with its reason
ALLOWED = {
    ("aurl.evaluate.report", "aurl.train.tracking"): "the run report builds the trackers' Media (lazily)",
    ("aurl.evaluate.report", "aurl.train.state"): "the run report reads the state file (lazily)",
}


def layer(module: str) -> int:
    if module in COMMANDS or module.endswith(".__main__"):
        return len(LAYERS)
    for i, prefixes in enumerate(LAYERS):
        if module in prefixes or any(module.startswith(p + ".") for p in prefixes if p != "aurl"):
            return i
    raise AssertionError(f"{module}: in no layer (add it to LAYERS)")


def is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path, module: str) -> set[str]:
    """The aurl modules `path` imports: `from aurl.x import y` counts as aurl.x.y when that is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("aurl"):
            for a in node.names:
                found.add(f"{node.module}.{a.name}" if is_module(f"{node.module}.{a.name}") else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("aurl"))
    return found - {module}


def test_no_module_imports_from_a_higher_layer():
    upward, checked = [], 0
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        for target in imports(path, module):
            checked += 1
            if layer(target) > layer(module) and (module, target) not in ALLOWED:
                upward.append(f"{module} imports {target}")
    assert checked > 100  # the walk saw the package's imports
    assert not upward, "imports from a higher layer: " + "; ".join(upward)
