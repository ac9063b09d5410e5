"""Every dashboard page through Streamlit's AppTest (no browser)."""

import io

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.helpers import ROOT, encode, xray_like

TIMEOUT = 180  # loading TensorFlow and the models takes far longer than AppTest's 3 s default


def _app(page=None):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


@pytest.mark.parametrize("page", ["pages/diagnose.py", "pages/test_metrics.py", "pages/compare.py",
                                  "pages/misclassified.py", "pages/models.py", "pages/site.py"])
def test_every_page_renders(page, shipped_models):
    at = _app(page)
    assert at.title and not at.error


def test_models_page_states_each_models_preprocessing_and_augmentation(shipped_models):
    from core.config import trains_head_only
    from core.registry import load_card

    at = _app("pages/models.py")
    tables = [m.value for m in at.markdown if "| Input |" in m.value]
    assert len(tables) == len(shipped_models)
    for name, table in zip(shipped_models, tables, strict=True):
        card = load_card(name)
        assert ("histogram-equalised" in table) == bool(card.preprocessing.get("equalize")), name
        assert ("central third blanked" in table) == bool(card.config.get("central_erasing")), name
        sigma = card.preprocessing.get("blur_sigma")
        assert (f"blurred (Gaussian, σ {sigma:g} px)" in table if sigma else "blurred (" not in table), name
        # a head on fixed views; a model whose backbone trains (finetuned, v23 lungfocus) saw every image re-encoded
        if card.config.get("encoding_augment") and trains_head_only(card.kind, card.config["trainable_top_layers"]):
            assert f"each image and {card.config.get('encoded_views', 3)} re-encoded views of it" in table, name
        else:
            assert ("re-encoded at random" in table) == bool(card.config.get("encoding_augment")), name
        rows = table.strip().splitlines()
        assert all(r.startswith("|") for r in rows) and rows[-1].startswith("| Weights"), name  # one unbroken table
        soup = card.soup
        # a soup of one run averages nothing and gets no row; its run is still named
        assert ("| Weight average |" in table) == bool(soup and len(soup["members"]) > 1), name
        for member in (soup or {}).get("members", []):
            assert f"seed {member['seed']}: best at {member['best_epoch']}" in table, name
        assert " 1 runs" not in table, name
        wise = card.wise_ft
        assert ("| Mixed with its start |" in table) == bool(wise), name
        if wise:
            assert f"{1 - wise['alpha']:g} × `{wise['start']}`" in table, name
            # how α was chosen is the card's word (v13: by validation ROC AUC), never a claim the page makes for all
            assert wise.get("alpha_choice", "fixed in the recipe before training") in table, name
        # v14: the penalty on the answer's change under re-encoding, its lambda and the grid it was chosen from
        assert ("| Same answer under re-encoding |" in table) == bool(card.consistency or card.config.get(
            "consistency_weight")), name
        # v25: a fine-tuning stage on pairs of views, with its weight
        if card.config.get("consistency_weight"):
            assert f"λ = {card.config['consistency_weight']:g}, fixed before training" in table, name
        if card.consistency:
            assert f"λ = {card.consistency['lambda']:g}, the largest lambda" in table, name
    # the loss curve says when it holds more than the BCE (the pairs' gap, v25)
    titles = [c.proto.spec for c in at.get("plotly_chart") if "Loss (BCE" in c.proto.spec]
    pairs = [name for name in shipped_models if load_card(name).config.get("consistency_weight")]
    assert sum("logit gap between two encodings" in t for t in titles) == len(pairs)


def _assert_diagnosed(at, n_models):
    assert not at.exception and not at.error
    shown = [m for m in at.metric if m.label == "P(pneumonia)"]
    assert len(shown) == n_models and all(m.value.endswith("%") for m in shown)
    captions = [c for img in at.get("image") for c in img.captions]
    assert sum(("Grad-CAM" in c or "HiResCAM" in c) and "evidence for" in c for c in captions) == n_models


def test_diagnose_scores_an_upload_with_every_model(shipped_models, samples_dir):
    at = _app()
    data = (samples_dir / "person1314_virus_2269.jpeg").read_bytes()
    at.file_uploader(key="dx_upload").set_value(("chest.jpeg", data, "image/jpeg"))
    at.run()
    assert not [w for w in at.warning if "does not look like" in w.value or "No plausible" in w.value]
    _assert_diagnosed(at, len(shipped_models))


