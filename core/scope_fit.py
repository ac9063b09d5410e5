"""Fitting and measuring the scope check (:mod:`core.scope`): ``python -m core.scope_fit [--encoding-views N] [--report | --validate | --joint-cutoff]``."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import numpy as np

from core import scope as _scope
from core.augment import VARIANTS, served_variant
from core.data import find_data_dir, fingerprint, list_split, load_images, split_train_val
from core.guards import load_guard
from core.inference import read_upload
from core.ood import OODCheck, feature_extractor, guard_spec, training_views
from core.ood_report import non_xray_images
from core.preprocessing import squash
from core.registry import guard_files, models_dir, sha256_file
from core.scope import MAX_VARIANT_RATE, PASS_RATE, fit_scope, load_scope

__all__ = ["fit_and_save", "joint_scale", "set_joint_cutoff", "report", "validation_report"]

log = logging.getLogger(__name__)


def _statistics(extract, gray: np.ndarray) -> dict[str, np.ndarray]:
    return extract(gray)[1]


def fit_and_save(data_dir=None, seed: int = 42, root: Path | None = None, encoding_views: int = 0) -> dict:
    """Fit the scope check on the training split (validation held out by patient as the models') and record
    it beside the guard, on the input the guard's pass reads (its card's ``preprocessing``). With
    ``encoding_views``, on each training image and that many re-encoded views of it (the guard's views,
    :func:`core.ood.training_views`). Returns its record."""
    root = root or models_dir()
    train, val = split_train_val(list_split(find_data_dir(data_dir), "train"), 0.1, seed)
    spec = guard_spec(root)
    extract = feature_extractor(with_statistics=True, spec=spec)
    x_va = load_images(val)
    views = [_statistics(extract, x) for x in training_views(load_images(train), encoding_views, seed)]
    train_stats = {k: np.concatenate([v[k] for v in views]) for k in views[0]}
    val_views = [_statistics(extract, x_va)] + [
        _statistics(extract, np.stack([served_variant(g, v) for g in x_va])) for v in VARIANTS]
    model, choice = fit_scope(train_stats, val_views)
    files = guard_files(root)
    path = files.folder / "scope.npz"
    model.save(path)
    record = {
        "method": _scope.__doc__.split("\n\n")[1].replace("\n", " "),
        "rule": f"keep a statistic when at most {MAX_VARIANT_RATE:.0%} of each served variant of the validation images "
                f"lies beyond its own {PASS_RATE:.1%} validation percentile; cut-off: the {PASS_RATE:.1%} percentile of "
                "the mean kept distance over the validation images and their variants",
        "statistics": choice,
        "kept": model.names,
        "cutoff": model.cutoff,
        "variants": list(VARIANTS),
        "encoding_views": encoding_views,
        "preprocessing": spec.to_dict(),
        "data": {"train_images": len(train), "val_images": len(val), "fingerprint": fingerprint(train + val)},
        "weights_file": path.name,
        "weights_sha256": sha256_file(path),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    card = json.loads(files.card.read_text())
    card["scope"] = record
    if "joint_cutoff" in card:  # chosen for the old pair: the guard gets its own cut-off back
        guard = load_guard(root)
        guard.cutoff = card.pop("joint_cutoff")["separate_cutoffs"]["guard"]
        card["cutoff"] = guard.cutoff
        guard.save(files.folder, card)
    else:
        files.card.write_text(json.dumps(card, indent=1) + "\n")
    log.info("Scope check saved: %d of %d statistics kept, cut-off %.3f", len(model.names), len(choice), model.cutoff)
    return record


def joint_scale(guard_scores, guard_cutoff: float, scope_scores, scope_cutoff: float,
                pass_rate: float = PASS_RATE) -> float:
    """The one factor *c* by which both cut-offs are multiplied so that ``pass_rate`` of the images pass the two checks
    together: the ``pass_rate`` quantile of max(guard score / guard cut-off, scope score / scope cut-off)."""
    ratio = np.maximum(np.asarray(guard_scores, np.float64) / guard_cutoff,
                       np.asarray(scope_scores, np.float64) / scope_cutoff)
    return float(np.quantile(ratio, pass_rate))


def set_joint_cutoff(data_dir=None, root: Path | None = None, seed: int = 42) -> dict:
    """Give the guard and the scope check under ``root`` one joint cut-off (checks v3, docs/scope.md): both separate
    cut-offs multiplied by :func:`joint_scale` over the validation images (held out by patient, ``seed``) as copies and
    as each served variant, so that 99.5 % of those pooled sets pass both checks. Rewrites ``guard.npz``,
    ``scope.npz`` and their card (new cut-offs, sha256s, and a ``joint_cutoff`` record with the separate cut-offs).
    Run again, it starts from the separate cut-offs in that record, so it gives the same result. Returns the record.

    Raises:
        FileNotFoundError: No guard or no scope check under ``root``.
    """
    root = root or models_dir()
    files = guard_files(root)
    guard, scope = load_guard(root), load_scope(root)
    if guard is None or scope is None:
        raise FileNotFoundError(f"A joint cut-off needs both checks under {files.folder} (python -m core.ood, then "
                                "python -m core.scope_fit).")
    card = json.loads(files.card.read_text())
    separate = card.get("joint_cutoff", {}).get("separate_cutoffs") or {"guard": guard.cutoff, "scope": scope.cutoff}
    check = OODCheck(root)
    _, val = split_train_val(list_split(find_data_dir(data_dir), "train"), 0.1, seed)
    found = [r for results in _served(check, load_images(val)).values() for r in results]
    scale = joint_scale([r.score for r in found], separate["guard"], [r.scope_score for r in found], separate["scope"])
    guard.cutoff, scope.cutoff = scale * separate["guard"], scale * separate["scope"]
    scope.save(files.folder / "scope.npz")
    record = {
        "rule": f"both cut-offs times one factor: the {PASS_RATE:.1%} quantile, over the validation images as copies "
                f"and as each served variant ({', '.join(VARIANTS)}), of max(guard score / guard cut-off, scope score / "
                "scope cut-off), so that that share of them passes both checks (checks v3, docs/scope.md)",
        "scale": scale,
        "separate_cutoffs": separate,
        "cutoffs": {"guard": guard.cutoff, "scope": scope.cutoff},
        "validation_scores": len(found),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    card["cutoff"] = guard.cutoff
    card["scope"] = {**card["scope"], "cutoff": scope.cutoff, "weights_sha256": sha256_file(files.folder / "scope.npz")}
    card["joint_cutoff"] = record
    guard.save(files.folder, card)
    log.info("Joint cut-off: factor %.4f; guard %.3f, scope %.3f", scale, guard.cutoff, scope.cutoff)
    return record


def validation_report(data_dir=None, root: Path | None = None, seed: int = 42) -> dict:
    """The checks under ``root`` on the validation images (held out by patient, ``seed``), as copies and as each
    served variant (share withheld by the guard, the scope check and either), and the share of non-X-ray images
    (:func:`core.ood_report.non_xray_images`) withheld, by the guard alone and by the two checks together: what a
    refit is decided on, without the test set."""
    check = OODCheck(root)
    _, val = split_train_val(list_split(find_data_dir(data_dir), "train"), 0.1, seed)
    gray = load_images(val)
    out: dict = {"validation": _withheld(check, gray)}
    others = check(np.stack([squash(v) for v in non_xray_images().values()]))
    out["non_xray_images"] = len(others)
    out["non_xray_refused_by_guard"] = float(np.mean([r.score > r.cutoff for r in others]))
    out["non_xray_refused"] = float(np.mean([r.flagged for r in others]))  # by the guard or the scope check
    return out


def _served(check, gray: np.ndarray) -> dict:
    """The checks' result for each of ``gray``, as copies and as each served variant, checked in batches."""
    out = {}
    for variant in ("copies", *VARIANTS):
        images = gray if variant == "copies" else np.stack([served_variant(g, variant) for g in gray])
        out[variant] = [r for i in range(0, len(images), 64) for r in check(images[i : i + 64])]
    return out


