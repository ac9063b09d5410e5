"""A tiny end-to-end training run on generated images: artifacts, card, resume."""

import csv
import json
from dataclasses import replace

import numpy as np
import pytest

from core.config import RECIPES, get_recipe
from core.registry import load_card, sha256_file
from tests.helpers import PAIR, tiny_dataset


def test_train_writes_artifacts_and_resumes(tmp_path, monkeypatch):
    from core.training import train

    monkeypatch.setenv("PNEUMONIA_CACHE", str(tmp_path / "cache"))
    data = tiny_dataset(tmp_path / "chest_xray")
    recipe = get_recipe("baseline").with_overrides(input_size=(64, 64), epochs=2, batch_size=8, val_fraction=0.25)
    folder = train(recipe, data, out_root=tmp_path / "models", fresh=True)
    card = load_card("baseline", tmp_path / "models")
    assert card.weights_sha256 == sha256_file(folder / "model.keras")
    assert card.input_shape == [64, 64, 1] and card.epochs_run == 2
    assert card.data["train_patients"] + card.data["val_patients"] == 48
    assert 0 < card.threshold < 1 and card.gradcam_layer == "last_conv"
    with open(folder / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(float(r["seconds"]) > 0 for r in rows)  # each epoch's wall time

    # resume: ask for one more epoch; only epoch 3 runs, history keeps 1-2
    state = json.loads((tmp_path / "cache" / "runs" / "baseline" / "state.json").read_text())
    assert state["epoch"] == 2
    train(recipe.with_overrides(epochs=3), data, out_root=tmp_path / "models")
    with open(folder / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]

    # another seed must not silently continue this run
    with pytest.raises(ValueError, match="--fresh"):
        train(recipe.with_overrides(epochs=3, seed=7), data, out_root=tmp_path / "models")


def test_an_interrupted_run_keeps_its_time_and_resumes(tmp_path, monkeypatch):
    """A run killed after epoch 1 resumes at epoch 2, and the card counts both calls' training time."""
    from core import checkpoints, training

    monkeypatch.setenv("PNEUMONIA_CACHE", str(tmp_path / "cache"))
    data = tiny_dataset(tmp_path / "chest_xray", n=8)
    recipe = get_recipe("baseline").with_overrides(input_size=(64, 64), epochs=2, batch_size=8, val_fraction=0.25)
    save = checkpoints.Resumable.on_epoch_end

    def killed_after_first_epoch(self, epoch, logs=None):
        save(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.Resumable, "on_epoch_end", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        training.train(recipe, data, out_root=tmp_path / "models", fresh=True)
    state = json.loads((tmp_path / "cache" / "runs" / "baseline" / "state.json").read_text())
    assert state["epoch"] == 1 and not state.get("done")
    assert state["elapsed_s"] > 0

    monkeypatch.setattr(checkpoints.Resumable, "on_epoch_end", save)
    training.train(recipe, data, out_root=tmp_path / "models")
    card = load_card("baseline", tmp_path / "models")
    assert card.epochs_run == 2
    resumed = json.loads((tmp_path / "cache" / "runs" / "baseline" / "state.json").read_text())
    assert resumed["elapsed_s"] > state["elapsed_s"]
    assert card.training_time_s >= round(resumed["elapsed_s"], 1)


def test_recipes_are_complete():
    ft = RECIPES["finetuned"]
    # v11 (docs/lungs.md, section 7): transfer on blurred input, its head on re-encoded views too; v15 (section 11):
    # the same on a sigma-3 low-pass; v16 (section 12): v15 without equalisation, and its notes no longer claim it
    # v21 (section 17): v16 on a sigma-4 low-pass, v16 kept
    tr = RECIPES["transfer"]
    assert tr.blur_sigma == 4.0 and tr.encoding_augment and not tr.equalize and not tr.trainable_top_layers
    assert not any("equalis" in n and "no histogram equalisation" not in n for n in tr.notes)
    assert any("sigma 4 px)" in n for n in tr.notes) and not any("(Gaussian, sigma 3 px)" in n for n in tr.notes)
    v16 = RECIPES["transfer_v16"]
    assert replace(tr, name="transfer_v16", blur_sigma=3.0, notes=[]) == replace(v16, notes=[])
    v15 = RECIPES["transfer_v15"]
    assert replace(v16, name="transfer_v15", equalize=True, notes=[]) == replace(v15, notes=[])
    assert replace(v15, name="transfer_v11", blur_sigma=2.0, notes=[]) == replace(RECIPES["transfer_v11"], notes=[])
    # v8 was trained before the blur existed, and its recipe says so
    assert RECIPES["lungfocus_v8_head"].blur_sigma == 0.0
    assert set(RECIPES) == {"baseline", "transfer", "transfer_v1", "transfer_v11", "transfer_v14", "transfer_v15",
                            "transfer_v17", "finetuned", "finetuned_v13", "finetuned_v6", "lungfocus_v8_head", "lungfocus_v8", "lungfocus",
                            "lungfocus_ft", "baseline_v11", "lungfocus_v9", "transfer_v16", "finetuned_v17",
                            "lungfocus_v20", "lungfocus_v22", "lungfocus_v23"}
    # v19 (section 15): 'baseline' on the sigma-3 low-pass, v11's kept; its notes say sigma 3 and no equalisation
    bl = RECIPES["baseline"]
    assert bl.blur_sigma == 3.0 and replace(bl, name="baseline_v11", blur_sigma=2.0, notes=[]) == \
        replace(RECIPES["baseline_v11"], notes=[])
    assert any("sigma 3 px" in n for n in bl.notes) and not any("sigma 2 px" in n or "equalis" in n for n in bl.notes)
    # v14 (section 10): v11's with the consistency grid; 'finetuned' still starts from v11's
    v14 = RECIPES["transfer_v14"]
    assert v14.consistency_grid == (0.0, 1.0, 3.0, 10.0, 30.0, 100.0) and not tr.consistency_grid
    assert replace(v14, name="transfer_v11", consistency_grid=(), notes=[]) == replace(RECIPES["transfer_v11"], notes=[])
    # v17 (section 13): 'finetuned' without equalisation in both stages, from 'transfer_v17'; v13 kept, from v11's
    # v21 (section 17): 'finetuned' on the sigma-4 low-pass from the v21 'transfer'; v17's kept, from 'transfer_v17'
    assert ft.init_from == "transfer" and ft.blur_sigma == 4.0 and not ft.equalize
    assert any("sigma 4 px)" in n for n in ft.notes) and not any("sigma 2 px" in n or "transfer_v17" in n for n in ft.notes)
    ft17 = RECIPES["finetuned_v17"]
    assert replace(ft, name="finetuned_v17", init_from="transfer_v17", blur_sigma=2.0, notes=[]) == replace(ft17, notes=[])
    assert ft17.init_from == "transfer_v17" and RECIPES["finetuned_v13"].init_from == "transfer_v11"
    assert replace(ft17, name="finetuned_v13", init_from="transfer_v11", equalize=True, notes=[]) == \
        replace(RECIPES["finetuned_v13"], notes=[])
    assert replace(RECIPES["transfer_v17"], name="transfer_v11", equalize=True, notes=[]) == \
        replace(RECIPES["transfer_v11"], notes=[])
    assert not any("equalis" in n and "no histogram equalisation" not in n and "without equalisation" not in n
                   for n in ft.notes + RECIPES["transfer_v17"].notes)
    assert not RECIPES["lungfocus"].consistency_grid
    # v23 (section 19): v10's fine-tuning recipe on v22's input, from v22's frozen-head recipe, kept as its stage 1
    lf23, lf22 = RECIPES["lungfocus_v23"], RECIPES["lungfocus_v22"]
    assert lf23.init_from == "lungfocus_v22" and lf23.kind == "lungpool" and lf23.trainable_top_layers == 41
    assert replace(lf23, name="lungfocus_ft", init_from="lungfocus_v9", equalize=True, blur_sigma=2.0, notes=[]) == \
        replace(RECIPES["lungfocus_ft"], notes=[])
    assert lf23.notes[0].startswith("Stage 2 of v22's 'lungfocus'") and lf23.notes[1:-1] == lf22.notes[1:-1]
    # v25 (section 23): v23's with its stage 2 on pairs of views (lambda 1) and no head dropout; v23 kept
    lf25 = RECIPES["lungfocus"]
    assert (lf25.consistency_weight, lf25.dropout, lf23.consistency_weight, lf23.dropout) == (1.0, 0.0, 0.0, 0.5)
    assert replace(lf25, name="lungfocus_v23", consistency_weight=0.0, dropout=0.5, notes=[]) == replace(lf23, notes=[])
    assert lf25.notes[:-1] == lf23.notes[:-1] and lf25.notes[-1].startswith("v25 (docs/lungs.md, section 23)")
    # v22 (section 18): v20's 'lungfocus' on the sigma-4 low-pass; v20 kept, and the notes say sigma 4, not 3
    lf20 = RECIPES["lungfocus_v20"]
    assert replace(lf22, name="lungfocus_v20", blur_sigma=3.0, notes=[]) == replace(lf20, notes=[])
    assert any("sigma 4 px)" in n for n in lf22.notes) and not any("sigma 3 px" in n for n in lf22.notes)
    assert any("six re-encoded views" in n for n in lf22.notes)
    # v20 (section 16): v9's 'lungfocus' without equalisation, on the sigma-3 low-pass, six re-encoded views; v9 kept
    assert (lf20.equalize, lf20.blur_sigma, lf20.encoded_views) == (False, 3.0, 6)
    assert replace(lf20, name="lungfocus_v9", equalize=True, blur_sigma=2.0, encoded_views=3, notes=[]) == \
        replace(RECIPES["lungfocus_v9"], notes=[])
    assert any("six re-encoded views" in n for n in lf20.notes) and any("sigma 3 px" in n for n in lf20.notes)
    assert not any("sigma 2 px" in n or ("equalis" in n and "no histogram equalisation" not in n) for n in lf20.notes)
    # v10 (docs/lungs.md, section 6): the finetuned recipe on v9's model and input, one seed, no central blanking
    v10 = RECIPES["lungfocus_ft"]
    assert v10.kind == "lungpool" and v10.init_from == "lungfocus_v9" and v10.blur_sigma == 2.0 and v10.soup_seeds == (42,)
    changed = ("name", "kind", "notes", "blur_sigma", "encoding_augment", "init_from", "central_erasing", "soup_seeds")
    assert {k: v for k, v in v10.to_dict().items() if k not in changed} == \
        {k: v for k, v in RECIPES["finetuned_v6"].to_dict().items() if k not in changed}
    # v9 (docs/lungs.md, section 5): the transfer recipe of its day (v11's), pooled over the lungs, blurred input,
    # re-encoded views
    v9 = RECIPES["lungfocus_v9"]
    assert v9.kind == "lungpool" and v9.blur_sigma == 2.0 and v9.encoding_augment and v9.equalize
    differs = ("name", "kind", "notes", "blur_sigma", "encoding_augment")
    assert {k: v for k, v in v9.to_dict().items() if k not in differs} == \
        {k: v for k, v in RECIPES["transfer_v11"].to_dict().items() if k not in differs}
    lf = RECIPES["lungfocus_v8"]
    assert lf.init_from == "lungfocus_v8_head" and RECIPES["lungfocus_v8_head"].lung_margin == lf.lung_margin == 7
    assert lf.encoding_augment and lf.lung_margin_jitter == 4
    # v8 is the finetuned recipe of its day (v6) with only its input (and stage 1) changed
    v6 = RECIPES["finetuned_v6"]
    same = lambda r: {k: v for k, v in r.to_dict().items()  # noqa: E731
                      if k not in ("name", "init_from", "notes", "lung_margin", "lung_margin_jitter", "encoding_augment")}
    assert same(lf) == same(v6)
    assert (ft.learning_rate, ft.label_smoothing, ft.dropout, ft.class_weights) == (1e-4, 0.1, 0.5, True)
    # v13 (docs/lungs.md, section 9): v6 on blurred, re-encoded input from the v11 transfer; two runs, WiSE-FT 0.25
    v13 = RECIPES["finetuned_v13"]
    assert v13.trainable_top_layers == 41 and v13.init_from == "transfer_v11" and v13.blur_sigma == 2.0
    assert v13.encoding_augment and (v13.soup_seeds, v13.wise_ft_alpha) == ((42, 43), 0.25)
    differs = ("name", "notes", "blur_sigma", "encoding_augment", "init_from", "soup_seeds", "wise_ft_alpha",
               "wise_ft_alpha_choice")
    assert {k: v for k, v in v13.to_dict().items() if k not in differs} == \
        {k: v for k, v in v6.to_dict().items() if k not in differs}
    # v6 started from the transfer of before v11, kept as transfer_v1 (fed as v6 is)
    assert v6.init_from == "transfer_v1" and (v6.soup_seeds, v6.wise_ft_alpha) == ((42, 43, 44, 45), 0.5)
    v1 = RECIPES["transfer_v1"]
    assert not v1.blur_sigma and not v1.encoding_augment and v1.equalize == v6.equalize == v13.equalize
    with pytest.raises(KeyError, match="Available"):
        get_recipe("resnet")


def test_two_stage_transfer_then_finetune(tmp_path, monkeypatch):
    """The shipped recipe chain on tiny data: frozen-backbone head, then fine-tuning from it."""
    import keras

    from core.registry import load_keras_model
    from core.training import train

    monkeypatch.setenv("PNEUMONIA_CACHE", str(tmp_path / "cache"))
    data = tiny_dataset(tmp_path / "chest_xray", n=16)
    out = tmp_path / "models"
    train(get_recipe("transfer").with_overrides(epochs=2, batch_size=8, val_fraction=0.25), data, out_root=out)
    transfer_card = load_card("transfer", out)
    assert transfer_card.trainable_parameters_in_training == 1281  # the head only
    # stage 2 takes every weight from its start: it needs no ImageNet weights (a GPU machine cannot convert them)
    from core import backbones
    monkeypatch.setattr(backbones, "lite0_imagenet_weights", lambda: pytest.fail("stage 2 read the ImageNet weights"))
    # one stage-2 run, not the recipe's two-seed soup (soups have their own test below)
    train(get_recipe("finetuned").with_overrides(epochs=1, batch_size=8, val_fraction=0.25, soup_seeds=()), data,
          out_root=out)
    card = load_card("finetuned", out)
    assert card.initialised_from == {"model": "transfer", "sha256": transfer_card.weights_sha256}
    before, after = load_keras_model("transfer", out), load_keras_model("finetuned", out)
    changed = lambda layer: not np.allclose(before.get_layer(layer).get_weights()[0],  # noqa: E731
                                            after.get_layer(layer).get_weights()[0])
    assert changed("top_conv") and changed("logit")
    assert not changed("stem_conv") and not changed("block5_project_conv")
    assert isinstance(after.get_layer("top_bn"), keras.layers.BatchNormalization) and not changed("top_bn")


def test_finetuning_refuses_a_stage_one_fed_differently(tmp_path, monkeypatch):
    """Stage 2 must see its input prepared as stage 1 was (e.g. both blurred or neither: v11's blurred transfer cannot
    be the stage 1 of v6, the unblurred finetuned recipe)."""
    from core.training import train

    monkeypatch.setenv("PNEUMONIA_CACHE", str(tmp_path / "cache"))
    data = tiny_dataset(tmp_path / "chest_xray", n=8)
    out = tmp_path / "models"
    train(get_recipe("transfer").with_overrides(epochs=1, batch_size=8, val_fraction=0.25), data, out_root=out)
    with pytest.raises(ValueError, match="differently preprocessed"):
        train(get_recipe("finetuned_v6").with_overrides(epochs=1, batch_size=8, val_fraction=0.25, init_from="transfer"),
              data, out_root=out)


def test_cached_backbone_features_are_reused_only_for_the_same_settings(tmp_path, monkeypatch):
    from core.training import train

    monkeypatch.setenv("PNEUMONIA_CACHE", str(tmp_path / "cache"))
    data = tiny_dataset(tmp_path / "chest_xray", n=8)
    run = tmp_path / "cache" / "runs" / "transfer"
    recipe = get_recipe("transfer").with_overrides(epochs=1, batch_size=8, val_fraction=0.25)
    train(recipe, data, out_root=tmp_path / "models")
    with np.load(run / "features.npz") as f:
        assert json.loads(str(f["key"]))["equalize"] is False  # v16 'transfer' does not equalise
    (run / "state.json").unlink()  # as if the run had been killed before it finished
    train(recipe.with_overrides(equalize=True), data, out_root=tmp_path / "models")
    with np.load(run / "features.npz") as f:
        assert json.loads(str(f["key"]))["equalize"] is True


def test_soup_trains_each_seed_on_one_split_and_averages_the_weights(tmp_path, monkeypatch):
    """A soup: one stage-2 run per seed from the same start and split; the shipped weights are their mean."""
    from core.registry import load_keras_model
    from core.training import train

    monkeypatch.setenv("PNEUMONIA_CACHE", str(tmp_path / "cache"))
    data = tiny_dataset(tmp_path / "chest_xray", n=8)
    out = tmp_path / "models"
    small = dict(epochs=1, batch_size=8, val_fraction=0.25, wise_ft_alpha=1.0)  # the soup alone, not mixed with its start
    train(get_recipe("transfer_v1").with_overrides(**small), data, out_root=out)
    train(get_recipe("finetuned_v6").with_overrides(soup_seeds=(5, 6), **small), data, out_root=out)
    card = load_card("finetuned_v6", out)
    runs = tmp_path / "cache" / "runs" / "finetuned_v6"
    members = [keras_load(runs / f"seed-{s}" / "best.keras") for s in (5, 6)]
    soup = load_keras_model("finetuned_v6", out)
    a, b, m = (x.get_layer("top_conv").get_weights()[0] for x in (*members, soup))
    assert not np.allclose(a, b)  # the seed changed the run
    np.testing.assert_allclose(m, (a + b) / 2, rtol=1e-6, atol=1e-7)
    assert [r["seed"] for r in card.soup["members"]] == [5, 6] and card.config["soup_seeds"] == [5, 6]
    assert card.seed == 42 and card.data["split"].endswith("seed 42)")  # members share the split
    for s in (5, 6):
        assert json.loads((runs / f"seed-{s}" / "state.json").read_text())["recipe"]["seed"] == s
    with open(tmp_path / "models" / "finetuned_v6" / "history.csv") as f:
        assert {r["member_seed"] for r in csv.DictReader(f)} == {"5", "6"}

    # run again with one more member: the finished ones are reused, not retrained
    before = sha256_file(runs / "seed-5" / "best.keras")
    train(get_recipe("finetuned_v6").with_overrides(soup_seeds=(5, 6, 7), **small), data, out_root=out)
    assert sha256_file(runs / "seed-5" / "best.keras") == before
    assert len(load_card("finetuned_v6", out).soup["members"]) == 3


def keras_load(path):
    import keras

    return keras.saving.load_model(path, compile=False)


def test_averaging_refuses_models_that_did_not_start_from_one_point():
    import keras

    from core.averaging import average_weights

    def tiny(seed):
        keras.utils.set_random_seed(seed)
        inp = keras.Input((4,))
        bn = keras.layers.BatchNormalization(name="bn")
        bn.trainable = False
        return keras.Model(inp, keras.layers.Dense(1)(bn(inp)))

    a, b = tiny(0), tiny(1)
    b.get_layer("bn").moving_mean.assign(np.ones(4, "float32"))
    with pytest.raises(ValueError, match="did not start from one point"):
        average_weights([a, b])
    with pytest.raises(ValueError, match="one architecture"):
        average_weights([a, keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])])
    c, d = tiny(0), tiny(1)
    want = (c.layers[-1].get_weights()[0] + d.layers[-1].get_weights()[0]) / 2
    np.testing.assert_allclose(average_weights([c, d]).layers[-1].get_weights()[0], want, rtol=1e-6)