def test_diagnose_scores_each_file_once_per_session(shipped_models, samples_dir, monkeypatch):
    """Moving a slider re-draws from the session's readings; only a newly added file is scored."""
    from core.inference import LoadedModel

    scored = []
    original = LoadedModel.diagnose_gray

    def counting(self, gray, batch_size=32, **kw):
        scored.append((self.name, len(gray)))
        return original(self, gray, batch_size, **kw)

    monkeypatch.setattr(LoadedModel, "diagnose_gray", counting)
    at = _app()
    first = (samples_dir / "person1314_virus_2269.jpeg").read_bytes()
    at.file_uploader(key="dx_upload").set_value(("chest.jpeg", first, "image/jpeg")).run()
    _assert_diagnosed(at, len(shipped_models))
    assert sorted(scored) == sorted((n, 1) for n in shipped_models)
    before = [m.value for m in at.metric]
    at.slider(key="dx_alpha").set_value(0.8).run()
    at.radio(key="dx_target").set_value("Evidence for normal").run()
    assert len(scored) == len(shipped_models) and [m.value for m in at.metric] == before
    second = encode(xray_like(500, 420, seed=3), "PNG")
    at.file_uploader(key="dx_upload").set_value([("chest.jpeg", first, "image/jpeg"), ("b.png", second, "image/png")])
    at.run()
    assert not at.exception and sorted(scored[len(shipped_models):]) == sorted((n, 1) for n in shipped_models)
    at.file_uploader(key="dx_upload").set_value(("b.png", second, "image/png")).run()
    assert [k.split("\0")[0] for k in at.session_state["dx_readings"]] == ["b.png"]  # removed file forgotten


def test_diagnose_withholds_an_unusual_image_until_asked(shipped_models):
    at = _app()
    at.file_uploader(key="dx_upload").set_value(("drawing.png", encode(xray_like(500, 420), "PNG"), "image/png"))
    at.run()
    assert not at.exception and "does not look like" in at.warning[0].value
    assert not [m for m in at.metric if m.label == "P(pneumonia)"]
    at.checkbox(key="dx_ood_drawing.png").check().run()
    _assert_diagnosed(at, len(shipped_models))


def test_diagnose_withholds_a_film_whose_entered_age_is_an_adults(shipped_models, samples_dir):
    """Part 6 for files that state no age (JPEG, PNG): the age a clinician enters withholds an adult's film; a child's
    age, or none, does not; a DICOM header's own age wins over the entered one."""
    from tests import inputs

    at = _app()
    jpeg = (samples_dir / "IM-0061-0001.jpeg").read_bytes()  # a pediatric film that passes the checks
    at.file_uploader(key="dx_upload").set_value(("child.jpeg", jpeg, "image/jpeg")).run()
    _assert_diagnosed(at, len(shipped_models))
    at.number_input(key="dx_age").set_value(45).run()
    assert not at.exception and "entered as 45 years" in at.warning[0].value
    assert not [m for m in at.metric if m.label == "P(pneumonia)"]
    at.number_input(key="dx_age").set_value(4).run()
    _assert_diagnosed(at, len(shipped_models))

    pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L").resize((224, 224)))
    at.file_uploader(key="dx_upload").set_value(("four.dcm", inputs.dicom(pixels, age="004Y"), "application/dicom"))
    at.number_input(key="dx_age").set_value(45).run()
    _assert_diagnosed(at, len(shipped_models))  # the header says 4 years: the entered age does not apply


def test_diagnose_reports_a_bad_file_and_scores_the_rest(shipped_models):
    at = _app()
    at.file_uploader(key="dx_upload").set_value([
        ("notes.png", b"this is not an image", "image/png"),
        ("chest.png", encode(xray_like(500, 420), "PNG"), "image/png"),
    ])
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "notes.png" in at.error[0].value
    table = at.dataframe[0].value.set_index("file")
    assert list(table.index) == ["notes.png", "chest.png"]  # one row per file, the refused one too
    assert table.loc["notes.png", "status"].startswith("not read: ")
    assert table.loc["chest.png", "status"] == "withheld: not like the training X-rays"
    assert "None" not in table.to_csv() and not table.isna().any().any()
    # the details open on a file that has a result to show, not on the refused one
    assert at.selectbox(key="dx_detail").value == "chest.png"