def _withheld(check, gray: np.ndarray) -> dict:
    """Share of ``gray`` withheld by the guard, the scope check and either, as copies and as each served variant."""
    return {variant: {"images": len(found), "guard": float(np.mean([r.score > r.cutoff for r in found])),
                      "scope": float(np.mean([r.out_of_scope for r in found])),
                      "either": float(np.mean([r.flagged for r in found]))}
            for variant, found in _served(check, gray).items()}


def report(data_dir=None, root: Path | None = None) -> dict:
    """The shipped guard and scope check on every official test X-ray, as its copy and as each served variant
    (share withheld by each and by either), and on the adult films beside the dataset (``adult_samples/``)."""
    check, data_dir = OODCheck(root), find_data_dir(data_dir)
    out: dict = {"test": _withheld(check, load_images(list_split(data_dir, "test"))), "adult_samples": {}}
    for path in sorted((data_dir.parent / "adult_samples").glob("*.png")):
        film = read_upload(path.read_bytes(), path.name).gray[None]
        r = check(film)[0]
        out["adult_samples"][path.name] = {"guard_score": r.score, "guard_cutoff": r.cutoff, "scope_score": r.scope_score,
                                           "scope_cutoff": r.scope_cutoff, "withheld": r.flagged,
                                           "scope_distances": {k: float(v[0]) for k, v in
                                                               check.scope_distances(film).items()}}
    return out


