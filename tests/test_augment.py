"""The encoding path as augmentation, in the batch pipeline and the frozen-backbone head."""

import numpy as np
from PIL import Image, ImageFilter

from core.augment import encoding_path
from core.batches import Batches
from core.preprocessing import InputSpec
from tests.helpers import xray_like

SMOOTH = np.asarray(Image.fromarray(xray_like(224, 224, seed=4)).filter(ImageFilter.GaussianBlur(1.5)))


def test_encoding_path_keeps_the_picture_and_changes_the_file():
    rng = np.random.default_rng(0)
    views = [encoding_path(SMOOTH, rng) for _ in range(20)]
    assert all(v.shape == SMOOTH.shape and v.dtype == np.uint8 for v in views)
    assert sum(not np.array_equal(v, SMOOTH) for v in views) >= 15  # most views differ...
    assert max(np.abs(v.astype(int) - SMOOTH).mean() for v in views) < 4  # ...but only a little
    again = [encoding_path(SMOOTH, np.random.default_rng(0)) for _ in range(2)]
    assert np.array_equal(again[0], again[1])  # seeded


def test_batches_reencode_training_images_only_when_asked():
    gray = np.stack([SMOOTH] * 4)
    plain = Batches(gray, np.zeros(4), InputSpec(), batch_size=4)[0][0]
    encoded = Batches(gray, np.zeros(4), InputSpec(), batch_size=4, encoding=True, seed=3)[0][0]
    assert plain.shape == encoded.shape and np.array_equal(plain[0], plain[1])
    assert not np.array_equal(plain, encoded)


def test_a_saved_run_without_a_later_setting_still_resumes(tmp_path):
    from core.checkpoints import check_same_run
    from core.config import get_recipe

    recipe = get_recipe("transfer_v1")  # a recipe that leaves the later settings at their defaults
    saved = recipe.to_dict()
    del saved["encoding_augment"], saved["blur_sigma"]  # written before the settings existed
    check_same_run({"epoch": 2, "history": [{}], "recipe": saved}, recipe, tmp_path)  # no error