def test_the_file_table_gives_the_threshold_as_the_labels_use_it(shipped_models, samples_dir):
    at = _app()
    a = (samples_dir / "IM-0061-0001.jpeg").read_bytes()
    at.file_uploader(key="dx_upload").set_value([("drawing.png", encode(xray_like(500, 420), "PNG"), "image/png"),
                                                 ("a.jpeg", a, "image/jpeg")]).run()
    assert at.selectbox(key="dx_detail").value == "a.jpeg"  # not the withheld drawing
    table = next(d.value for d in at.dataframe if "file" in d.value.columns).set_index("file")
    for name in shipped_models:
        threshold = at.slider(key=f"dx_thr_{name}").value
        assert threshold == round(threshold, 3)  # the slider gives 3 decimals, and so does every label
        assert f"{name}: label at {threshold:.3f}" in table.columns
    shown = [m.value for m in at.markdown if "at threshold" in m.value]
    assert shown and all(f"at threshold {at.slider(key=f'dx_thr_{n}').value:.3f}" in " ".join(shown)
                         for n in shipped_models)


def test_a_label_near_its_threshold_is_called_borderline(shipped_models, samples_dir):
    """A probability within 0.02 of the threshold, where a re-encoded copy of the same file can get the other label,
    is said to be borderline, for that model and in the recommended model's summary; a threshold far from it is not."""
    from core.cards import recommended
    from core.registry import load_card

    at = _app()
    at.file_uploader(key="dx_upload").set_value(("a.jpeg", (samples_dir / "IM-0061-0001.jpeg").read_bytes(),
                                                 "image/jpeg")).run()
    lead = recommended([load_card(n) for n in shipped_models])
    p = float(next(m.value for m in at.metric if m.label == "P(pneumonia)").rstrip("%")) / 100  # the lead's, shown first
    cases = ((round(min(max(p + 0.005, 0.0), 1.0), 3), True), (round(p + 0.3 if p < 0.5 else p - 0.3, 3), False))
    for threshold, expected in cases:  # every model shown: the summary of the recommended model's reading
        at.slider(key=f"dx_thr_{lead}").set_value(threshold).run()
        summary = " ".join(m.value for m in [*at.warning, *at.info] if "the recommended model, says" in m.value)
        assert summary and ("borderline" in summary) == expected, (threshold, p, summary)
    at.selectbox(key="dx_model").set_value(lead).run()  # that model alone: its own note
    for threshold, expected in cases:
        at.slider(key=f"dx_thr_{lead}").set_value(threshold).run()
        notes = [c.value for c in at.caption if c.value.startswith("Borderline: P lies within 0.02")]
        assert bool(notes) == expected, (threshold, p, notes)