def test_train_cli_reads_soup_seeds(capsys):
    from core.train import _seeds, main

    assert _seeds("42,43") == (42, 43) and _seeds("none") == ()
    for bad in ("42,x", "1,1"):
        with pytest.raises(SystemExit) as exit_:
            main(["finetuned", "--soup-seeds", bad])
        assert exit_.value.code == 2
    assert "soup-seeds" in capsys.readouterr().err


def test_train_cli_starts_a_two_stage_recipe_from_another_model(tmp_path, monkeypatch, capsys):
    """--init-from sets stage 1 (a candidate starts from a candidate transfer); one-stage recipes refuse it."""
    import core.train

    seen = []
    monkeypatch.setattr(core.train, "train", lambda recipe, *a, **k: seen.append(recipe) or tmp_path)
    assert core.train.main(["finetuned", "--init-from", "transfer", "--out", str(tmp_path)]) == 0
    assert core.train.main(["finetuned", "--out", str(tmp_path)]) == 0
    assert [r.init_from for r in seen] == ["transfer", get_recipe("finetuned").init_from]
    with pytest.raises(SystemExit) as exit_:
        core.train.main(["baseline", "--init-from", "transfer"])
    assert exit_.value.code == 2 and "two-stage" in capsys.readouterr().err
    assert len(seen) == 2


