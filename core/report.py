"""``python -m core.report [--update-readme]``: the README's results table, from the shipped artifacts."""

from __future__ import annotations

import json

from core.evaluation import interval_text
from core.registry import available_models, load_card, models_dir

__all__ = ["results_table", "update_readme"]

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def results_table(root=None) -> str:
    """Markdown table of test metrics (at each card threshold) for every shipped model, with the
    bootstrap intervals ``metrics.json`` holds."""
    root = root or models_dir()
    lines = [
        "| model | backbone | test accuracy (95 % CI) | sensitivity | specificity | precision | F1 | ROC AUC (95 % CI) | PR AUC "
        "| threshold (from validation) | val ROC AUC | training time | hardware |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in available_models(root):
        card = load_card(name, root)
        path = root / name / "metrics.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        m, ci = r["at_card_threshold"], r.get("ci95", {})
        lines.append(
            f"| {name} | {card['backbone'] or 'none'} | {_with_ci(m['accuracy'], ci, 'accuracy')} | {m['sensitivity']:.3f} | "
            f"{m['specificity']:.3f} | {m['precision']:.3f} | {m['f1']:.3f} | {_with_ci(r['roc_auc'], ci, 'roc_auc')} | "
            f"{r['pr_auc']:.3f} | "
            f"{m['threshold']:.3f} | {card['val_metrics']['roc_auc']:.3f} | {card['training_time_s'] / 60:.1f} min | "
            f"{card['hardware']} |"
        )
    return "\n".join(lines)


def _with_ci(value: float, ci: dict, key: str) -> str:
    return f"{value:.3f}" + (f" ({interval_text(ci[key])})" if key in ci else "")


def update_readme(path) -> None:
    """Replace the table between the README's results markers with a fresh one."""
    from pathlib import Path

    text = Path(path).read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    Path(path).write_text(f"{head}{BEGIN}\n{results_table()}\n{END}{tail}")


if __name__ == "__main__":
    import sys

    if "--update-readme" in sys.argv:
        update_readme(models_dir().parent / "README.md")
    print(results_table())
