"""The lung segmenter: its parts, its augmentation, the shipped one's Dice, and lungs in serving."""

import json
from dataclasses import replace

import numpy as np
import pytest

from core.lungs import draw_outline, implausible_lungs, outline
from core.ood import OODResult
from core.registry import lungs_files
from core.segmenter import augment_pair, build_decoder
from tests.helpers import PAIR, xray_like


@pytest.fixture(scope="module")
def segmenter():
    from core.segmenter import LungSegmenter

    if not lungs_files().weights.exists():
        pytest.skip("no lung segmenter under models/lungs (python -m core.segmenter)")
    return LungSegmenter()


def test_decoder_maps_backbone_taps_and_image_to_a_probability_per_pixel():
    decoder = build_decoder()
    x = [np.zeros((2, 56, 56, 24)), np.zeros((2, 28, 28, 40)), np.zeros((2, 14, 14, 112)), np.zeros((2, 224, 224, 3))]
    out = np.asarray(decoder(x))
    assert out.shape == (2, 224, 224, 1) and ((0 <= out) & (out <= 1)).all()
    assert decoder.count_params() * 4 < 5 * 2**20


def test_augmentation_moves_image_and_mask_together():
    gray = np.where(PAIR, 200, 30).astype(np.uint8)
    rng = np.random.default_rng(0)
    for _ in range(10):
        img, mask = augment_pair(gray, PAIR, rng)
        assert img.shape == mask.shape == (224, 224) and mask.dtype == bool
        assert img[mask].mean() > img[~mask].mean() + 100  # the bright lungs stay under the mask


def test_a_pair_of_lungs_is_plausible_and_other_shapes_are_not():
    assert implausible_lungs(PAIR) is None
    assert "no pair of lungs" in implausible_lungs(np.zeros((224, 224), bool))
    assert "more than a chest film" in implausible_lungs(np.ones((224, 224), bool))
    one = PAIR.copy()
    one[:, 112:] = False
    assert "only one" in implausible_lungs(one)
    left = np.zeros((224, 224), bool)
    left[40:190, 5:45] = left[40:190, 55:100] = True
    assert "either side" in implausible_lungs(left)


def test_outline_is_the_mask_boundary_and_draws_on_any_size():
    edge = outline(PAIR)
    assert edge.sum() < PAIR.sum() / 5 and not (edge & ~PAIR).any()
    rgb = np.zeros((448, 448, 3), np.uint8)
    drawn = draw_outline(rgb, PAIR)
    assert drawn.shape == rgb.shape and drawn.any() and not rgb.any()


def test_a_missing_pair_of_lungs_flags_the_guard_with_its_reason():
    ok = OODResult(1.0, 2.0)
    assert not ok.flagged
    flagged = OODResult(1.0, 2.0, lungs_note="no pair of lungs was found in it")
    assert flagged.flagged and "No plausible pair of lungs" in flagged.warning and "out-of-distribution" not in flagged.warning


def test_the_shipped_segmenter_reproduces_the_test_masks(segmenter, data_dir):
    """Goal: mean Dice >= 0.95 on the official test masks (measured once after the validation decision)."""
    from core.data import list_split, load_images
    from core.lungs import dice, find_mask_dir, load_masks

    samples = list_split(data_dir, "test")
    masks, present = load_masks(samples, "test", find_mask_dir())
    scores = dice(segmenter.masks(load_images(samples))[present], masks[present])
    shipped = json.loads(lungs_files().report.read_text())
    assert scores.mean() == pytest.approx(shipped["test"]["dice_mean"], abs=2e-3)
    assert scores.mean() >= 0.95


def test_serving_gives_lungs_and_the_share_of_evidence_inside_them(segmenter, shipped_models):
    from core import inference

    model = inference.load_model(shipped_models[-1])
    gray = xray_like(224, 224, seed=3)
    reading = inference.score([gray], [model], None, segmenter)[0]
    assert reading.lungs.shape == (224, 224) and reading.lungs.dtype == bool
    share = reading.lung_share(model.name)
    assert share is None or 0 <= share <= 1


def test_cli_writes_maps_and_lungs_and_reports_lung_share(segmenter, shipped_models, tmp_path, samples_dir, capsys):
    from core.predict import main

    xray = samples_dir / "IM-0061-0001.jpeg"
    assert main(["--json", "--heatmap-dir", str(tmp_path / "maps"), "--maps", "--lung-dir", str(tmp_path / "lungs"),
                 str(xray), str(xray)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 2 * len(shipped_models) and all(0 <= r["lung_share"] <= 1 for r in records)
    for stem in ("IM-0061-0001", "IM-0061-0001-2"):
        lungs = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "lungs" / f"{stem}.lungs.png"))
        assert lungs.shape == (224, 224) and set(np.unique(lungs)) <= {0, 255} and implausible_lungs(lungs > 0) is None
        for name in shipped_models:
            heat = np.load(tmp_path / "maps" / f"{stem}.{name}.npy")
            assert heat.shape == (224, 224) and heat.dtype == np.float32 and 0 <= heat.min() and heat.max() <= 1