def test_wise_ft_ships_the_mix_of_stage_one_and_the_fine_tuned_run(tmp_path, monkeypatch):
    """WiSE-FT: the shipped weights are (1 - a) x stage 1 + a x the finished run; the card says so."""
    from core.registry import load_keras_model
    from core.training import train

    monkeypatch.setenv("PNEUMONIA_CACHE", str(tmp_path / "cache"))
    data = tiny_dataset(tmp_path / "chest_xray", n=8)
    out = tmp_path / "models"
    small = dict(epochs=1, batch_size=8, val_fraction=0.25, soup_seeds=())
    train(get_recipe("transfer_v1").with_overrides(**small), data, out_root=out)
    train(get_recipe("finetuned_v6").with_overrides(wise_ft_alpha=0.25, **small), data, out_root=out)
    start = load_keras_model("transfer_v1", out)
    run = keras_load(tmp_path / "cache" / "runs" / "finetuned_v6" / "best.keras")
    shipped = load_keras_model("finetuned_v6", out)
    for layer in ("top_conv", "logit"):
        s, r, m = (x.get_layer(layer).get_weights()[0] for x in (start, run, shipped))
        assert not np.allclose(s, r)  # fine-tuning moved it, so the mix is a real test
        np.testing.assert_allclose(m, 0.75 * s + 0.25 * r, rtol=1e-5, atol=1e-7)
    wise = load_card("finetuned_v6", out).wise_ft
    assert wise["alpha"] == 0.25 and wise["start"] == "transfer_v1"
    assert wise["alpha_choice"] == get_recipe("finetuned_v6").wise_ft_alpha_choice  # the recipe says how α was chosen
    assert wise["start_sha256"] == load_card("transfer_v1", out).weights_sha256
    assert set(wise["val_roc_auc_by_alpha"]) == {"0", "0.25", "0.5", "0.75", "1"}
    assert wise["val_roc_auc_by_alpha"]["0.25"] == pytest.approx(load_card("finetuned_v6", out).val_metrics["roc_auc"])

    # the finished run is reused for another alpha (the mix is not part of the run's settings)
    before = sha256_file(tmp_path / "cache" / "runs" / "finetuned_v6" / "best.keras")
    train(get_recipe("finetuned_v6").with_overrides(wise_ft_alpha=1.0, **small), data, out_root=out)
    assert sha256_file(tmp_path / "cache" / "runs" / "finetuned_v6" / "best.keras") == before
    assert load_card("finetuned_v6", out).wise_ft is None
    np.testing.assert_array_equal(load_keras_model("finetuned_v6", out).get_layer("logit").get_weights()[0],
                                  run.get_layer("logit").get_weights()[0])