def _table(at, column):
    """The first dataframe on the page that has ``column``."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def test_threshold_slider_changes_the_confusion_matrix(shipped_models):
    at = _app("pages/test_metrics.py")
    name = at.selectbox(key="tm_model").value
    before = _table(at, "predicted NORMAL").to_numpy().tolist()
    at.slider(key=f"tm_threshold_{name}").set_value(0.95).run()
    after = _table(at, "predicted NORMAL").to_numpy().tolist()
    assert not at.exception and before != after
    assert sum(map(sum, after)) == sum(map(sum, before))


def test_metrics_page_gives_intervals_at_the_chosen_threshold(shipped_models):
    """The caption's bootstrap intervals follow the slider and, at the card threshold, equal metrics.json's."""
    import json

    from core.registry import models_dir

    at = _app("pages/test_metrics.py")
    name = at.selectbox(key="tm_model").value
    shipped = json.loads((models_dir() / name / "metrics.json").read_text())["ci95"]
    caption = next(c.value for c in at.caption if "95 % intervals" in c.value)
    for key in ("accuracy", "sensitivity", "specificity", "roc_auc"):
        low, high = shipped[key]
        assert f"{key.replace('roc_auc', 'ROC AUC')} {low:.3f}–{high:.3f}" in caption, key
    at.slider(key=f"tm_threshold_{name}").set_value(0.99).run()
    moved = next(c.value for c in at.caption if "95 % intervals" in c.value)
    assert not at.exception and moved != caption


def test_compare_lists_every_shipped_model(shipped_models):
    import json

    from core.registry import models_dir

    at = _app("pages/compare.py")
    table = next(t.value for t in at.dataframe if "ROC AUC" in t.value.index)  # models as columns
    assert list(table.columns) == shipped_models
    for name in shipped_models:
        report = json.loads((models_dir() / name / "metrics.json").read_text())
        low, high = report["ci95"]["accuracy"]
        assert table.loc["accuracy 95 % CI", name] == f"{low:.3f}–{high:.3f}"
        assert table.loc["ROC AUC", name] == f"{report['roc_auc']:.3f}"


def test_compare_scores_its_images_once_while_they_stay(shipped_models, data_dir, monkeypatch):
    """Reruns redraw the compare page from the session's readings; only a newly picked image is scored."""
    from core.inference import LoadedModel

    scored = []
    original = LoadedModel.diagnose_gray

    def counting(self, gray, batch_size=32, **kw):
        if gray.min() != gray.max():  # not the flat image the "ms per image" column times
            scored.append(self.name)
        return original(self, gray, batch_size, **kw)

    monkeypatch.setattr(LoadedModel, "diagnose_gray", counting)
    n = len(shipped_models)
    at = _app("pages/compare.py")
    assert sorted(scored) == sorted(shipped_models * 2)  # the first test file, and the first disagreement
    at.radio(key="cmp_source").set_value("Upload").run()
    assert len(scored) == 2 * n
    at.file_uploader(key="cmp_upload").set_value(("chest.png", encode(xray_like(224, 224, seed=5), "PNG"), "image/png"))
    at.run()
    assert "does not look like" in at.warning[0].value and len(scored) == 2 * n  # withheld: not scored
    at.checkbox(key="cmp_ood").check().run()
    assert not at.exception and sum("P(pneumonia) =" in m.value for m in at.markdown) == n
    assert sorted(scored[2 * n:]) == sorted(shipped_models)  # the upload, once
    at.run()
    assert len(scored) == 3 * n
    picks = at.selectbox(key="cmp_disagree_pick").options
    at.selectbox(key="cmp_disagree_pick").set_value(picks[1]).run()
    assert not at.exception and sorted(scored[3 * n:]) == sorted(shipped_models)


def test_misclassified_counts_match_the_predictions(shipped_models):
    from core.registry import load_card, load_metrics
    from pages._ui import predictions

    at = _app("pages/misclassified.py")
    name = at.selectbox(key="mc_model").value
    df = predictions(name)
    card = load_card(name)
    slider = at.slider(key=f"mc_threshold_{name}")
    assert slider.value == pytest.approx(round(card.decision_threshold, 3))
    # at its start the slider stands for the card's exact threshold, so the counts are metrics.json's
    cm = load_metrics(name)["at_card_threshold"]["confusion_matrix"]
    for shown, threshold in ((slider.value, card.decision_threshold), (0.2, 0.2), (0.9, 0.9)):
        at.slider(key=f"mc_threshold_{name}").set_value(shown).run()
        fp = int(((df.y == 0) & (df.probability >= threshold)).sum())
        fn = int(((df.y == 1) & (df.probability < threshold)).sum())
        assert (fp, fn) == (cm["fp"], cm["fn"]) or threshold != card.decision_threshold
        text = " ".join(m.value for m in at.markdown)
        assert not at.exception and f"{fp} false positives" in text and f"{fn} false negatives" in text


def test_misclassified_pages_from_the_bottom_and_names_identical_images(shipped_models, data_dir):
    at = _app("pages/misclassified.py")
    name = at.selectbox(key="mc_model").value
    at.slider(key=f"mc_threshold_{name}").set_value(0.0).run()  # every normal image is a false positive
    key = f"mc_page_false positives_{name}"
    assert at.number_input(key=key).value == 1
    at.button(key=f"{key}_next").click().run()
    assert not at.exception and at.number_input(key=key).value == 2
    from pages._ui import predictions

    normals = int((predictions(name).y == 0).sum())
    assert f"· cases 13–24 of {normals}" in [c.value for c in at.caption if c.value.startswith("Page 2 of")][0]
    at.button(key=f"{key}_prev").click().run()
    assert at.number_input(key=key).value == 1
    # page through to NORMAL2-IM-0095-0001, which the test set holds twice (also as NORMAL2-IM-0096-0001)
    for _ in range(int(at.number_input(key=key).max)):
        said = [c.value for c in at.caption if "Pixel for pixel the same image as" in c.value]
        if any("NORMAL2-IM-0096-0001.jpeg" in c for c in said):
            break
        at.button(key=f"{key}_next").click().run()
    else:
        pytest.fail("the identical pair was never named")


