"""``python -m core.train {baseline,transfer,finetuned} [--epochs N] [--backbone B] [--seed S] [--soup-seeds S,S,…|none] [--wise-ft-alpha A] [--encoding-augment] [--encoded-views N] [--blur-sigma S] [--init-from NAME] [--consistency-grid L,L,…|none] [--consistency-weight W --dropout 0] [--out DIR] [--data-dir D]``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from core.config import RECIPES, get_recipe, trains_head_only
from core.training import train

__all__ = ["main"]


def _values(text: str, cast, what: str) -> tuple:
    """Comma-separated distinct ``what`` (parsed by ``cast``), or ``()`` for 'none'."""
    if text.strip().lower() == "none":
        return ()
    try:
        values = tuple(cast(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what} or 'none', got {text!r}") from None
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"values repeat in {text!r}")
    return values


def _seeds(text: str) -> tuple[int, ...]:
    return _values(text, int, "integers")


def _alpha(text: str) -> float:
    try:
        alpha = float(text)
    except ValueError:
        alpha = float("nan")
    if not 0 <= alpha <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return alpha


def _grid(text: str) -> tuple[float, ...]:
    grid = _values(text, float, "numbers")
    if grid and (any(not g >= 0 for g in grid) or 0.0 not in grid):
        raise argparse.ArgumentTypeError(f"expected numbers >= 0 including 0 (the reference), got {text!r}")
    return grid


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.train", description=__doc__)
    parser.add_argument("recipe", choices=list(RECIPES))
    parser.add_argument("--backbone", choices=["efficientnet_lite0", "resnet50"])
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int, help="seed for the validation split, initialisation and augmentation (default 42); "
                                                        "in a soup it sets the split and each run takes its soup seed")
    parser.add_argument("--soup-seeds", type=_seeds, metavar="S,S,…|none",
                        help="train once per seed on one split and average the weights; 'none' trains a single run "
                             "(default: the recipe's, 'finetuned' is a soup)")
    parser.add_argument("--wise-ft-alpha", type=_alpha, metavar="A",
                        help="ship (1 - A) x the stage-1 weights + A x the fine-tuned weights (WiSE-FT); "
                             "1 ships the fine-tuned weights (default: the recipe's)")
    parser.add_argument("--encoding-augment", action="store_true", default=None,
                        help="re-encode training images as other files would bring them (core.augment; recipe v7)")
    parser.add_argument("--encoded-views", type=int, metavar="N",
                        help="frozen-backbone heads with the encoding augmentation: train on each image and N re-encoded "
                             "views of it (default: the recipe's, 3; candidate v20: 6)")
    parser.add_argument("--blur-sigma", type=float, metavar="S",
                        help="Gaussian low-pass of the input (sigma in pixels) before equalisation, in training and "
                             "serving (written into the card; recipe v11)")
    parser.add_argument("--no-equalize", dest="equalize", action="store_false", default=None,
                        help="leave out the histogram equalisation the recipe has (in training and serving: written into "
                             "the card; candidate v16)")
    parser.add_argument("--init-from", metavar="NAME",
                        help="start a two-stage recipe from the model NAME (in --out's folder) instead of the "
                             "recipe's stage 1 (default: the recipe's; 'finetuned' starts from 'transfer')")
    parser.add_argument("--consistency-grid", type=_grid, metavar="L,L,…|none",
                        help="frozen-backbone heads: train one head per penalty weight L on the logit's change under "
                             "re-encoding and keep the largest L whose validation ROC AUC is within 0.002 of L 0's "
                             "(recipe v14); 'none' trains one head without the penalty")
    parser.add_argument("--consistency-weight", type=float, metavar="W",
                        help="a recipe that trains its backbone: train on two independently re-encoded views of each "
                             "image, augmented alike, adding W x the mean squared logit gap between them to the loss "
                             "(candidate v25); needs --dropout 0")
    parser.add_argument("--dropout", type=float, metavar="D", help="the head's dropout rate (default: the recipe's)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write the model folder under DIR instead of models/ (a candidate); a two-stage recipe "
                             "then starts from DIR's stage-1 model")
    parser.add_argument("--data-dir", help="dataset folder (default: $PNEUMONIA_DATA_DIR or ../shared/data/chest_xray)")
    parser.add_argument("--fresh", action="store_true", help="discard an interrupted run instead of resuming it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    base = get_recipe(args.recipe)
    recipe = base.with_overrides(
        backbone=args.backbone, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, soup_seeds=args.soup_seeds,
        wise_ft_alpha=args.wise_ft_alpha, encoding_augment=args.encoding_augment,
        blur_sigma=args.blur_sigma, init_from=args.init_from, consistency_grid=args.consistency_grid,
        equalize=args.equalize, encoded_views=args.encoded_views, consistency_weight=args.consistency_weight,
        dropout=args.dropout)
    head_only = trains_head_only(base.kind, base.trainable_top_layers)
    if args.consistency_grid and not head_only:
        parser.error(f"'{args.recipe}' trains its backbone; --consistency-grid applies to frozen-backbone heads")
    if args.encoded_views is not None and (args.encoded_views < 1 or not head_only):
        parser.error("--encoded-views takes a count of 1 or more and applies to frozen-backbone heads")
    if args.consistency_weight is not None and (args.consistency_weight < 0 or head_only):
        parser.error("--consistency-weight takes a weight of 0 or more and applies to recipes that train their backbone")
    if recipe.consistency_weight and recipe.dropout:
        parser.error("--consistency-weight needs --dropout 0: two dropout masks would put their own gap between the views")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        parser.error("--dropout takes a rate from 0 up to (not including) 1")
    if args.init_from and not base.init_from:
        parser.error(f"'{args.recipe}' is trained in one stage; --init-from applies to two-stage recipes")
    folder = train(recipe, args.data_dir, out_root=args.out, fresh=args.fresh)
    print(f"Model written to {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