def test_wise_ft_needs_a_start_and_a_valid_alpha(tmp_path, capsys):
    from core.averaging import average_weights
    from core.train import _alpha, main
    from core.training import train

    for recipe in (get_recipe("baseline").with_overrides(wise_ft_alpha=0.5),
                   get_recipe("finetuned").with_overrides(wise_ft_alpha=1.5)):
        with pytest.raises(ValueError, match="WiSE-FT"):
            train(recipe, tmp_path, out_root=tmp_path)
    with pytest.raises(ValueError, match="coefficient"):
        average_weights([object(), object()], [0.7, 0.7])
    assert _alpha("0.5") == 0.5
    for bad in ("1.5", "-0.1", "half", "nan"):
        with pytest.raises(SystemExit) as exit_:
            main(["finetuned", "--wise-ft-alpha", bad])
        assert exit_.value.code == 2
    assert "wise-ft-alpha" in capsys.readouterr().err


def test_a_frozen_head_trains_on_reencoded_views(tmp_path, monkeypatch):
    """With encoding_augment, the transfer head sees each image and three re-encodings of it."""
    from core.heads import ENCODED_VIEWS
    from core.training import train

    monkeypatch.setenv("PNEUMONIA_CACHE", str(tmp_path / "cache"))
    data = tiny_dataset(tmp_path / "chest_xray", n=8)
    recipe = get_recipe("transfer").with_overrides(epochs=2, batch_size=8, val_fraction=0.25, encoding_augment=True)
    train(recipe, data, out_root=tmp_path / "models", fresh=True)
    with np.load(tmp_path / "cache" / "runs" / "transfer" / "features.npz") as f:
        assert len(f["train"]) == (1 + ENCODED_VIEWS) * 12 and len(f["val"]) == 4
    assert load_card("transfer", tmp_path / "models").config["encoding_augment"] is True


