"""Imports point one way: nothing of the product imports the benchmarks."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("crest", "client", "proto", "service", "worker", "examples")


def test_the_product_never_imports_the_benchmarks() -> None:
    for folder in PRODUCT:
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            # `crest bench ...` imports its benchmark when it runs: inside a function of the
            # CLI, never when the CLI (or anything else) is imported.
            lazy = path == ROOT / "crest" / "cli.py"
            nodes = ast.walk(tree) if not lazy else iter(tree.body)
            for node in nodes:
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                for name in names:
                    assert not name.startswith("crest.bench"), (
                        f"{path.relative_to(ROOT)} imports {name}"
                    )
