"""The package's imports flow downward only (DESIGN.md "Layers"): no module imports from a layer above it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "hybrid_vit_cascade"
# Layer of each top-level module or package; a module may import its own layer or any lower one.
LAYERS = {
    "files": 0, "config": 0, "slices": 0, "metrics": 0, "threads": 0, "parallel": 0, "progress": 0,
    "geometry": 1, "data": 2, "models": 3, "diffusion": 4, "runtime": 5,
    "training": 6, "inference": 6,
    "commands": 7, "cli": 8,
}


def _room(module: str) -> str:
    return module.split(".")[1] if module.startswith("hybrid_vit_cascade.") else ""


def _imports(path: Path) -> list[str]:
    """Absolute names of the package modules `path` imports (relative imports resolved)."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    pkg = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                out.append(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                out.append(node.module)
    return [m for m in out if m.startswith("hybrid_vit_cascade.")]


MODULES = sorted(p for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_only_flow_downward(path):
    rel = path.relative_to(PKG)
    room = rel.parts[0].removesuffix(".py")
    if room == "__init__":
        return
    assert room in LAYERS, f"{rel}: add its room to LAYERS (and to DESIGN.md)"
    up = [m for m in _imports(path) if LAYERS.get(_room(m), -1) > LAYERS[room]]
    assert not up, f"{rel} imports from a layer above it: {up}"
    if room in ("training", "inference"):  # side by side: neither imports the other
        other = "inference" if room == "training" else "training"
        assert not [m for m in _imports(path) if _room(m) == other], f"{rel} imports {other}/"


def test_the_check_sees_a_violation(tmp_path, monkeypatch):
    bad = PKG / "geometry" / "views.py"
    src = bad.read_text()
    fake = tmp_path / "views.py"
    fake.write_text("from hybrid_vit_cascade.inference.pipeline import Reconstructor\n" + src)
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: fake.read_text() if self == bad else
                        Path.read_bytes(self).decode())
    with pytest.raises(AssertionError, match="imports from a layer above it"):
        test_imports_only_flow_downward(bad)