def test_maps_need_a_heatmap_folder(capsys):
    from core.predict import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--maps", "x.png"])
    assert exit_info.value.code == 2 and "--maps needs --heatmap-dir" in capsys.readouterr().err


def test_an_image_without_lungs_is_flagged_by_the_guard(segmenter, shipped_models):
    from core import inference
    from core.ood import OODCheck

    flat = np.full((224, 224), 90, np.uint8)
    flat[::8] = 160  # stripes: nothing like a pair of lungs
    reading = inference.score([flat], [], OODCheck(), segmenter)[0]
    assert reading.flagged


def test_the_segmenter_finds_the_same_lungs_in_another_encoding(segmenter, data_dir):
    from core.augment import VARIANTS, encode_variant
    from core.data import list_split, load_images
    from core.inference import read_upload
    from core.lungs import dice

    gray = load_images(list_split(data_dir, "test")[::60])
    base = segmenter.masks(gray)
    for variant in VARIANTS:
        again = segmenter.masks(np.stack([read_upload(encode_variant(g, variant)).gray for g in gray]))
        assert dice(again, base).mean() >= 0.97, variant


def test_a_lite0_model_finds_the_same_lungs_in_its_own_pass(segmenter, shipped_models, data_dir):
    """A Lite0 model fed the segmenter's input (equalised, not blurred) shares its frozen backbone layers: one call
    gives P, map and lungs; any other model gives the same answer with or without the segmenter."""
    from core import inference
    from core.data import list_split, load_images

    gray = load_images(list_split(data_dir, "test")[::90])
    alone = segmenter.masks(gray)
    for name in shipped_models:
        model, plain = inference.load_model(name, lungs=segmenter), inference.load_model(name)
        # a model fed another input (blurred first, since v9 and v11) cannot give the segmenter's lungs from its pass
        assert model.gives_lungs == (model.spec.equalize and not model.spec.blur_sigma and name != "baseline"), name
        found = model.diagnose_gray(gray, lungs=True)
        if model.gives_lungs:
            assert np.array_equal(np.stack([d.lungs for d in found]), alone), name
        assert [d.probability for d in found] == pytest.approx([d.probability for d in plain.diagnose_gray(gray)])

    # since v13 every shipped model blurs its input, so a Lite0 model fed as the segmenter is (ImageNet backbone,
    # a fresh head) shows that one compiled call gives the probability, the map and the very lungs it finds
    from core.gradcam import GradCam
    from core.models import GRADCAM_LAYERS, build_model
    from core.preprocessing import to_model_input
    from core.segmenter import SPEC, TAPS, THRESHOLD

    fed_alike = build_model("transfer", "efficientnet_lite0")
    head = segmenter.head_for(fed_alike, SPEC)
    assert head is not None and segmenter.head_for(fed_alike, replace(SPEC, blur_sigma=2.0)) is None
    probs, signed, lungs = GradCam(fed_alike, GRADCAM_LAYERS["efficientnet_lite0"], head, TAPS).with_head(
        to_model_input(gray, SPEC))
    assert np.array_equal(np.asarray(lungs) >= THRESHOLD, alone) and len(probs) == len(signed) == len(gray)


def test_training_ships_a_segmenter_that_loads_and_resumes(tmp_path, monkeypatch):
    """A tiny run on generated images and masks: decoder, card, sha256 check; asking for more epochs resumes."""
    from PIL import Image

    from core.segmenter import LungSegmenter, train_segmenter
    from tests.helpers import tiny_dataset

    monkeypatch.setenv("PNEUMONIA_CACHE", str(tmp_path / "cache"))
    data = tiny_dataset(tmp_path / "chest_xray", n=10)
    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "masks" / "train" / label).mkdir(parents=True)
        for image in (data / "train" / label).iterdir():
            Image.fromarray(PAIR.astype(np.uint8) * 255).save(tmp_path / "masks" / "train" / label / f"{image.stem}.png")
    card = train_segmenter(data, tmp_path / "masks", tmp_path / "models", views=2, epochs=1)
    assert card["training"]["epochs_run"] == 1 and 0 <= card["val_metrics"]["dice_mean"] <= 1
    card = train_segmenter(data, tmp_path / "masks", tmp_path / "models", views=2, epochs=2)
    assert card["training"]["epochs_run"] == 2  # resumed after epoch 1, not started again
    found = LungSegmenter(tmp_path / "models").masks(np.stack([xray_like(224, 224)] * 2))
    assert found.shape == (2, 224, 224) and found.dtype == bool