def test_the_number_of_reencoded_views_is_the_recipes(tmp_path, monkeypatch, capsys):
    """v20: ``encoded_views`` sets how many re-encoded views of each image the frozen head sees; the card records it,
    while recipes at the default keep their settings (and so their cached runs) as before."""
    from core.heads import ENCODED_VIEWS
    from core.train import main
    from core.training import train

    assert ENCODED_VIEWS == 3 and "encoded_views" not in get_recipe("lungfocus_v9").to_dict()
    assert get_recipe("lungfocus_v22").to_dict()["encoded_views"] == 6
    for argv in (["finetuned", "--encoded-views", "6"], ["transfer", "--encoded-views", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
    assert "--encoded-views" in capsys.readouterr().err
    monkeypatch.setenv("PNEUMONIA_CACHE", str(tmp_path / "cache"))
    data = tiny_dataset(tmp_path / "chest_xray", n=8)
    recipe = get_recipe("transfer").with_overrides(epochs=1, batch_size=8, val_fraction=0.25, encoding_augment=True,
                                                   encoded_views=1)
    train(recipe, data, out_root=tmp_path / "models", fresh=True)
    with np.load(tmp_path / "cache" / "runs" / "transfer" / "features.npz") as f:
        assert len(f["train"]) == 2 * 12
    assert load_card("transfer", tmp_path / "models").config["encoded_views"] == 1


def test_a_lung_focused_model_trains_on_human_masks_and_serves_on_found_lungs(tmp_path, monkeypatch):
    """Stage 1 of v8's 'lungfocus' on tiny data: its card says it sees only the lungs, images without a mask are
    left out, and serving feeds it the lungs found by a segmenter (it cannot run without them)."""
    from PIL import Image

    from core.inference import load_model, score
    from core.preprocessing import to_model_input
    from core.segmenter import LungSegmenter
    from core.training import train

    monkeypatch.setenv("PNEUMONIA_CACHE", str(tmp_path / "cache"))
    data = tiny_dataset(tmp_path / "chest_xray", n=12)
    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "masks" / "train" / label).mkdir(parents=True)
        for image in sorted((data / "train" / label).iterdir())[1:]:  # the first image of each class has no mask
            Image.fromarray(PAIR.astype(np.uint8) * 255).save(tmp_path / "masks" / "train" / label / f"{image.stem}.png")
    monkeypatch.setenv("PNEUMONIA_MASKS_DIR", str(tmp_path / "masks"))
    out = tmp_path / "models"
    train(get_recipe("lungfocus_v8_head").with_overrides(epochs=2, batch_size=8, val_fraction=0.25), data, out_root=out)
    card = load_card("lungfocus_v8_head", out)
    assert card.spec.lung_margin == 7 and card.config["lung_margin_jitter"] == 4
    assert card.data["train_images"] + card.data["val_images"] == 22

    model = load_model("lungfocus_v8_head", out, lungs=LungSegmenter())
    assert model.needs_lungs and not model.gives_lungs
    gray = np.stack([np.asarray(Image.open(p).convert("L").resize((224, 224)))
                     for p in sorted((data / "train" / "PNEUMONIA").iterdir())[:3]])
    with pytest.raises(ValueError, match="lung mask"):
        to_model_input(gray, card.spec)
    readings = score(gray, [model], lungs=LungSegmenter())
    expected = model.keras_model.predict(to_model_input(gray, card.spec, np.stack([r.lungs for r in readings])),
                                         verbose=0)[:, 0]
    from core.calibration import apply_temperature

    shown = apply_temperature(expected, card.temperature)  # serving shows calibrated probabilities
    assert [r.diagnoses["lungfocus_v8_head"].probability for r in readings] == pytest.approx(shown, abs=1e-5)
    # more images than one batch: every batch keeps its own lungs (the model's own segmenter, and the given masks)
    in_pairs = model.diagnose_gray(gray, batch_size=2)
    assert [d.probability for d in in_pairs] == pytest.approx(shown, abs=1e-5)
    given = model.diagnose_gray(gray, batch_size=2, masks=np.stack([r.lungs for r in readings]))
    assert [d.probability for d in given] == pytest.approx(shown, abs=1e-5)


def test_a_lung_pooled_model_trains_its_head_on_blurred_views_and_serves_hirescam(tmp_path, monkeypatch):
    """v23's 'lungfocus' on tiny data: its stage 1 (v22's recipe, 'lungfocus_v22') is a frozen-head run on the
    lung-pooled features of each image and its six re-encoded views; stage 2 fine-tunes its top layers from it. The card
    records the start, the blur (sigma 4, no equalisation) and the map method; serving needs no lungs handed to it and
    shows the Keras model's own probability on the blurred input."""
    from PIL import Image

    from core.calibration import apply_temperature
    from core.inference import load_model
    from core.preprocessing import to_model_input
    from core.training import train

    monkeypatch.setenv("PNEUMONIA_CACHE", str(tmp_path / "cache"))
    data = tiny_dataset(tmp_path / "chest_xray", n=8)
    out = tmp_path / "models"
    train(get_recipe("lungfocus_v22").with_overrides(epochs=2, batch_size=8, val_fraction=0.25), data, out_root=out)
    with np.load(tmp_path / "cache" / "runs" / "lungfocus_v22" / "features.npz") as f:
        assert len(f["train"]) == (1 + 6) * 12 and f["train"].shape[1] == 1280
    train(get_recipe("lungfocus").with_overrides(epochs=1, batch_size=8, val_fraction=0.25), data, out_root=out)
    card, start = load_card("lungfocus", out), load_card("lungfocus_v22", out)
    assert card.kind == start.kind == "lungpool" and card.gradcam_method == "hirescam"
    assert card.gradcam_layer == "top_activation" and card.initialised_from["model"] == "lungfocus_v22"
    assert card.initialised_from["sha256"] == start.weights_sha256 and card.weights_sha256 != start.weights_sha256
    # a fresh process (the CLI, the app) loads it without having imported the builders first
    import subprocess
    import sys

    from tests.helpers import ROOT

    fresh = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from core.registry import "
                            "load_keras_model; load_keras_model('lungfocus', Path(sys.argv[1]))", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert card.spec.blur_sigma == 4.0 and not card.spec.equalize and not card.spec.lung_margin
    model = load_model("lungfocus", out)
    assert not model.needs_lungs and not model.gives_lungs and model.explainer.method == "hirescam"
    gray = np.stack([np.asarray(Image.open(p).convert("L").resize((224, 224)))
                     for p in sorted((data / "train" / "PNEUMONIA").iterdir())[:3]])
    expected = model.keras_model.predict(to_model_input(gray, card.spec), verbose=0)[:, 0]
    shown = [d.probability for d in model.diagnose_gray(gray, batch_size=2)]
    assert shown == pytest.approx(apply_temperature(expected, card.temperature), abs=1e-5)


def test_the_encoding_moment_gives_the_mean_squared_logit_change_under_re_encoding():
    """v14: w'Σw is the mean square of w·(f_view − f_image) over every (image, view) pair, and the penalty is that
    times its weight."""
    import keras

    from core.heads import QuadraticPenalty, encoding_moment

    rng = np.random.default_rng(0)
    base = rng.normal(size=(10, 6))
    feats = np.concatenate([base, base + rng.normal(scale=0.1, size=base.shape), base + 0.3])  # two views
    w = rng.normal(size=(6, 1))
    changes = np.concatenate([(feats[10:20] - base) @ w, (feats[20:] - base) @ w])
    moment = encoding_moment(feats, 10)
    assert float(w[:, 0] @ moment @ w[:, 0]) == pytest.approx(float(np.mean(changes**2)), rel=1e-5)
    penalty = QuadraticPenalty(moment, 3.0)(keras.ops.convert_to_tensor(w.astype(np.float32)))
    assert float(keras.ops.convert_to_numpy(penalty)) == pytest.approx(3 * float(np.mean(changes**2)), rel=1e-4)


def test_the_consistency_choice_keeps_the_largest_penalty_within_the_auc_slack():
    from core.heads import choose_consistency

    assert choose_consistency([(0.0, 0.990), (1.0, 0.991), (10.0, 0.9885), (100.0, 0.980)]) == 10.0
    assert choose_consistency([(0.0, 0.990), (1.0, 0.9870)]) == 0.0


def test_a_consistency_grid_trains_a_head_per_penalty_and_records_the_choice(tmp_path, monkeypatch):
    """`python -m core.train transfer --consistency-grid 0,10`: one head per weight on the same cached features,
    the choice and every weight's validation AUC in the card; the penalty shrinks the logit's change."""
    from core import train as train_cli

    monkeypatch.setenv("PNEUMONIA_CACHE", str(tmp_path / "cache"))
    data = tiny_dataset(tmp_path / "chest_xray", n=8)
    monkeypatch.setattr(train_cli, "get_recipe", lambda name: get_recipe(name).with_overrides(
        epochs=2, batch_size=8, val_fraction=0.25, encoding_augment=True))
    assert train_cli.main(["transfer", "--consistency-grid", "0,1000", "--data-dir", str(data),
                           "--out", str(tmp_path / "models")]) == 0
    card = load_card("transfer", tmp_path / "models")
    grid = card.consistency["grid"]
    assert [g["lambda"] for g in grid] == [0.0, 1000.0] and card.config["consistency_grid"] == [0.0, 1000.0]
    assert card.consistency["lambda"] in (0.0, 1000.0)
    changes = [g["mean_sq_logit_change_on_training_views"] for g in grid]
    assert changes[1] < changes[0]
    with pytest.raises(SystemExit):
        train_cli.main(["finetuned", "--consistency-grid", "0,1", "--data-dir", str(data)])
    with pytest.raises(SystemExit):  # the grid needs its reference, 0
        train_cli.main(["transfer", "--consistency-grid", "1,10", "--data-dir", str(data)])


def test_pairs_are_two_views_of_each_image_stacked_along_the_channels():
    """v25: with ``pairs`` a batch holds two views of each image, re-encoded on their own (the image twice without the
    encoding), with a gap target of 0 and unweighted; the lung pair trainer splits them back and gives the logit gap."""
    import keras

    from core.batches import Batches
    from core.models import build_model, pair_trainer
    from core.preprocessing import InputSpec
    from tests.helpers import xray_like

    gray = np.stack([xray_like(224, 224, seed=s) for s in range(4)])
    spec = InputSpec(blur_sigma=4.0)
    x, y, w = Batches(gray, [0, 1, 0, 1], spec, batch_size=4, weights=np.array([2.0, 0.5]), pairs=True)[0]
    assert x.shape == (4, 224, 224, 6) and np.array_equal(x[..., :3], x[..., 3:])
    assert np.array_equal(y["prediction"][:, 0], [0, 1, 0, 1]) and not y["consistency"].any()
    assert np.array_equal(w["prediction"], [2.0, 0.5, 2.0, 0.5]) and np.array_equal(w["consistency"], np.ones(4))
    encoded = Batches(gray, np.zeros(4), spec, batch_size=4, encoding=True, pairs=True, seed=1)[0][0]
    assert not np.array_equal(encoded[..., :3], encoded[..., 3:])  # each view its own encoding
    assert np.abs(encoded[..., :3] - encoded[..., 3:]).mean() < 0.1 * np.abs(encoded[..., :3]).mean()  # one image

    with pytest.raises(ValueError, match="dropout"):
        pair_trainer(build_model("finetuned", weights=None, dropout=0.5), spec)

    def tiny(dropout: float) -> keras.Model:  # an inner model whose answer depends on the pixels
        return keras.Sequential([keras.Input((224, 224, 3)), keras.layers.Conv2D(2, 5, strides=4),
                                 keras.layers.GlobalAveragePooling2D(), keras.layers.Dropout(dropout),
                                 keras.layers.Dense(1, activation="sigmoid")], name="inner")

    with pytest.raises(ValueError, match="dropout"):
        pair_trainer(tiny(0.5), spec)
    trainer = pair_trainer(tiny(0.0), spec)
    mixed = np.concatenate([x[..., :3], encoded[..., 3:]], axis=-1)  # the copy, then another encoding of it
    out = trainer(keras.ops.convert_to_tensor(np.concatenate([x, mixed])), training=True)
    gap = keras.ops.convert_to_numpy(out["consistency"])[:, 0]
    p = keras.ops.convert_to_numpy(out["prediction"])[:, 0]
    assert np.allclose(gap[:4], 0.0, atol=1e-5) and not np.allclose(gap[4:], 0.0)  # same view twice: no gap
    second = trainer.get_layer("inner").predict(encoded[..., 3:], verbose=0)[:, 0]
    logit = lambda q: np.log(q) - np.log1p(-q)  # noqa: E731
    assert gap[4:] == pytest.approx(logit(second) - logit(p[4:]), abs=1e-3)


def test_a_consistency_run_trains_on_pairs_resumes_and_ships_the_model_alone(tmp_path, monkeypatch, capsys):
    """v25 on tiny data: stage 2 of 'lungfocus' (a consistency weight, no dropout since v25) trains on pairs, records
    the gap's loss per epoch (0 on validation, where the views are one copy twice), resumes from its saved pair
    trainer, and ships the model without the trainer's layers."""
    import keras

    from core.registry import load_keras_model
    from core.train import main
    from core.training import train

    monkeypatch.setenv("PNEUMONIA_CACHE", str(tmp_path / "cache"))
    data = tiny_dataset(tmp_path / "chest_xray", n=8)
    out = tmp_path / "models"
    with pytest.raises(SystemExit):
        main(["lungfocus_v23", "--consistency-weight", "1", "--out", str(out), "--data-dir", str(data)])
    assert "--dropout 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["lungfocus_v22", "--consistency-weight", "1", "--dropout", "0", "--out", str(out)])
    assert "train their backbone" in capsys.readouterr().err
    train(get_recipe("lungfocus_v22").with_overrides(epochs=1, batch_size=8, val_fraction=0.25), data, out_root=out)
    recipe = get_recipe("lungfocus").with_overrides(epochs=1, batch_size=8, val_fraction=0.25)  # v25: pairs, no dropout
    train(recipe, data, out_root=out)
    train(recipe.with_overrides(epochs=2), data, out_root=out)  # resumes from the saved pair trainer
    card = load_card("lungfocus", out)
    assert card.config["consistency_weight"] == 1.0 and card.config["dropout"] == 0.0 and card.epochs_run == 2
    with open(out / "lungfocus" / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(float(r["consistency_loss"]) > 0 and float(r["val_consistency_loss"]) < 1e-6 for r in rows)
    assert all("auc" in r and "val_auc" in r for r in rows)  # named as any model's, for the Models page
    model = load_keras_model("lungfocus", out)
    assert model.input_shape == (None, 224, 224, 3) and model.get_layer("head_dropout").rate == 0.0
    assert not any(isinstance(layer, keras.layers.Layer) and layer.name in ("views", "consistency") for layer in model.layers)
    assert "consistency_weight" not in get_recipe("lungfocus_v23").to_dict()  # recipes without it keep their settings
