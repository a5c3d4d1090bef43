"""The package layers: dependencies point downward only.

Every import in the product packages (module level or inside a function: a lazy
import is still a dependency) is parsed and checked against the layer table below.
A unit may import only from units in lower layers (or from itself).  Adding a layer
or an edge is a design decision: change the table, and say why in the commit.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("spdm", "tdisp", "tsm", "vdev")

# Bottom to top.  Units in one layer do not import each other.
LAYERS: list[set[str]] = [
    {"spdm"},                         # SPDM engines (sans-IO)
    {"tdisp"},                        # IDE_KM and TDISP engines, carried by SPDM (sans-IO)
    {"tsm"},                          # the platform TSM model, above both engines
    {"vdev.doe", "vdev.profiles"},    # DOE register machine; device profiles
    {"vdev.pci"},                     # config space, capabilities, the device contract
    {"vdev.endpoint", "vdev.tsm_mailbox", "vdev.vfio_user", "vdev.spdm_emu", "vdev.trace"},
    {"vdev.faults"},
    {"vdev.control"},
    {"vdev.vm"},                      # the VM runner
    {"vdev.cli"},                     # front ends
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def unit_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "vdev" and len(parts) > 1 else parts[0]


@functools.cache
def product_imports() -> list[tuple[str, int, str, str]]:
    """(file, line, importing unit, imported module) for every product import."""
    found = []
    for pkg in PRODUCT:
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = path.relative_to(REPO)
            here = unit_of(".".join(rel.with_suffix("").parts))
            for node in ast.walk(ast.parse(path.read_text(), str(rel))):
                if isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    targets = [node.module]
                else:
                    continue
                for target in targets:
                    if target.split(".")[0] in PRODUCT:
                        found.append((str(rel), node.lineno, here, target))
    return found


def test_every_product_unit_has_a_layer() -> None:
    units = {here for _, _, here, _ in product_imports()}
    units |= {unit_of(t) for _, _, _, t in product_imports()}
    assert units - RANK.keys() == set()


@pytest.mark.parametrize("engine", ["spdm", "tdisp", "tsm"])
def test_engines_never_import_the_device(engine: str) -> None:
    bad = [f"{f}:{line} imports {t}" for f, line, here, t in product_imports()
           if here == engine and t.split(".")[0] == "vdev"]
    assert bad == []


def test_imports_point_downward() -> None:
    bad = [f"{f}:{line}: {here} (layer {RANK[here]}) imports {t} (layer {RANK[unit_of(t)]})"
           for f, line, here, t in product_imports()
           if unit_of(t) != here and RANK[unit_of(t)] >= RANK[here]]
    assert bad == []


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The parser finds lazy imports too: the kind of edge this test exists to catch."""
    src = "def f():\n    from vdev.endpoint.tee_device import TeeDevice\n"
    tree = ast.parse(src)
    modules = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert modules == ["vdev.endpoint.tee_device"]
    assert RANK[unit_of(modules[0])] > RANK["tsm"]
