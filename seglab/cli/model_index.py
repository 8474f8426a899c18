"""The registered model names and summaries, read from seglab/models/*.py without importing
them: `seglab models` answers without loading torch, timm or torchvision (several seconds).

Each `register_model(NAME, SUMMARY, ...)` and `register_variant(NAME, OF, SUMMARY, ...)` call
in a model file states its name and summary as string literals; tests/test_cli.py checks that
this index equals the real registry, so a registration this reader cannot see fails there.
"""

from __future__ import annotations

import ast
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
SUMMARY_ARGUMENT = {"register_model": 1, "register_variant": 2}


def _literal(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def model_summaries(models_dir: Path = MODELS_DIR) -> dict[str, str]:
    """{name: summary} of every registration call in the model files, sorted by name."""
    found: dict[str, str] = {}
    for path in sorted(models_dir.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            position = SUMMARY_ARGUMENT.get(node.func.id)
            if position is None or len(node.args) <= position:
                continue
            name, summary = _literal(node.args[0]), _literal(node.args[position])
            if name is not None and summary is not None:
                found[name] = summary
    return dict(sorted(found.items()))
