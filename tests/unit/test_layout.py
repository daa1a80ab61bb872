"""The import rules of the tree (CONTRIBUTING.md, "Layout"): which rooms may import which.

Each module's imports are read from its syntax tree, so a rule broken anywhere in a file (a lazy
import inside a function included) fails here with the module and the name it imported.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "shipper"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every shipper module (and stdlib/third-party top-level name) the file imports, resolved to
    absolute dotted names."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module_name(path): _imports(path) for path in PACKAGE.rglob("*.py")}


def _touches(imported: set[str], target: str) -> list[str]:
    return sorted(name for name in imported if name == target or name.startswith(target + "."))


def _in(room: str) -> list[str]:
    return sorted(name for name in MODULES if name == room or name.startswith(room + "."))


def test_the_modules_exist_where_the_rules_name_them():
    for room in ("shipper.tail", "shipper.kafka", "shipper.verify", "shipper.demo", "shipper.state",
                 "shipper.seal", "shipper.wal", "shipper.parse", "shipper.ingest", "shipper.pipeline"):
        assert _in(room), f"{room} is gone: update the rules in this test and CONTRIBUTING.md"


SHIPPING_CORE = ("shipper.tail", "shipper.parse", "shipper.discover", "shipper.seal", "shipper.batch", "shipper.wal",
                 "shipper.model", "shipper.merkle", "shipper.note")


@pytest.mark.parametrize("room", SHIPPING_CORE)
def test_the_core_stages_never_import_the_edges(room):
    for module in _in(room):
        for forbidden in ("shipper.kafka", "shipper.state", "shipper.ingest", "shipper.pipeline", "shipper.verify"):
            assert not _touches(MODULES[module], forbidden), f"{module} imports {forbidden}"


def test_kafka_never_imports_state_ingest_or_sqlite():
    for module in _in("shipper.kafka"):
        for forbidden in ("shipper.state", "shipper.ingest", "sqlite3"):
            assert not _touches(MODULES[module], forbidden), f"{module} imports {forbidden}"


JUDGE = ("report", "window", "chain", "tree", "attribution", "signatures", "closing", "split", "verifier")


@pytest.mark.parametrize("part", JUDGE)
def test_the_judge_imports_only_its_own_parts_and_the_seal(part):
    allowed = tuple(f"shipper.verify.{name}" for name in JUDGE) + ("shipper.seal", "shipper.merkle", "shipper.note")
    for name in MODULES[f"shipper.verify.{part}"]:
        if name.startswith("shipper"):
            assert name.startswith(allowed), f"verify/{part}.py imports {name}"


def test_verify_uses_nothing_of_the_shipping_path_but_the_kafka_client_and_partitioner():
    shipping = ("shipper.tail", "shipper.ingest", "shipper.pipeline", "shipper.wal", "shipper.state", "shipper.batch",
                "shipper.enrich", "shipper.discover", "shipper.parse")
    for module in _in("shipper.verify"):
        imported = MODULES[module]
        for forbidden in shipping:
            assert not _touches(imported, forbidden), f"{module} imports {forbidden}"
        for name in _touches(imported, "shipper.kafka"):
            assert name.startswith(("shipper.kafka.client", "shipper.kafka.wire.partition_of")), \
                f"{module} imports {name} (only kafka/client.py and the partitioner are allowed)"


TAIL_ORDER = ["identity", "siblings", "files", "restore", "tailer"]


def test_within_tail_imports_only_point_down_the_order():
    for position, name in enumerate(TAIL_ORDER):
        imported = MODULES[f"shipper.tail.{name}"]
        for later in TAIL_ORDER[position + 1:]:
            assert not _touches(imported, f"shipper.tail.{later}"), f"tail/{name}.py imports tail/{later}.py"
        assert not _touches(imported, "shipper.tail") or all(
            n.startswith("shipper.tail.") for n in _touches(imported, "shipper.tail")), \
            f"tail/{name}.py imports the tail face"


def test_no_product_module_imports_the_demo_but_the_cli():
    for module, imported in MODULES.items():
        if module.startswith("shipper.demo") or module == "shipper.cli":
            continue
        assert not _touches(imported, "shipper.demo"), f"{module} imports shipper.demo"


@pytest.mark.parametrize("face", ["shipper.tail", "shipper.kafka", "shipper.verify"])
def test_a_package_face_only_re_exports(face):
    path = PACKAGE / face.split(".", 1)[1] / "__init__.py"
    tree = ast.parse(path.read_text())
    assert len(path.read_text().splitlines()) < 40, f"{path} is a face: under 40 lines"
    for node in tree.body:
        assert isinstance(node, (ast.Import, ast.ImportFrom, ast.Assign, ast.Expr)), \
            f"{path} holds {type(node).__name__} at line {node.lineno}: a face only re-exports"
