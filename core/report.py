"""``python -m core.report [--update-readme]``: the generated tables of the README and ``docs/``.

Each table is made from shipped artifacts and sits between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->`` markers: ``results`` (README; the models' ``metrics.json`` and cards),
``speed`` (``docs/speed.md``; ``benchmarks/latest.json``) and ``ood`` (``docs/security.md``;
``models/ood/report.json``), ``invariance`` and ``lungs`` (``docs/lungs.md``;
``models/invariance.json``, ``models/lungs/metrics.json``). ``--update-readme`` rewrites every block;
the tests check that each one equals what its JSON gives.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.bench import speed_table
from core.evaluation import interval_text
from core.invariance import invariance_table
from core.ood_report import guard_table
from core.registry import (
    ROOT,
    available_models,
    benchmark_file,
    guard_files,
    invariance_file,
    load_card,
    load_metrics,
    lungs_files,
    models_dir,
)

__all__ = ["BEGIN", "END", "BLOCKS", "results_table", "standing_table", "lungs_table", "generated", "block_in",
           "update_docs", "main"]

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def results_table(root=None) -> str:
    """Markdown table of test metrics (at each card threshold) for every shipped model, with the
    bootstrap intervals ``metrics.json`` holds."""
    root = root or models_dir()
    lines = [
        "| model | backbone | test accuracy (95 % CI) | sensitivity | specificity | precision | F1 | ROC AUC (95 % CI) | PR AUC "
        "| threshold (from validation) | val ROC AUC | map energy in lungs | pointing game | template index "
        "| training time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in available_models(root):
        card, r = load_card(name, root), load_metrics(name, root)
        if r is None:
            continue
        m, ci = r["at_card_threshold"], r.get("ci95", {})
        lines.append(
            f"| {name} | {card.backbone or 'none'} | {_with_ci(m['accuracy'], ci, 'accuracy')} | {m['sensitivity']:.3f} | "
            f"{m['specificity']:.3f} | {m['precision']:.3f} | {m['f1']:.3f} | {_with_ci(r['roc_auc'], ci, 'roc_auc')} | "
            f"{r['pr_auc']:.3f} | "
            f"{m['threshold']:.3f} | {card.val_metrics['roc_auc']:.3f} | "
            + " | ".join(_number(r.get("explanation", {}).get(k)) for k in ("lung_energy_mean", "pointing_game",
                                                                            "template_index"))
            + f" | {card.training_time_s / 60:.1f} min |"
        )
    return "\n".join(lines)


def standing_table(root=None) -> str:
    """The shipped models' test accuracy, ROC AUC and explanation quality, short (the head of docs/lungs.md)."""
    root = root or models_dir()
    lines = ["| model | test accuracy / ROC AUC | energy / pointing / template |", "|---|---|---|"]
    for name in available_models(root):
        r = load_metrics(name, root)
        if r is not None:
            lines.append(f"| `{name}` | {r['at_card_threshold']['accuracy']:.3f} / {r['roc_auc']:.3f} | "
                         + " / ".join(_number(r.get("explanation", {}).get(k)) for k in ("lung_energy_mean",
                                                                                          "pointing_game",
                                                                                          "template_index")) + " |")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _with_ci(value: float, ci: dict, key: str) -> str:
    return f"{value:.3f}" + (f" ({interval_text(ci[key])})" if key in ci else "")


def lungs_table(report: dict) -> str:
    """The lung segmenter's test Dice and its invariance (``models/lungs/metrics.json``) as Markdown."""
    t = report["test"]
    lines = [f"Test masks ({report['images']} images): mean Dice {t['dice_mean']:.3f}, 5th percentile "
             f"{t['dice_p05']:.3f}, lowest {t['dice_min']:.3f}; lungs found implausible (flagged by the guard) in "
             f"{t['implausible_lungs']} of the test X-rays.", "",
             "| variant | Dice to the lungs found on the copy | Dice to the true masks |", "|---|---|---|"]
    lines += [f"| {v} | {x['dice_to_copy_mean']:.3f} | {x['dice_to_truth_mean']:.3f} |"
              for v, x in report["invariance"].items()]
    return "\n".join(lines)


def _from_json(path_of, make, command: str):
    """A block made from a JSON file, or a line saying how to make that file when it is missing."""
    def block() -> str:
        path = path_of()
        return make(json.loads(path.read_text())) if path.exists() else f"Not measured yet: run `{command}`."
    return block


# block name -> (the file it sits in, relative to the repository, and how to make it)
BLOCKS = {
    "results": ("README.md", results_table),
    "standing": ("docs/lungs.md", standing_table),
    "speed": ("docs/speed.md", _from_json(benchmark_file, speed_table, "python -m core.bench")),
    "ood": ("docs/security.md", _from_json(lambda: guard_files().report, guard_table, "python -m core.ood --report")),
    "invariance": ("docs/lungs.md", _from_json(invariance_file, invariance_table,
                                                "python -m core.evaluate --invariance")),
    "lungs": ("docs/lungs.md", _from_json(lambda: lungs_files().report, lungs_table,
                                          "python -m core.evaluate --lungs")),
}



def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def generated(name: str) -> str:
    """Block ``name`` as its JSON makes it now."""
    return BLOCKS[name][1]()


def block_in(name: str, root: Path = ROOT) -> str:
    """Block ``name`` as its document holds it now."""
    begin, end = _markers(name)
    return (root / BLOCKS[name][0]).read_text().split(begin, 1)[1].split(end, 1)[0].strip()


def update_docs(root: Path = ROOT) -> list[str]:
    """Rewrite every generated block in place; returns the documents that changed."""
    changed = []
    for name, (doc, make) in BLOCKS.items():
        path = root / doc
        begin, end = _markers(name)
        text = path.read_text()
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        new = f"{head}{begin}\n{make()}\n{end}{tail}"
        if new != text:
            path.write_text(new)
            changed.append(doc)
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update-readme", action="store_true",
                        help="rewrite the generated blocks of README.md and docs/ from the shipped JSON files")
    args = parser.parse_args(argv)
    if args.update_readme:
        for doc in update_docs():
            print(f"updated {doc}")
    print(results_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
