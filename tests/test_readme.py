"""The README's code matches the code it quotes."""

import difflib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_diff_is_the_examples_diff() -> None:
    readme = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"```diff\n(.*?)```", readme, re.S)
    quoted = [line for line in block.splitlines() if line[:1] in "+-"]
    plain = (ROOT / "examples/plain/train_mnist1d.py").read_text().splitlines()
    crest = (ROOT / "examples/train_mnist1d.py").read_text().splitlines()
    actual = {
        line
        for line in difflib.unified_diff(plain, crest, lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    }
    assert quoted, "the README quotes a diff"
    missing = [line for line in quoted if line not in actual]
    assert not missing, f"README diff lines not in the examples' diff: {missing}"
