"""Dataset discovery, patient ids, the patient-level split and the fingerprint."""

from pathlib import Path

import numpy as np
import pytest

from core.data import (
    DATA_ENV,
    DatasetNotFoundError,
    Sample,
    find_data_dir,
    fingerprint,
    identical_images,
    list_split,
    patient_id,
    split_train_val,
)
from tests.helpers import encode, xray_like


@pytest.mark.parametrize(
    "name, patient",
    [
        ("person1430_bacteria_3695.jpeg", "person1430"),
        ("person1430_bacteria_3696.jpeg", "person1430"),
        ("person1314_virus_2269.jpeg", "person1314"),
        ("IM-0011-0001-0002.jpeg", "IM-0011"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-0058-0001.jpeg", "NORMAL2-IM-0058"),
        ("something_else.png", "something_else"),
    ],
)
def test_patient_id(name, patient):
    assert patient_id(name) == patient


def _fake_dataset(root: Path, n_patients=60, per_patient=3) -> Path:
    png = encode(xray_like(32, 32), "PNG")
    for split in ("train", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            (root / split / label).mkdir(parents=True)
    for p in range(n_patients):
        for k in range(per_patient):
            if p % 3 == 0:
                (root / "train" / "NORMAL" / f"IM-{p:04d}-{k:04d}.jpeg").write_bytes(png)
            else:
                (root / "train" / "PNEUMONIA" / f"person{p}_bacteria_{k}.jpeg").write_bytes(png)
    return root


def test_find_data_dir_order(tmp_path, monkeypatch):
    data = _fake_dataset(tmp_path / "chest_xray")
    monkeypatch.setenv(DATA_ENV, str(data))
    assert find_data_dir() == data
    assert find_data_dir(str(data)) == data
    with pytest.raises(DatasetNotFoundError, match="does not look like"):
        find_data_dir(tmp_path / "nowhere")
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match="does not look like"):
        find_data_dir()


def test_split_keeps_patients_apart_and_is_deterministic(tmp_path):
    samples = list_split(_fake_dataset(tmp_path / "d", n_patients=90), "train")
    train, val = split_train_val(samples, 0.1, seed=7)
    assert {s.patient for s in train}.isdisjoint({s.patient for s in val})
    assert len(train) + len(val) == len(samples)
    assert 0.07 <= len(val) / len(samples) <= 0.13
    assert {s.label for s in val} == {0, 1}
    again = split_train_val(samples, 0.1, seed=7)
    assert [s.name for s in again[1]] == [s.name for s in val]
    other = split_train_val(samples, 0.1, seed=8)
    assert [s.name for s in other[1]] != [s.name for s in val]


def test_fingerprint_changes_with_content(tmp_path):
    root = _fake_dataset(tmp_path / "d", n_patients=6)
    samples = list_split(root, "train")
    fp = fingerprint(samples)
    assert fp == fingerprint(list(reversed(samples)))
    assert fp != fingerprint(samples[:-1])
    samples[0].path.write_bytes(samples[0].path.read_bytes() + b"x")
    assert fp != fingerprint(samples)


def test_real_split_by_patient(data_dir):
    samples = list_split(data_dir, "train")
    train, val = split_train_val(samples)
    assert {s.patient for s in train}.isdisjoint({s.patient for s in val})
    assert 0.09 <= len(val) / len(samples) <= 0.11
    ratio = lambda xs: np.mean([s.label for s in xs])  # noqa: E731
    assert abs(ratio(val) - ratio(samples)) < 0.03


def test_shipped_cards_record_the_split_we_compute(data_dir, shipped_models):
    from core.registry import load_card

    samples = list_split(data_dir, "train")
    for name in shipped_models:
        card = load_card(name)
        train, val = split_train_val(samples, card.config["val_fraction"], card.seed)
        assert card.data["fingerprint"] == fingerprint(train + val)
        assert card.data["val_images"] == len(val)


def test_sample_properties():
    s = Sample(Path("/x/PNEUMONIA/person3_virus_9.jpeg"), 1)
    assert (s.name, s.patient, s.label) == ("person3_virus_9.jpeg", "person3", 1)


def test_class_weights_by_hand():
    from core.data import class_weights

    assert np.allclose(class_weights([0, 1, 1, 1]), [4 / 2, 4 / 6])


def test_batches_shapes_weights_and_shuffle():
    from core.batches import Batches
    from core.preprocessing import InputSpec

    gray = np.stack([np.full((224, 224), i, np.uint8) for i in range(10)])
    labels = np.array([0, 1] * 5)
    weights = np.array([2.0, 0.5], np.float32)
    batches = Batches(gray, labels, InputSpec(), batch_size=4, shuffle=True, weights=weights, seed=1)
    assert len(batches) == 3
    x, y, w = batches[0]
    assert x.shape == (4, 224, 224, 3) and y.shape == (4, 1)
    assert np.array_equal(w, weights[y[:, 0].astype(int)])
    seen = np.concatenate([batches[i][0][:, 0, 0, 0] for i in range(3)]) * 128 + 127
    assert sorted(np.round(seen).astype(int)) == list(range(10)) and list(np.round(seen)) != list(range(10))


def test_identical_images_are_found_by_their_pixels(tmp_path):
    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "test" / label).mkdir(parents=True)
    img = xray_like(300, 260, seed=1)
    (tmp_path / "test" / "NORMAL" / "IM-0001-0001.png").write_bytes(encode(img, "PNG"))
    (tmp_path / "test" / "NORMAL" / "IM-0002-0001.png").write_bytes(encode(img, "PNG", ))  # same pixels
    (tmp_path / "test" / "PNEUMONIA" / "person1_virus_1.png").write_bytes(encode(xray_like(300, 260, seed=2), "PNG"))
    found = identical_images(list_split(tmp_path, "test"))
    assert found == {"IM-0001-0001.png": ["IM-0002-0001.png"], "IM-0002-0001.png": ["IM-0001-0001.png"]}