def test_diagnose_names_each_samples_label_and_split(shipped_models, samples_dir):
    at = _app()
    box = at.selectbox(key="dx_sample")
    shown = {o.split(":")[0]: o for o in box.options}
    assert shown["person1597_bacteria_4189.jpeg"].endswith("truly PNEUMONIA, training split")
    assert all(o == "—" or "truly" in o for o in box.options)


def test_misclassified_without_the_dataset_explains_and_keeps_the_table(shipped_models, monkeypatch, tmp_path):
    monkeypatch.setenv("PNEUMONIA_DATA_DIR", str(tmp_path / "nowhere"))
    at = _app("pages/misclassified.py")
    assert any("PNEUMONIA_DATA_DIR" in i.value for i in at.info)
    assert any("filename" in d.value.columns for d in at.dataframe)


def test_two_uploads_with_one_name_stay_apart(shipped_models, samples_dir):
    at = _app()
    a = (samples_dir / "IM-0061-0001.jpeg").read_bytes()
    b = (samples_dir / "person1314_virus_2269.jpeg").read_bytes()
    at.file_uploader(key="dx_upload").set_value([("scan.jpeg", a, "image/jpeg"), ("scan.jpeg", b, "image/jpeg")])
    at.run()
    table = next(d.value for d in at.dataframe if "file" in d.value.columns)
    assert list(table["file"]) == ["scan.jpeg", "scan.jpeg (2)"]
    finetuned = table.set_index("file")[f"{shipped_models[-1]}: P(pneumonia)"]
    assert finetuned["scan.jpeg"] != finetuned["scan.jpeg (2)"]


def test_compare_calls_a_reading_near_its_threshold_borderline(shipped_models):
    """One test image through every model: a model whose probability lies within 0.02 of its card threshold says so; an
    image far from every threshold gets no such note. The images are found from the models' own test predictions."""
    import pandas as pd

    from core.registry import load_card, model_files

    preds = {n: pd.read_csv(model_files(n).folder / "test_predictions.csv").set_index("filename") for n in shipped_models}
    gap = pd.DataFrame({n: (p["probability"] - load_card(n).decision_threshold).abs() for n, p in preds.items()})
    near, far = gap.min(axis=1).idxmin(), gap.min(axis=1).idxmax()
    assert gap.loc[near].min() < 0.01 and gap.loc[far].min() > 0.05
    at = _app("pages/compare.py")
    for file, expected in ((near, True), (far, False)):
        label = preds[shipped_models[0]].loc[file, "label"]
        at.selectbox(key="cmp_file").set_value(f"{file} ({label})").run()
        notes = [c.value for c in at.caption if c.value.startswith("Borderline: within 0.02")]
        assert bool(notes) == expected, (file, notes)


def test_compare_withholds_an_unusual_upload_until_asked(shipped_models):
    at = _app("pages/compare.py")
    at.radio(key="cmp_source").set_value("Upload").run()
    at.file_uploader(key="cmp_upload").set_value(("drawing.png", encode(xray_like(500, 420), "PNG"), "image/png"))
    at.run()
    assert not at.exception and "does not look like" in at.warning[0].value
    assert not any("P(pneumonia) =" in m.value for m in at.markdown)
    at.checkbox(key="cmp_ood").check().run()
    assert sum("P(pneumonia) =" in m.value for m in at.markdown) == len(shipped_models)


def test_compare_withholds_an_upload_whose_entered_age_is_an_adults(shipped_models, samples_dir):
    at = _app("pages/compare.py")
    at.radio(key="cmp_source").set_value("Upload").run()
    jpeg = (samples_dir / "IM-0061-0001.jpeg").read_bytes()
    at.file_uploader(key="cmp_upload").set_value(("child.jpeg", jpeg, "image/jpeg")).run()
    assert sum("P(pneumonia) =" in m.value for m in at.markdown) == len(shipped_models)
    at.number_input(key="cmp_age").set_value(45).run()
    assert not at.exception and "entered as 45 years" in at.warning[0].value
    assert not any("P(pneumonia) =" in m.value for m in at.markdown)


