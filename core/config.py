"""Training recipes: named, typed, in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

__all__ = ["Recipe", "RECIPES", "get_recipe", "WISE_FT_ALPHA_FIXED", "FROZEN_KINDS", "trains_head_only"]

WISE_FT_ALPHA_FIXED = "fixed in the recipe before training, not chosen on data"
FROZEN_KINDS = ("transfer", "lungpool")  # backbone frozen: the head trains on features computed once


def trains_head_only(kind: str, trainable_top_layers: int = 0) -> bool:
    """Whether a recipe (or a card's config) trains only a head on the frozen backbone's features, computed once for
    each image and a fixed number of re-encoded views of it; a lung-pooled model whose top layers train (v23) does not.
    """
    return kind in FROZEN_KINDS and not trainable_top_layers


@dataclass(frozen=True)
class Recipe:
    """Everything that decides how a model is built and trained."""

    name: str
    kind: str  # baseline | transfer | finetuned | lungpool (frozen backbone, features pooled over the lungs)
    backbone: str | None = "efficientnet_lite0"
    input_size: tuple[int, int] = (224, 224)
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-4
    label_smoothing: float = 0.1
    dropout: float = 0.5
    class_weights: bool = True
    # augmentation (Keras preprocessing layers, training only)
    rotation_deg: float = 10.0
    shift: float = 0.1
    zoom: float = 0.1
    brightness: float = 0.1
    contrast: float = 0.0
    central_erasing: float = 0.0  # probability of blanking the central third (mediastinum)
    encoding_augment: bool = False  # re-encode training images as other files would bring them (core.augment)
    encoded_views: int = 3  # frozen backbone with encoding_augment: re-encoded views per training image (v20: 6)
    equalize: bool = False  # histogram-equalise each image before normalisation (train and serve)
    # > 0: the model sees only the lungs dilated by this many pixels (train: human masks, serve: the segmenter's)
    lung_margin: int = 0
    lung_margin_jitter: int = 0  # training draws each image's margin from lung_margin ± this
    blur_sigma: float = 0.0  # > 0: a fixed Gaussian low-pass of the input before equalisation (train and serve)
    augment: bool = True
    # fine-tuning depth: the study trained the top 50 of ResNet50's 175 layers (29 %);
    # the same share of Lite0's 141 layers is 41.
    trainable_top_layers: int = 0
    init_from: str | None = None  # two-stage: start from this trained model's weights
    # callbacks, all on validation loss
    reduce_lr_factor: float = 0.5
    reduce_lr_patience: int = 2
    early_stopping_patience: int = 3
    val_fraction: float = 0.1
    seed: int = 42  # validation split, and initialisation / augmentation / shuffling of a single run
    # model soup: train stage 2 once per seed (same split and start) and average the weights
    soup_seeds: tuple[int, ...] = ()
    # WiSE-FT (Wortsman et al., CVPR 2022): ship (1 - a) x the stage-1 weights + a x the fine-tuned
    # weights; 1.0 ships the fine-tuned weights as they are. Needs ``init_from``.
    wise_ft_alpha: float = 1.0
    wise_ft_alpha_choice: str = WISE_FT_ALPHA_FIXED  # how the alpha was chosen, as the card's wise_ft record says
    # frozen-backbone heads only (v14, docs/lungs.md §10): add lambda * w'Σw to the head's loss, Σ the mean outer
    # product of the pooled-feature differences between each training image and its re-encoded views; one head is
    # trained per lambda and the largest whose validation ROC AUC is within 0.002 of lambda 0's is kept
    consistency_grid: tuple[float, ...] = ()
    # stage 2 on images (v25, docs/lungs.md §23): > 0 trains on pairs of independently re-encoded views of each image,
    # augmented alike, and adds this weight x the mean squared logit gap between them (the recipe's dropout must be 0)
    consistency_weight: float = 0.0
    threshold_rule: str = "youden"  # maximise sensitivity + specificity - 1 on validation
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["soup_seeds"] = list(self.soup_seeds)
        d["consistency_grid"] = list(self.consistency_grid)
        if not self.consistency_grid:  # runs and cached features from before v14 keep their settings
            del d["consistency_grid"]
        if self.encoded_views == 3:  # and those from before v20
            del d["encoded_views"]
        if not self.consistency_weight:  # and those from before v25
            del d["consistency_weight"]
        return d

    def with_overrides(self, **changes) -> Recipe:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


EQUALIZE_NOTE = (
    "Each image is histogram-equalised (global, 256 levels) before normalisation, in training "
    "and in serving (card preprocessing 'equalize'), so exposure and contrast differences "
    "between X-ray systems carry no signal."
)
ENCODING_NOTE = ("Every training image is re-encoded at random as other files would bring it (resampling, blur, "
                 "noise, JPEG; core.augment.encoding_path), so that the answer does not depend on the file's encoding.")
BLUR_NOTE = ("The input is blurred (Gaussian, sigma 2 px) before equalisation, in training and in serving, so that a "
             "file's fine JPEG and resampling artefacts carry no signal.")

RECIPES: dict[str, Recipe] = {
    "baseline": Recipe(
        name="baseline",
        kind="baseline",
        backbone=None,
        epochs=15,
        learning_rate=1e-3,
        early_stopping_patience=4,
        encoding_augment=True,
        blur_sigma=2.0,
        notes=["Small Conv2D + MaxPooling CNN trained from scratch on grayscale input.",
               "v11 (docs/lungs.md, section 7): trained on blurred input, every training image re-encoded at random.",
               BLUR_NOTE, ENCODING_NOTE],
    ),
    "transfer": Recipe(
        name="transfer",
        kind="transfer",
        epochs=60,
        learning_rate=1e-3,
        augment=False,
        equalize=True,
        encoding_augment=True,
        blur_sigma=2.0,
        early_stopping_patience=8,
        reduce_lr_patience=3,
        notes=[
            "Backbone frozen (ImageNet weights), new head only. Because the backbone is frozen, "
            "its pooled features are computed once and the head is trained on them; this is the "
            "same model as training end to end with a frozen backbone, without augmentation.",
            EQUALIZE_NOTE,
            "v11 (docs/lungs.md, section 7): the head is trained on the pooled features of each training image and of "
            "three re-encoded views of it, on blurred input.",
            BLUR_NOTE,
            ENCODING_NOTE,
        ],
    ),
    "finetuned": Recipe(
        name="finetuned",
        kind="finetuned",
        epochs=20,
        zoom=0.2,
        brightness=0.2,
        contrast=0.3,
        central_erasing=0.5,
        encoding_augment=True,
        equalize=True,
        blur_sigma=2.0,
        learning_rate=1e-4,
        trainable_top_layers=41,
        init_from="transfer",
        early_stopping_patience=3,
        soup_seeds=(42, 43),
        wise_ft_alpha=0.25,
        wise_ft_alpha_choice="chosen as the one of 0, 0.25, 0.5, 0.75, 1 with the highest validation ROC AUC "
                             "(docs/lungs.md, section 9)",
        notes=[
            "Two-stage: stage 1 is the trained 'transfer' model (head on the frozen backbone); "
            "stage 2 unfreezes the top 41 layers (BatchNorm stays frozen) with Adam 1e-4.",
            "v13 (docs/lungs.md, sections 7-9): trained and served on blurred input, every training image re-encoded "
            "at random, starting from the v11 'transfer'.",
            "Augmentation is wider than the study's (zoom 0.2, brightness 0.2, contrast 0.3) to cover "
            "exposure and framing differences between X-ray systems.",
            "Half of the training images have the central third of their width (mediastinum and "
            "heart) blanked, to push the model to find its evidence in the lung fields.",
            BLUR_NOTE,
            EQUALIZE_NOTE,
            ENCODING_NOTE,
            "Shipped weights: the average of two stage-2 runs (seeds 42 and 43), mixed with the 'transfer' weights "
            "they started from at alpha 0.25 (WiSE-FT, Wortsman et al. 2022: 0.75 x start + 0.25 x fine-tuned), the "
            "alpha of 0, 0.25, 0.5, 0.75, 1 with the highest validation ROC AUC.",
        ],
    ),
}

# 'transfer' as it was before v11 (no blur, no re-encoded views): the stage 1 of 'finetuned_v6'
RECIPES["transfer_v1"] = replace(
    RECIPES["transfer"], name="transfer_v1", encoding_augment=False, blur_sigma=0.0,
    notes=[*RECIPES["transfer"].notes[:2], "The 'transfer' recipe before v11 (docs/lungs.md, section 7), kept as the "
           "stage 1 of 'finetuned_v6'; train it with --out DIR, then 'finetuned_v6' with the same --out."])

# 'finetuned' as it shipped before v13 (docs/lungs.md, section 9); the lung-focused recipes v8 and v10 started from it
RECIPES["finetuned_v6"] = replace(
    RECIPES["finetuned"], name="finetuned_v6", init_from="transfer_v1", encoding_augment=False, blur_sigma=0.0,
    soup_seeds=(42, 43, 44, 45), wise_ft_alpha=0.5, wise_ft_alpha_choice=WISE_FT_ALPHA_FIXED,
    notes=[
        RECIPES["finetuned"].notes[0],
        "Stage 1 is the 'transfer' that shipped before v11 (recipe 'transfer_v1': unblurred input); 'finetuned' "
        "shipped this recipe until v13 (docs/lungs.md, sections 7-9).",
        *RECIPES["finetuned"].notes[2:4],
        EQUALIZE_NOTE,
        "Shipped weights: the average of the four stage-2 runs (seeds 42-45), then mixed half and half "
        "with the 'transfer' weights they started from (WiSE-FT, Wortsman et al. 2022), which tends to hold "
        "up better than the fine-tuned weights alone on images unlike the training set.",
    ])

LUNG_FOCUS_NOTE = (
    "The model sees only the lungs: after equalisation every pixel farther than 7 pixels outside the lung mask "
    "is set to 0 (card preprocessing 'lung_margin'). Training uses the human masks of the training images "
    "with the margin drawn from 3-11 pixels per image, so that the model does not depend on their exact "
    "outline; serving uses the shipped lung segmenter's mask of the same image. Images without a human mask "
    "are left out of training and validation."
)

RECIPES["lungfocus_v8_head"] = replace(
    RECIPES["transfer"], name="lungfocus_v8_head", encoding_augment=True, blur_sigma=0.0, lung_margin=7,
    lung_margin_jitter=4,
    notes=["Stage 1 of 'lungfocus_v8' (not shipped on its own): the 'transfer' recipe on lung-only input, the head "
           "trained on the pooled features of each image and three re-encoded views of it.",
           LUNG_FOCUS_NOTE, EQUALIZE_NOTE])
RECIPES["lungfocus_v8"] = replace(
    RECIPES["finetuned_v6"], name="lungfocus_v8", init_from="lungfocus_v8_head", encoding_augment=True, lung_margin=7,
    lung_margin_jitter=4,
    notes=[RECIPES["finetuned_v6"].notes[0].replace("'transfer' model", "'lungfocus_v8_head' model"),
           *RECIPES["finetuned_v6"].notes[2:-1],
           "Shipped weights: the average of the four stage-2 runs (seeds 42-45), mixed half and half with the "
           "'lungfocus_v8_head' weights they started from (WiSE-FT).", LUNG_FOCUS_NOTE, ENCODING_NOTE])

LUNG_POOL_NOTE = (
    "The model looks at the lungs by how it pools: in the same pass, the shipped lung decoder (frozen) finds the "
    "lungs from the backbone's own features, and the head averages the 7 x 7 features only over the cells that are "
    "more than half lung (weight clip((f - 0.5) / 0.5, 0, 1) for a cell whose mean P(lung) is f, plus 0.001 each). "
    "The map shown is HiResCAM on those features: each cell's own contribution to the logit, next to nothing where a "
    "cell is not lung."
)

RECIPES["lungfocus"] = replace(
    RECIPES["transfer"], name="lungfocus", kind="lungpool", encoding_augment=True, blur_sigma=2.0,
    notes=["Backbone frozen (ImageNet weights) and the lung decoder frozen; the head is trained on the lung-pooled "
           "features of each training image and of three re-encoded views of it (v9 in docs/lungs.md).",
           LUNG_POOL_NOTE, BLUR_NOTE, EQUALIZE_NOTE, ENCODING_NOTE])

RECIPES["lungfocus_ft"] = replace(
    RECIPES["finetuned_v6"], name="lungfocus_ft", kind="lungpool", init_from="lungfocus", encoding_augment=True,
    blur_sigma=2.0, central_erasing=0.0, soup_seeds=(42,),
    notes=["Stage 2 of v9's 'lungfocus' (v10 in docs/lungs.md): started from it, the top 41 backbone layers "
           "trained (BatchNorm and the lung decoder frozen) on lung-pooled features, every training image "
           "re-encoded at random; one run (seed 42), then mixed half and half with 'lungfocus' (WiSE-FT).",
           LUNG_POOL_NOTE, BLUR_NOTE, EQUALIZE_NOTE, ENCODING_NOTE])

# The v11 'transfer' is kept as 'transfer_v11': the stage 1 that 'finetuned' (v13) started from and is mixed with.
# v14 (docs/lungs.md, section 10) added a penalty on its logit's change under re-encoding ('transfer_v14', shipped
# until v15); v15 (section 11) is the v11 recipe on a stronger low-pass (sigma 3 px), and v16 (section 12) is v15
# without histogram equalisation, 'transfer'.
V11_TRANSFER_NOTES = RECIPES["transfer"].notes
RECIPES["transfer_v11"] = replace(
    RECIPES["transfer"], name="transfer_v11",
    notes=[*V11_TRANSFER_NOTES, "The 'transfer' recipe before v14 (docs/lungs.md, section 10), kept as the stage 1 "
           "of 'finetuned'; train it with --out DIR, then 'finetuned' with the same --out."])
RECIPES["transfer_v14"] = replace(
    RECIPES["transfer"], name="transfer_v14", consistency_grid=(0.0, 1.0, 3.0, 10.0, 30.0, 100.0),
    notes=[*V11_TRANSFER_NOTES,
           "v14 (docs/lungs.md, section 10): the head's loss adds lambda x the mean squared change of its logit between "
           "each training image and its re-encoded views (lambda x w'Σw); one head per lambda of 0, 1, 3, 10, 30, 100, "
           "keeping the largest whose validation ROC AUC is within 0.002 of lambda 0's (the card's 'consistency').",
           "The 'transfer' that shipped in v14 (docs/lungs.md, section 10); replaced by v15."])
RECIPES["transfer"] = replace(
    RECIPES["transfer"], blur_sigma=3.0,
    notes=[*(n for n in V11_TRANSFER_NOTES if n != BLUR_NOTE), BLUR_NOTE.replace("sigma 2 px", "sigma 3 px"),
           "v15 (docs/lungs.md, section 11): the v11 recipe with the input blurred at sigma 3 px rather than 2, which "
           "keeps about 6 % of the amplitude of JPEG's 8 x 8 blocks rather than 29 %."])
# v16 (section 12): v15 without histogram equalisation; v15 is kept as 'transfer_v15'
RECIPES["transfer_v15"] = replace(
    RECIPES["transfer"], name="transfer_v15",
    notes=[*RECIPES["transfer"].notes, "The 'transfer' that shipped in v15 (docs/lungs.md, section 11); replaced by v16."])
NO_EQUALIZE_NOTE = (
    "v16 (docs/lungs.md, section 12): no histogram equalisation. Equalising stretched the grey levels where the "
    "histogram is dense, the lung fields, and with them whatever a file's encoding changed there (about twice the "
    "input's change); the blurred image is only normalised. Exposure and contrast are no longer evened out."
)
RECIPES["transfer"] = replace(
    RECIPES["transfer"], equalize=False,
    notes=[n.replace(" before equalisation", "") for n in RECIPES["transfer"].notes if n != EQUALIZE_NOTE]
    + [NO_EQUALIZE_NOTE])
RECIPES["finetuned"] = replace(
    RECIPES["finetuned"], init_from="transfer_v11",
    notes=[n.replace("the trained 'transfer' model (head on the frozen backbone)",
                     "the trained 'transfer_v11' model (the v11 'transfer', a head on the frozen backbone)")
            .replace("starting from the v11 'transfer'", "starting from the v11 'transfer' (recipe 'transfer_v11'; "
                     "'transfer' has shipped other recipes since, sections 10-11)")
            .replace("mixed with the 'transfer' weights", "mixed with the 'transfer_v11' weights")
           for n in RECIPES["finetuned"].notes])


# v17 (section 13): 'finetuned' without histogram equalisation in both stages; its stage 1 is 'transfer_v17' (the v11
# 'transfer' without it); v13 is kept as 'finetuned_v13'
RECIPES["finetuned_v13"] = replace(
    RECIPES["finetuned"], name="finetuned_v13",
    notes=[*RECIPES["finetuned"].notes, "The 'finetuned' that shipped in v13 (docs/lungs.md, section 9); replaced by v17."])
RECIPES["transfer_v17"] = replace(
    RECIPES["transfer_v11"], name="transfer_v17", equalize=False,
    notes=[n.replace(" before equalisation", "") for n in V11_TRANSFER_NOTES if n != EQUALIZE_NOTE]
    + [NO_EQUALIZE_NOTE.replace("v16 (docs/lungs.md, section 12)", "v17 (docs/lungs.md, section 13)"),
       "The stage 1 of 'finetuned' since v17; train it with --out DIR, then 'finetuned' with the same --out."])
RECIPES["finetuned"] = replace(
    RECIPES["finetuned"], init_from="transfer_v17", equalize=False,
    notes=[n.replace("'transfer_v11' model (the v11 'transfer',", "'transfer_v17' model (the v11 'transfer' without "
                     "equalisation,")
            .replace("(recipe 'transfer_v11'; 'transfer' has shipped other recipes since, sections 10-11)",
                     "(since v17 without equalisation: recipe 'transfer_v17'; 'transfer' has shipped other recipes "
                     "since, sections 10-12)")
            .replace("'transfer_v11' weights", "'transfer_v17' weights")
            .replace("with the highest validation ROC AUC.", "with the highest validation ROC AUC in v12, kept in v17 "
                     "(where alpha 0, the stage 1 alone and no fine-tuned model, scored 0.0004 higher: section 13).")
            .replace(" before equalisation", "")
           for n in RECIPES["finetuned"].notes if n != EQUALIZE_NOTE]
    + [NO_EQUALIZE_NOTE.replace("v16 (docs/lungs.md, section 12)", "v17 (docs/lungs.md, section 13)")])


def _keep_shipped(name: str, version: str, section: str, successor: str) -> None:
    """Keep the recipe ``name`` as shipped in ``version`` under ``name_version`` before a successor replaces it."""
    RECIPES[f"{name}_{version}"] = replace(
        RECIPES[name], name=f"{name}_{version}",
        notes=[*RECIPES[name].notes, f"The '{name}' that shipped in {version} (docs/lungs.md, section {section}); "
               f"replaced by {successor}."])


# v19 (section 15): 'baseline' on the sigma-3 low-pass; v11's is kept as 'baseline_v11'
SIGMA3_NOTE = ("v19 (docs/lungs.md, section 15): the input blurred at sigma 3 px rather than 2, as 'transfer' since v15, "
               "which keeps about 6 % of the amplitude of JPEG's 8 x 8 blocks rather than 29 %.")
_keep_shipped("baseline", "v11", "7", "v19")
RECIPES["baseline"] = replace(
    RECIPES["baseline"], blur_sigma=3.0,
    notes=[BLUR_NOTE.replace("sigma 2 px) before equalisation", "sigma 3 px)") if n == BLUR_NOTE else n
           for n in RECIPES["baseline"].notes] + [SIGMA3_NOTE])

# v20 (section 16): 'lungfocus' without equalisation, on the sigma-3 low-pass (as v18), its head trained on six
# re-encoded views of each training image; v9's is kept as 'lungfocus_v9', the stage 1 of v10's 'lungfocus_ft'
_keep_shipped("lungfocus", "v9", "5", "v20")
RECIPES["lungfocus_ft"] = replace(
    RECIPES["lungfocus_ft"], init_from="lungfocus_v9",
    notes=[n.replace("started from it,", "started from it (recipe 'lungfocus_v9'),") for n in RECIPES["lungfocus_ft"].notes])
RECIPES["lungfocus"] = replace(
    RECIPES["lungfocus"], equalize=False, blur_sigma=3.0, encoded_views=6,
    notes=[RECIPES["lungfocus"].notes[0].replace("three re-encoded views of it (v9 in docs/lungs.md)",
                                                 "six re-encoded views of it (v9 in docs/lungs.md; six since v20, "
                                                 "section 16)"),
           LUNG_POOL_NOTE, BLUR_NOTE.replace("sigma 2 px) before equalisation", "sigma 3 px)"), ENCODING_NOTE,
           NO_EQUALIZE_NOTE.replace("v16 (docs/lungs.md, section 12)", "v20 (docs/lungs.md, sections 12 and 16)"),
           SIGMA3_NOTE.replace("v19 (docs/lungs.md, section 15)", "v20 (docs/lungs.md, section 16, as v18 in section 14)")])

# v21 (section 17): 'transfer' on a sigma-4 low-pass; v16's is kept as 'transfer_v16'
SIGMA4_NOTE = ("v21 (docs/lungs.md, section 17): the input blurred at sigma 4 px rather than 3, one step further on the "
               "same lever; JPEG's 8 x 8 blocks keep under 1 % of their amplitude.")
_keep_shipped("transfer", "v16", "12", "v21")
RECIPES["transfer"] = replace(
    RECIPES["transfer"], blur_sigma=4.0,
    notes=[n.replace("(Gaussian, sigma 3 px)", "(Gaussian, sigma 4 px)") for n in RECIPES["transfer"].notes]
    + [SIGMA4_NOTE])


# v21 (section 17): 'finetuned' on the sigma-4 low-pass in both stages, from the v21 'transfer'; v17's is kept as
# 'finetuned_v17' (from 'transfer_v17')
_keep_shipped("finetuned", "v17", "13", "v21")
RECIPES["finetuned"] = replace(
    RECIPES["finetuned"], blur_sigma=4.0, init_from="transfer",
    notes=[n.replace("'transfer_v17' model (the v11 'transfer' without equalisation, a head on the frozen backbone)",
                     "'transfer' model (v21: a head on the frozen backbone, sigma 4 px, without equalisation)")
            .replace("(since v17 without equalisation: recipe 'transfer_v17'; 'transfer' has shipped other recipes "
                     "since, sections 10-12)", "(since v21 the v21 'transfer', recipe 'transfer', on sigma 4 px)")
            .replace("(Gaussian, sigma 2 px)", "(Gaussian, sigma 4 px)")
            .replace("mixed with the 'transfer_v17' weights", "mixed with the v21 'transfer' weights")
           for n in RECIPES["finetuned"].notes]
    + [SIGMA4_NOTE.replace("rather than 3", "rather than 2, in both stages")])

# v22 (section 18): 'lungfocus' on the sigma-4 low-pass, as 'transfer' and 'finetuned' since v21; v20's is kept as
# 'lungfocus_v20'
_keep_shipped("lungfocus", "v20", "16", "v22")
RECIPES["lungfocus"] = replace(
    RECIPES["lungfocus"], blur_sigma=4.0,
    notes=[n for n in RECIPES["lungfocus"].notes if "sigma 3 px" not in n]
    + [BLUR_NOTE.replace("sigma 2 px) before equalisation", "sigma 4 px)"),
       SIGMA4_NOTE.replace("v21 (docs/lungs.md, section 17)", "v22 (docs/lungs.md, section 18)")])


# v23 (section 19): 'lungfocus' is v22's with its top layers fine-tuned (v10's recipe on v22's input and start); v22's
# frozen-head recipe is kept as 'lungfocus_v22', its stage 1
_keep_shipped("lungfocus", "v22", "18", "v23")
RECIPES["lungfocus"] = replace(
    RECIPES["lungfocus_ft"], name="lungfocus", init_from="lungfocus_v22", equalize=False, blur_sigma=4.0,
    notes=["Stage 2 of v22's 'lungfocus' (v23 in docs/lungs.md, section 19, v10's recipe of section 6 on v22's input): "
           "started from it (recipe 'lungfocus_v22'), the top 41 backbone layers trained (BatchNorm and the lung "
           "decoder frozen) on lung-pooled features, every training image re-encoded at random; one run (seed 42), "
           "then mixed half and half with its start (WiSE-FT)."]
    + [n for n in RECIPES["lungfocus_v22"].notes[1:] if not n.startswith("The 'lungfocus' that shipped in")])



# v25 (section 23): 'lungfocus' is v23's with its stage 2 trained on pairs of views and no head dropout; v23's is kept
# as 'lungfocus_v23'
_keep_shipped("lungfocus", "v23", "19", "v25")
RECIPES["lungfocus"] = replace(
    RECIPES["lungfocus"], consistency_weight=1.0, dropout=0.0,
    notes=[*RECIPES["lungfocus_v23"].notes[:-1],
           "v25 (docs/lungs.md, section 23): stage 2 trains on two views of each image, each re-encoded on its own and "
           "both augmented alike, and adds 1 x the mean squared gap between their logits to the loss, so that two "
           "encodings of one X-ray get one answer; without the head's dropout in that stage, since two masks would put "
           "their own gap between the views."])

def get_recipe(name: str) -> Recipe:
    """The named recipe; raises ``KeyError`` with the available names."""
    if name not in RECIPES:
        raise KeyError(f"Unknown recipe {name!r}. Available: {', '.join(RECIPES)}")
    return RECIPES[name]