def main(argv=None) -> int:
    """``python -m core.scope_fit [--data-dir D] [--encoding-views N] [--out DIR] [--report | --validate | --joint-cutoff]``:
    fit the scope check and ship it beside the guard; with ``--report``, measure the shipped guard and scope check
    instead (writes ``models/ood/scope_report.json``); with ``--validate``, measure them on validation images only;
    with ``--joint-cutoff``, give the two checks one cut-off chosen on validation images (checks v3)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m core.scope_fit", description=main.__doc__)
    parser.add_argument("--data-dir")
    parser.add_argument("--out", type=Path, metavar="DIR", help="write under DIR/ood instead of models/ood")
    parser.add_argument("--report", action="store_true", help="measure the shipped checks instead of fitting")
    parser.add_argument("--validate", action="store_true",
                        help="measure the checks under --out on the validation images and non-X-rays (no test images; "
                             "writes validation_report.json beside them)")
    parser.add_argument("--joint-cutoff", action="store_true",
                        help="scale both checks' cut-offs by one factor so that 99.5 %% of the validation images and "
                             "their served variants pass both (checks v3); fits nothing")
    parser.add_argument("--encoding-views", type=int, default=0, metavar="N",
                        help="fit on each training image and N re-encoded views of it (checks v2: 3)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.validate:
        result = validation_report(args.data_dir, args.out)
        (guard_files(args.out).folder / "validation_report.json").write_text(json.dumps(result, indent=1) + "\n")
        for variant, r in result["validation"].items():
            print(f"validation {variant:14s} withheld: guard {r['guard']:.1%}, scope {r['scope']:.1%}, "
                  f"either {r['either']:.1%}")
        print(f"non-X-ray images refused: {result['non_xray_refused']:.1%} of {result['non_xray_images']} "
              f"(by the guard alone {result['non_xray_refused_by_guard']:.1%})")
        return 0
    if args.joint_cutoff:
        record = set_joint_cutoff(args.data_dir, args.out)
        print(f"joint cut-off factor {record['scale']:.4f}: guard {record['cutoffs']['guard']:.3f}, "
              f"scope {record['cutoffs']['scope']:.3f} (separate: {record['separate_cutoffs']['guard']:.3f}, "
              f"{record['separate_cutoffs']['scope']:.3f})")
        return 0
    if args.report:
        result = report(args.data_dir, args.out)
        (guard_files(args.out).folder / "scope_report.json").write_text(json.dumps(result, indent=1) + "\n")
        for variant, r in result["test"].items():
            print(f"test {variant:14s} withheld: guard {r['guard']:.1%}, scope {r['scope']:.1%}, either {r['either']:.1%}")
        for name, r in result["adult_samples"].items():
            print(f"{name}: guard {r['guard_score']:.3f}, scope {r['scope_score']:.3f}, withheld {r['withheld']}; "
                  + ", ".join(f"{k} {v:.2f}" for k, v in r["scope_distances"].items()))
        return 0
    record = fit_and_save(args.data_dir, root=args.out, encoding_views=args.encoding_views)
    print(f"kept {', '.join(record['kept'])}; cut-off {record['cutoff']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