def test_metrics_page_shows_undefined_precision_and_the_exact_threshold(shipped_models):
    from core.registry import load_card

    at = _app("pages/test_metrics.py")
    name = at.selectbox(key="tm_model").value
    slider = at.slider(key=f"tm_threshold_{name}")
    assert slider.value == pytest.approx(round(load_card(name).decision_threshold, 3))
    slider.set_value(1.0).run()
    precision = next(m for m in at.metric if m.label == "Precision")
    assert not at.exception and precision.value == "n/a"
    assert len([d for d in at.dataframe if "predicted NORMAL" in d.value.columns]) == 1  # the matrix, once
    report = next(d.value for d in at.dataframe if "f1-score" in d.value.columns)
    assert report.loc["PNEUMONIA", "precision"] == "n/a" and report.loc["NORMAL", "precision"] != "n/a"
    assert report.loc["accuracy", "support"] == "624" and report.loc["accuracy", "precision"] == ""


def test_the_withheld_warning_changes_once_the_user_asks(shipped_models):
    at = _app()
    at.file_uploader(key="dx_upload").set_value(("drawing.png", encode(xray_like(500, 420), "PNG"), "image/png"))
    at.run()
    assert "The diagnosis is withheld." in at.warning[0].value
    at.checkbox(key="dx_ood_drawing.png").check().run()
    assert "withheld" not in at.warning[0].value and "because you asked" in at.warning[0].value


def test_diagnose_shows_the_lungs_and_the_share_of_evidence_inside_them(shipped_models, samples_dir):
    from core.registry import lungs_files

    if not lungs_files().weights.exists():
        pytest.skip("no lung segmenter under models/lungs")
    at = _app()
    data = (samples_dir / "IM-0061-0001.jpeg").read_bytes()
    at.file_uploader(key="dx_upload").set_value(("chest.jpeg", data, "image/jpeg")).run()
    shares = [c.value for c in at.caption if "lies inside the lungs found" in c.value]
    assert not at.exception and len(shares) == len(shipped_models)
    captions = [c for img in at.get("image") for c in img.captions]
    assert sum("lungs outlined" in c for c in captions) == 1  # the input as the models see it, shown once
    at.toggle(key="dx_lungs").set_value(False).run()
    captions = [c for img in at.get("image") for c in img.captions]
    assert not any("lungs outlined" in c for c in captions)


def test_diagnose_heatmaps_have_a_colour_scale_and_a_choice_of_scaling(shipped_models, samples_dir):
    at = _app()
    data = (samples_dir / "IM-0061-0001.jpeg").read_bytes()
    at.file_uploader(key="dx_upload").set_value(("chest.jpeg", data, "image/jpeg")).run()
    # by default a map is scaled by the evidence: a model that barely believes in pneumonia shows a faint map
    captions = [c for img in at.get("image") for c in img.captions if c.startswith(("Grad-CAM", "HiResCAM"))]
    assert len(captions) == len(shipped_models) and all("scaled by it" in c for c in captions)
    assert all("explains P(pneumonia) = " in c for c in captions)
    assert any("Heatmap colours (scaled by the evidence)" in c.value for c in at.caption)
    at.radio(key="dx_scale").set_value("Normalised per image").run()
    captions = [c for img in at.get("image") for c in img.captions if c.startswith(("Grad-CAM", "HiResCAM"))]
    assert not at.exception and all("normalised per image" in c for c in captions)
    assert any("Heatmap colours (normalised per image)" in c.value for c in at.caption)


def test_diagnose_leads_with_the_recommended_model_and_states_agreement(shipped_models, samples_dir):
    from core.cards import recommended
    from core.registry import load_card

    lead = recommended([load_card(n) for n in shipped_models])
    at = _app()
    data = (samples_dir / "person1314_virus_2269.jpeg").read_bytes()
    at.file_uploader(key="dx_upload").set_value(("chest.jpeg", data, "image/jpeg")).run()
    heads = [m.value for m in at.markdown if m.value.startswith("**") and m.value.split("**")[1] in shipped_models]
    assert heads[0] == f"**{lead}** · recommended" and len(heads) == len(shipped_models)
    summary = [a.value for a in [*at.info, *at.warning] if "the recommended model" in a.value]
    assert len(summary) == 1 and ("all models agree." in summary[0] or "The models disagree" in summary[0])
    assert any("Why this model leads" in c.value for c in at.caption)


def test_the_recommendation_rule_uses_validation_results_only():
    from dataclasses import replace

    from core.cards import recommended
    from core.registry import available_models, load_card

    cards = [load_card(n) for n in available_models()]
    if not cards:
        pytest.skip("no shipped models")
    best = max(cards, key=lambda c: c.val_metrics["roc_auc"])
    assert recommended(cards) == best.name
    worse = replace(best, val_metrics={**best.val_metrics, "roc_auc": 0.5})
    assert recommended([worse if c is best else c for c in cards]) != best.name
    tie = [replace(c, val_metrics={**c.val_metrics, "roc_auc": 0.9}) for c in cards]
    assert recommended(tie) == min(cards, key=lambda c: c.parameters).name  # a tie: the smaller model


def test_site_operating_point_from_a_zip_and_its_profile_in_use_on_diagnose(shipped_models, data_dir):
    import io
    import zipfile

    from core.data import list_split
    from core.site import SiteProfile

    test = list_split(data_dir, "test")
    picked = [s for s in test if s.label == 0][:10] + [s for s in test if s.label == 1][:10]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for s in picked:
            z.writestr(f"site/{'PNEUMONIA' if s.label else 'NORMAL'}/{s.name}", s.path.read_bytes())
    at = _app("pages/site.py")
    at.file_uploader(key="site_zip").set_value(("site.zip", buf.getvalue(), "application/zip")).run()
    assert not at.exception and not at.error
    threshold = next(m for m in at.metric if m.label == "Threshold")
    assert 0 <= float(threshold.value) <= 1
    assert any("PPV" in m.value and "NPV" in m.value for m in at.markdown)
    at.button(key="site_use").click().run()
    model = at.selectbox(key="site_model").value
    profile = at.session_state["site_profiles"][model]
    assert isinstance(profile, SiteProfile) and f"{profile.threshold:.3f}" == threshold.value
    at.switch_page("pages/diagnose.py").run()
    assert not at.exception
    slider = next(s for s in at.slider if s.label.startswith(f"{model} (site "))
    assert slider.value == pytest.approx(round(profile.threshold, 3))


def test_diagnose_shows_the_xray_at_its_own_resolution_with_a_window(shipped_models, samples_dir):
    from PIL import Image

    from core.preprocessing import apply_window

    path = samples_dir / "IM-0061-0001.jpeg"
    at = _app()
    at.file_uploader(key="dx_upload").set_value(("chest.jpeg", path.read_bytes(), "image/jpeg")).run()
    assert not at.exception
    w, h = Image.open(path).size
    viewer = at.get("plotly_chart")[0]
    assert f"file {w} × {h}, shown at 1600 × " in viewer.proto.spec  # the original, not 224 x 224
    at.slider(key="dx_view_width").set_value(60).run()
    at.selectbox(key="dx_view_model").set_value("none").run()
    assert not at.exception
    window = apply_window(np.array([0, 98, 128, 158, 255], np.uint8), 128, 60)
    assert window.tolist() == [0, 0, 128, 255, 255]


def test_streamlit_reruns_keep_the_compiled_models(monkeypatch):
    """Streamlit clears the Keras session after every script run, which made TensorFlow instantiate every cached
    model's compiled call again on each upload (about 0.4 s each; docs/speed.md). The dashboard turns that reset off
    and still closes matplotlib figures as Streamlit does."""
    import keras
    import matplotlib.pyplot as plt
    from streamlit.runtime.scriptrunner import script_runner

    import pages._ui as ui

    ui.keep_compiled_models()  # idempotent: importing the module already did it
    cleared = []
    monkeypatch.setattr(keras.backend, "clear_session", lambda *a, **k: cleared.append(1))
    plt.figure()
    script_runner._clean_problem_modules()
    assert not cleared and not plt.get_fignums()
