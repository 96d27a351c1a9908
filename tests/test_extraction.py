"""Entity extraction: one test per rule (negation scope, uncertainty, clause attachment,
laterality, synonyms, sections, de-id tokens), the ontology loader's errors, and robustness."""

import json
import subprocess
import sys
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import make_extraction_fail_on
from medtrim_ext import MetaEntities, Vocabulary
from medtrim_ext.extraction import EntityExtractor, ExtractionOntology, ExtractionWarning, SectionFilter


@pytest.fixture(scope="module")
def ex():
    return EntityExtractor()


def E(adjs=(), dirs=()):
    return {"adjs": sorted(adjs), "dirs": sorted(dirs)}


# -- negation --------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "No pneumothorax.",
    "There is no pneumothorax.",
    "Pneumothorax is not seen.",
    "Negative for pneumothorax.",
    "No evidence of pneumothorax.",
    "The previously seen pneumothorax has resolved.",
    "Without pneumothorax.",
])
def test_negated_mentions_are_absent(ex, text):
    assert ex(text) == {}


def test_negation_covers_a_list_but_not_the_next_sentence(ex):
    assert ex("No pneumothorax, pleural effusion, or focal consolidation.") == {}
    assert ex("No pneumothorax. Small right pleural effusion.") == {
        "pleural effusion": E(["small"], ["right"])}


def test_negation_scope_ends_at_but_and_there_is(ex):
    assert ex("No pneumothorax but there is a small left pleural effusion.") == {
        "pleural effusion": E(["small"], ["left"])}
    assert ex("No focal consolidation, there is mild cardiomegaly.") == {"cardiomegaly": E(["mild"])}


def test_negation_does_not_reach_backwards(ex):
    assert ex("Left lower lobe atelectasis without effusion.") == {
        "atelectasis": E(["lower"], ["left"])}


def test_no_change_is_not_a_negation(ex):
    assert set(ex("No change in the left lower lobe opacity.")) == {"lung opacity"}
    assert ex("No interval change in cardiomegaly.") == {"cardiomegaly": E()}


@pytest.mark.parametrize("text", [
    "Pneumothorax: none.",
    "Effusion: absent",
    "Consolidation - negative",
    "Pleural effusion: no.",
    "Pneumothorax or effusion: none.",
])
def test_structured_field_with_a_negative_value_is_absent(ex, text):
    # ConText ends a cue's scope at ':' (medspacy issue #155): the field's value is read instead
    assert ex(text) == {}


def test_structured_field_keeps_other_values_and_other_fields(ex):
    assert set(ex("Effusion: no change.")) == {"pleural effusion"}
    assert ex("Effusion: absent. Pneumothorax: small right.") == {"pneumothorax": E(["small"], ["right"])}
    assert ex("Pneumothorax: none\nEffusion: small left") == {"pleural effusion": E(["small"], ["left"])}


@pytest.mark.parametrize("text", [
    "The effusion is no longer visible.",
    "The right pneumothorax is no longer evident.",
    "The effusion has resolved.",
    "Interval resolution of left lower lobe consolidation.",
])
def test_resolution_language_negates(ex, text):
    assert ex(text) == {}


def test_what_persists_after_a_resolution_stays_with_its_descriptors(ex):
    assert ex("Interval resolution of the left effusion, with persistent small right effusion.") == {
        "pleural effusion": E(["persistent", "small"], ["right"])}
    assert ex("Interval resolution of the pneumothorax, with residual left basilar atelectasis.") == {
        "atelectasis": E(["basilar", "residual"], ["left"])}


# -- uncertainty, history, hypothetical ------------------------------------------------------
@pytest.mark.parametrize("text", [
    "Opacity may represent atelectasis.",
    "Possible atelectasis in the left base.",
    "Cannot exclude atelectasis.",
    "Atelectasis cannot be excluded.",
    "Findings suspicious for atelectasis.",
])
def test_uncertainty_policy(text):
    pos = EntityExtractor(uncertain="positive")(text)
    neg = EntityExtractor(uncertain="negative")(text)
    assert "atelectasis" in pos
    assert "atelectasis" not in neg
    # the observation that is described is not hedged, only its interpretation
    if text.startswith("Opacity"):
        assert "lung opacity" in pos and "lung opacity" in neg


@pytest.mark.parametrize("text", [
    "Borderline cardiomegaly.",
    "Heart size is borderline enlarged.",
    "Borderline enlarged heart.",
    "Borderline heart size.",
])
@pytest.mark.parametrize("policy", ["negative", "positive"])
def test_borderline_grades_a_size_it_does_not_hedge(text, policy):
    # one policy for "borderline": the smallest grade of a finding (adjective "mild"), present
    # under both uncertain policies, as the IU reports' manual tags (Cardiomegaly/borderline) read it
    assert set(EntityExtractor(uncertain=policy)(text)) == {"cardiomegaly"}
    if text != "Borderline heart size.":
        assert EntityExtractor(uncertain=policy)(text) == {"cardiomegaly": E(["mild"])}
    assert EntityExtractor(uncertain=policy)("Heart size is borderline normal.") == {}


def test_default_policy_is_negative_and_checked():
    assert EntityExtractor().uncertain == "negative"
    with pytest.raises(ValueError, match="uncertain must be one of"):
        EntityExtractor(uncertain="maybe")


@pytest.mark.parametrize("text", [
    "History of pneumonia.",
    "Evaluate for pneumonia.",
    "If symptoms persist, pneumonia should be considered.",
    "Calcified granulomas, sequelae of prior granulomatous infection.",
])
def test_history_and_hypothetical_are_absent(ex, text):
    assert "pneumonia" not in ex(text)


# -- attachment of adjectives and directions -------------------------------------------------
def test_descriptors_attach_to_their_own_disease(ex):
    got = ex("Mild cardiomegaly with small bilateral pleural effusions and left basilar atelectasis.")
    assert got == {
        "cardiomegaly": E(["mild"]),
        "pleural effusion": E(["small"], ["bilateral"]),
        "atelectasis": E(["basilar"], ["left"]),
    }


def test_postmodifying_location_attaches_backwards(ex):
    got = ex("Patchy opacity in the right lower lobe, consistent with pneumonia.")
    assert got["lung opacity"] == E(["lower", "patchy"], ["right"])
    assert got["pneumonia"] == E()


def test_descriptor_in_clause_without_disease_goes_forward(ex):
    assert ex("There are patchy, bilateral opacities.") == {"lung opacity": E(["patchy"], ["bilateral"])}
    # left + right is bilateral
    assert ex("Left and right pleural effusions.") == {"pleural effusion": E(dirs=["bilateral"])}
    assert ex("Bilateral effusions, left small, right moderate.") == {
        "pleural effusion": E(["moderate", "small"], ["bilateral"])}


def test_every_mention_of_a_disease_keeps_its_side(ex):
    # IU CXR966: the right upper lobe describes both coordinated findings; the left-sided
    # atelectasis of the next sentence adds its side to the same class
    text = ("An element of atelectasis and infiltrate is noted involving the right upper lobe. "
            "In addition, subsegmental atelectatic change is present overlying the left ventricle.")
    assert ex(text) == {"lung opacity": E(["upper"], ["right"]), "atelectasis": E(["upper"], ["bilateral"])}
    assert ex("Right upper lobe atelectasis. Left subsegmental atelectasis.") == {
        "atelectasis": E(["upper"], ["bilateral"])}
    # a descriptor in a clause of its own describes the nearest finding only
    assert ex("Right lower lung linear atelectasis and cardiomegaly, mild.") == {
        "cardiomegaly": E(["mild"]), "atelectasis": E(["linear", "lower"], ["right"])}
    # a negated coordinated finding gets nothing, and the side stays with the one present
    assert ex("No effusion. Consolidation and atelectasis in the left base.") == {
        "consolidation": E(["basal"], ["left"]), "atelectasis": E(["basal"], ["left"])}


def test_descriptors_of_a_negated_finding_stay_with_it(ex):
    assert ex("Mild cardiomegaly without large right pleural effusion.") == {"cardiomegaly": E(["mild"])}
    # normal anatomy is no mention: it does not take the descriptors of a finding
    assert ex("Normal heart size, small left effusion.") == {"pleural effusion": E(["small"], ["left"])}
    assert ex("Left heart border is obscured by left lower lobe atelectasis.")["atelectasis"] == E(
        ["lower"], ["left"])


def test_longest_adjective_wins(ex):
    assert ex("Mild to moderate pulmonary edema.") == {"edema": E(["mild to moderate"])}


# -- laterality ------------------------------------------------------------------------------
@pytest.mark.parametrize("text,dirs", [
    ("Left-sided pleural effusion.", ["left"]),
    ("Right sided pleural effusion.", ["right"]),
    ("Bilateral pleural effusions.", ["bilateral"]),
    ("Pleural effusions on both sides.", ["bilateral"]),
    ("Bibasilar pleural effusions.", ["bilateral"]),
    ("Pleural effusion on the right.", ["right"]),
])
def test_laterality(ex, text, dirs):
    assert ex(text)["pleural effusion"]["dirs"] == dirs


def test_bibasilar_is_a_side_and_a_level(ex):
    assert ex("Bibasilar atelectasis.") == {"atelectasis": E(["basilar"], ["bilateral"])}
    assert ex("Right basilar atelectasis.") == {"atelectasis": E(["basilar"], ["right"])}


# -- synonyms, plurals, conditional anatomy, blockers ----------------------------------------
@pytest.mark.parametrize("text,cls", [
    ("Effusions.", "pleural effusion"),
    ("Pneumothoraces.", "pneumothorax"),
    ("Airspace disease.", "lung opacity"),
    ("Infiltrates.", "lung opacity"),
    ("Scarring.", "lung opacity"),
    ("Pleural thickening.", "pleural other"),
    ("Pulmonary vascular congestion.", "edema"),
    ("Pulmonary nodule.", "lung lesion"),
    ("Nodular opacity.", "lung lesion"),
    ("Atelectatic changes.", "atelectasis"),
    ("Consolidative opacity.", "consolidation"),
    ("Rib fractures.", "fracture"),
    ("Enlarged heart.", "cardiomegaly"),
    ("Widened mediastinum.", "enlarged cardiomediastinum"),
    ("Biapical pleural capping.", "pleural other"),
    ("Masslike opacity in the right upper lobe.", "lung lesion"),
    ("Right upper lobe cavity.", "lung lesion"),
])
def test_synonyms_map_to_classes(ex, text, cls):
    assert cls in ex(text)


def test_infectious_is_an_adjective_not_a_disease(ex):
    assert ex("Infectious process.") == {"pneumonia": E()}
    assert "infectious" in ex("Infectious consolidation.")["consolidation"]["adjs"]


def test_conditional_anatomy_needs_an_abnormal_qualifier(ex):
    assert ex("Heart size is normal.") == {}
    assert ex("Normal cardiac silhouette.") == {}
    assert ex("The cardiac silhouette is within normal limits.") == {}
    assert ex("The heart is not enlarged.") == {}
    assert ex("The cardiac silhouette is enlarged.") == {"cardiomegaly": E()}
    assert ex("Mildly enlarged heart size.") == {"cardiomegaly": E(["mild"])}
    assert ex("The mediastinum is widened.") == {"enlarged cardiomediastinum": E()}
    # qualifier of another clause does not count
    assert ex("Heart size is normal and there is a large pleural effusion.") == {
        "pleural effusion": E(["large"])}


@pytest.mark.parametrize("text", [
    "Mild collapse of the T8 vertebral body.",
    "Collapsed L1 vertebra.",
    "Vertebral body collapse in the lower thoracic spine.",
    "Compression of a vertebral body.",
])
def test_vertebral_collapse_is_not_atelectasis(ex, text):
    # anatomy decides the class: a collapsed vertebra is a deformity, not a collapsed lung
    assert ex(text) == {}


def test_lung_collapse_stays_atelectasis(ex):
    assert ex("Left lower lobe collapse.") == {"atelectasis": E(["lower"], ["left"])}
    assert ex("Collapse of a midthoracic vertebral body, and left lower lobe collapse.") == {
        "atelectasis": E(["lower"], ["left"])}
    assert ex("Complete collapse of the right lung.") == {"atelectasis": E(dirs=["right"])}


def test_terms_that_are_not_findings_block_shorter_ones(ex):
    assert ex("Small pericardial effusion.") == {}
    assert ex("Calcified granuloma in the right upper lobe.") == {}
    assert ex("Pacemaker lead fracture.") == {}
    assert ex("Air in the pleural cavity.") == {}
    assert ex("Old granulomatous infection.") == {}


def test_matching_is_case_insensitive_and_whole_word(ex):
    assert set(ex("CARDIOMEGALY. Pleural Effusion.")) == {"cardiomegaly", "pleural effusion"}
    assert ex("Massive.") == {}  # 'mass' is a term, 'massive' is not a mass
    assert ex("Opacities.") == {"lung opacity": E()}


# -- sections and de-identification ------------------------------------------------------------
def test_sections_keep_findings_and_impression_only(ex):
    text = ("INDICATION: Rule out pneumonia, history of pneumothorax.\n"
            "COMPARISON: Pleural effusion on prior.\n"
            "FINDINGS: Mild cardiomegaly.\nIMPRESSION: Small left pleural effusion.")
    assert ex(text) == {"cardiomegaly": E(["mild"]), "pleural effusion": E(["small"], ["left"])}
    assert EntityExtractor(sections=False)(text).keys() >= {"pleural effusion", "cardiomegaly"}


def test_report_without_keep_sections_drops_ignored_ones(ex):
    assert ex("History: pneumonia.\n\nThere is mild cardiomegaly.") == {"cardiomegaly": E(["mild"])}
    assert ex("History: pneumonia.\nThere is mild cardiomegaly.") == {}  # still the history
    assert ex("Mild cardiomegaly.") == {"cardiomegaly": E(["mild"])}


def test_sections_do_not_run_together():
    f = SectionFilter(["findings", "impression"], ["indication"])
    out = f("FINDINGS: no effusion\nIMPRESSION: cardiomegaly")
    assert out == "no effusion . cardiomegaly"


def test_deid_placeholder_is_neutral(ex):
    assert ex("No XXXX pneumothorax.") == {}
    assert ex("XXXX XXXX are normal. XXXX opacity in the right base.") == {
        "lung opacity": E(["basal"], ["right"])}
    assert ex("Heart size XXXX. No XXXX-XXXX effusion.") == {}
    assert ex("Atelectasis at the ___ base.") == {"atelectasis": E(["basal"])}


# -- output vocabulary, inputs, robustness -----------------------------------------------------
def test_records_are_accepted_by_metaentities(ex):
    texts = ["Mild cardiomegaly with small bilateral pleural effusions.", "", "No acute disease.",
             "Right upper lobe nodule. Severe pulmonary edema. Left rib fractures.",
             "Moderate right pneumothorax with collapse of the right lung."]
    records = ex.extract(texts)
    ents = MetaEntities.from_records(records)
    assert len(ents) == 5
    assert records[1] == {} and records[2] == {}
    vocab = Vocabulary.default()
    for r in records:
        assert set(r) <= set(vocab.diseases)
        for v in r.values():
            assert set(v["adjs"]) <= set(vocab.adjectives)
            assert set(v["dirs"]) <= set(vocab.directions)


def test_empty_and_blank_reports_are_no_finding(ex):
    assert ex.extract(["", "   \n\t", ".", "FINDINGS:", "IMPRESSION: "]) == [{}] * 5


def test_bad_inputs_raise_clear_errors(ex):
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got NoneType"):
        ex.extract(["ok", None])
    with pytest.raises(TypeError, match="not one string"):
        ex.extract("No effusion.")
    with pytest.raises(TypeError, match="n_process must be an int"):
        ex.extract(["x"], n_process=1.5)


def test_parallel_extraction_matches_serial(ex):
    texts = [f"Report {i}. {'Small left pleural effusion.' if i % 3 else 'No effusion.'} "
             f"{'Mild cardiomegaly.' if i % 2 else ''}" for i in range(300)]
    assert ex.extract(texts, n_process=2, batch_size=64) == ex.extract(texts)


def test_parallel_extraction_without_fork(monkeypatch):
    # where fork is unavailable (macOS, Windows) each spawned worker rebuilds the pipeline from
    # the extractor's JSON settings
    import multiprocessing

    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    ex = EntityExtractor(uncertain="positive")
    texts = ["Possible left lower lobe pneumonia.", "No effusion.", ""] * 50
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtractionWarning)
        assert ex.extract(texts, n_process=2, batch_size=32) == [
            {"pneumonia": E(["lower"], ["left"])}, {}, {}] * 50


@given(st.text(max_size=300))
def test_arbitrary_unicode_never_crashes(text):
    out = _HYP.extract([text, "FINDINGS: " + text + " pleural effusion"])
    assert isinstance(out[0], dict)
    MetaEntities.from_records(out)


@given(st.lists(st.sampled_from(["No", "no", "left", "small", "effusion", "heart", "enlarged",
                                 "XXXX", ",", ".", "and", "but", "may", "FINDINGS:", "not",
                                 "opacity", "bilateral", "mild", "to", "moderate"]), max_size=40))
def test_word_salad_never_crashes(words):
    MetaEntities.from_records(_HYP.extract([" ".join(words)]))


_HYP = EntityExtractor()


# -- ontology files ----------------------------------------------------------------------------
def test_packaged_ontology_is_versioned_and_fixes_published_defects():
    onto = ExtractionOntology.default()
    assert onto.version and onto.name
    assert onto.classes == Vocabulary.default().diseases  # 12 classes in vocabulary order
    assert "infectious" not in onto.disease_terms and onto.adjective_terms["infectious"] == "infectious"
    assert "upper abdomen" not in onto.direction_terms
    assert onto.direction_terms["bilateral"] == "bilateral" and onto.direction_terms["both"] == "bilateral"
    assert "cardiac silhouette" not in onto.disease_terms  # conditional instead
    assert "opaci" not in onto.disease_terms


def _raw():
    return ExtractionOntology.default().to_config()


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d["diseases"].update({"pneumonitis": ["x"]}), r"diseases.pneumonitis: 'pneumonitis' is not"),
    (lambda d: d["diseases"]["edema"].append("effusion"), r"term 'effusion' is already listed under diseases.pleural effusion"),
    (lambda d: d["adjectives"].update({"small": ["small", 3]}), r"adjectives.small\[1\] must be a non-empty string"),
    (lambda d: d["adjectives"].update({"tiny-ish": ["tinyish"]}), r"adjectives.tiny-ish: 'tiny-ish' is not a name"),
    (lambda d: d["directions"]["left"].append("right"), r"directions.right: term 'right' is already mapped to 'left'"),
    (lambda d: d["context"].update({"maybe": {"forward": ["x"]}}), r"unknown category 'maybe'"),
    (lambda d: d["context"]["negated"]["forward"].append("possible"), r"phrase 'possible' is listed under"),
    (lambda d: d.pop("sections"), r"missing required keys \['sections'\]"),
    (lambda d: d["adjectives"].update({"infectious": ["infectious", "pneumonia"]}), r"term 'pneumonia' is both"),
    (lambda d: d["conditional"]["cardiomegaly"].pop("qualifiers"), r"conditional.cardiomegaly must have"),
])
def test_malformed_ontology_names_the_bad_entry(mutate, match):
    d = json.loads(json.dumps(_raw()))
    mutate(d)
    with pytest.raises(ValueError, match=match):
        EntityExtractor(d)


def test_ontology_files_yaml_and_json(tmp_path):
    d = _raw()
    d["diseases"]["pneumonia"] = d["diseases"]["pneumonia"] + ["pneumonitis"]
    (tmp_path / "o.json").write_text(json.dumps(d))
    assert EntityExtractor(str(tmp_path / "o.json"))("Pneumonitis.") == {"pneumonia": E()}
    import yaml

    (tmp_path / "o.yaml").write_text(yaml.safe_dump(d))
    assert EntityExtractor(tmp_path / "o.yaml")("Pneumonitis.") == {"pneumonia": E()}
    assert EntityExtractor()("Pneumonitis.") == {}

    (tmp_path / "dup.yaml").write_text("name: a\nname: b\n")
    with pytest.raises(ValueError, match="duplicate key 'name'"):
        ExtractionOntology.from_file(tmp_path / "dup.yaml")
    (tmp_path / "bad.yaml").write_text("diseases: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        ExtractionOntology.from_file(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="cannot read ontology file"):
        ExtractionOntology.from_file(tmp_path / "missing.yaml")
    with pytest.raises(TypeError, match="ontology must be None, a dict or a path"):
        EntityExtractor(42)


def test_yaml_booleans_are_caught():
    # an unquoted `no` in YAML 1.1 loads as False: the loader must say so rather than drop the cue
    d = _raw()
    d["context"]["negated"]["forward"] = [False, "not"]
    with pytest.raises(ValueError, match=r"context.negated.forward\[0\] must be a non-empty string, got False"):
        EntityExtractor(d)


def test_importing_medtrim_ext_does_not_import_spacy():
    code = ("import sys, medtrim_ext; from medtrim_ext import EntityExtractor; "
            "assert 'spacy' not in sys.modules and 'medspacy' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# -- long reports: linear time, spaCy's max_length, sentence cap -----------------------------------
_LONG_UNIT = ("FINDINGS: Small left pleural effusion with adjacent atelectasis. No pneumothorax. "
              "Heart size is mildly enlarged. There is no focal consolidation, effusion or edema. "
              "Possible right lower lobe opacity may represent pneumonia. ")


def _context_ops(ex, text, monkeypatch):
    """How many modifier/target and modifier/modifier comparisons ConText makes on ``text``."""
    from medspacy.context.context_modifier import ConTextModifier

    calls = {"n": 0}
    for name in ("modifies", "limit_scope"):
        orig = getattr(ConTextModifier, name)

        def counted(self, other, _orig=orig):
            calls["n"] += 1
            return _orig(self, other)

        monkeypatch.setattr(ConTextModifier, name, counted)
    record = ex(text)
    monkeypatch.undo()
    return calls["n"], record


@pytest.mark.parametrize("unit", [_LONG_UNIT, "no effusion, small left effusion and no pneumothorax "])
def test_context_work_grows_linearly_with_report_length(ex, monkeypatch, unit):
    # before: ConText compared every pair of modifiers and every (mention, modifier) pair of the
    # report, so 8x the text made ~64x the comparisons (160 KB took 8 s, 1 MiB never ended)
    short, _ = _context_ops(ex, unit * 40, monkeypatch)
    long, record = _context_ops(ex, unit * 320, monkeypatch)
    assert short > 0 and long / short < 12, (short, long)
    if unit is _LONG_UNIT:
        assert record == ex(unit)  # the same findings as one copy of the report


def test_context_per_sentence_gives_medspacy_marks():
    """ConText once per sentence marks exactly what medspacy's ConText marks on the whole doc."""
    import random

    from medspacy.context import ConTextRule

    ex = EntityExtractor(uncertain="positive")
    whole = EntityExtractor(uncertain="positive")
    # medspacy's own ConText component, on the whole document, in place of the per-sentence one
    whole.nlp.replace_pipe("medspacy_context", "medspacy_context", config={"rules": None})
    whole.nlp.get_pipe("medspacy_context").add(
        [ConTextRule(phrase, category, direction=direction)
         for phrase, category, direction in whole.ontology.context_rules])
    words = ["no", "No", "not", "without", "effusion", "pneumothorax", "opacity", "left", "small", "heart",
             "enlarged", "may", "represent", "possible", "history", "of", "evaluate", "for", "but", "there",
             "is", "no evidence of", "cannot exclude", "is not seen", "resolved", ",", ";", ".", "and", "with"]
    rng = random.Random(0)
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 120))) for _ in range(300)]
    with warnings.catch_warnings():
        # medspacy's matcher has an empty token-pattern matcher: spaCy warns on every document
        warnings.filterwarnings("ignore", message=r"\[W036\]")
        assert ex.extract(texts) == whole.extract(texts)


def test_report_longer_than_spacy_max_length_is_analysed_in_pieces(monkeypatch):
    ex = EntityExtractor()
    texts = [_LONG_UNIT * 3 + "Right pleural effusion too.", "Mild cardiomegaly."]
    expected = ex.extract(texts)
    ex.nlp.max_length = 150  # before: spaCy raised E088 and the whole batch was lost
    with pytest.warns(UserWarning, match=r"report 'big': .* more than spaCy's nlp.max_length \(150\)"):
        got = ex.extract(texts, ids=["big", "small"])
    assert got == expected
    assert expected[0]["pleural effusion"]["dirs"] == ["bilateral"]  # left + right across pieces


def test_report_over_a_million_characters(ex):
    text = _LONG_UNIT * (1_050_000 // len(_LONG_UNIT))
    assert len(text) > ex.nlp.max_length
    with pytest.warns(UserWarning, match=r"texts\[1\]: 1,0\d\d,\d\d\d characters"):
        out = ex.extract(["Mild cardiomegaly.", text])
    assert out == [{"cardiomegaly": E(["mild"])}, ex(_LONG_UNIT)]


def test_run_without_full_stops_is_cut_into_sentences(ex):
    from medtrim_ext.extraction.pipeline import MAX_SENTENCE_TOKENS

    doc = ex.nlp("no effusion , " * 500)
    lengths = [len(s) for s in doc.sents]
    assert max(lengths) <= MAX_SENTENCE_TOKENS and sum(lengths) == len(doc)
    # real sentences are never cut
    with ex.nlp.select_pipes(enable="sentencizer"):
        uncut = ex.nlp(_LONG_UNIT)
    assert [len(s) for s in ex.nlp(_LONG_UNIT).sents] == [len(s) for s in uncut.sents]


# -- text normalization, one bad report ----------------------------------------------------------
@pytest.mark.parametrize("text", [
    "Small pleural effusion.\x00",  # before: {}
    "Small pleural\x00effusion.",
    "Small pleural effusion\u200f.",  # right-to-left mark
    "Small \u202apleural effusion\u202c.",  # bidi embedding
    "Small pleural effu\u200bsion.",  # zero-width space
    "Small pleural effu\u00adsion.",  # soft hyphen
    "Small pleural effusion\u0301.",  # combining accent
    "Small pleural effusio\u0301n.",
    "Small pleural effusio\u0301n.".replace("o\u0301", "\u00f3"),  # precomposed accent
    "Small ｐleural effusion.",  # full-width letter
    "<p><b>Small</b> pleural effusion</p>",
    "Small<br/>pleural effusion.",
    "Small&nbsp;pleural&#160;effusion&#46;",
    "Small pleural effusion.\ud800",  # before: UnicodeEncodeError stopped the batch
    "Small pleural effusion.\udcff\ud83d",
    "FINDINGS:\x0cSmall pleural effusion.\x1b",
])
def test_findings_next_to_odd_characters_are_found(ex, text):
    assert ex(text) == {"pleural effusion": E(["small"])}


def test_normalize_text_leaves_plain_reports_alone():
    from medtrim_ext.extraction import normalize_text

    for text in ["FINDINGS: Heart size < 10 cm & lungs clear.", "Dr. XXXX<XXXX>technologist",
                 "[<Heart size and pulmonary vascularity is normal.", "R&D, A&P\nIMPRESSION:\tnone"]:
        assert normalize_text(text) == text
    assert normalize_text("a&gt;b &amp; c&#x41;") == "a>b & cA"
    assert normalize_text("x<!-- note -->y<DIV class='a'>z") == "x y\nz"
    assert normalize_text("\ud83d\ude00") == "\U0001f600"  # a surrogate pair is one character


@pytest.mark.parametrize("unit", ["+", "=", "&amp;", "_", "\u2014", "(+)", "'+", "!?"])
def test_punctuation_runs_reach_the_tokenizer_bounded(ex, unit):
    # spaCy splits a run of punctuation off one piece at a time, re-scanning the rest: 10,000 "+"
    # took 21 s, 2,700 "(+)" 15 s. The run is collapsed first, so what the tokenizer sees stops growing.
    from medtrim_ext.extraction import normalize_text

    sizes = []
    for n in (1000, 4000, 16000):
        text = normalize_text("Small pleural effusion " + unit * n + " end.")
        sizes.append((len(text), len(ex.nlp.tokenizer(text))))
    assert sizes[0] == sizes[1] == sizes[2] and sizes[0][0] < 40, sizes
    assert ex("Small pleural effusion. " + unit * 20000) == {"pleural effusion": E(["small"])}


def test_punctuation_runs_keep_three():
    from medtrim_ext.extraction import normalize_text

    assert normalize_text("a +++ b ++++ c ----- d ...... e") == "a +++ b +++ c --- d ... e"
    assert normalize_text("-+-+-+-+ (+)(+)(+)(+)(+) 10000 aaaa") == "-+-+-+ (+)(+)(+) 10000 aaaa"
    assert normalize_text("-+-+-+ a-b--c 1+1+1+1+1") == "-+-+-+ a-b--c 1+1+1+1+1"


def test_long_mixed_punctuation_reaches_the_tokenizer_in_pieces(ex):
    # a run that repeats no short unit cannot be collapsed; cut into pieces of 16 characters, its
    # tokens grow in proportion to its length (before: one piece, quadratic in its length)
    from medtrim_ext.extraction import normalize_text

    unit = "'+\"(%!*#"
    text = normalize_text("Small pleural effusion. " + unit * 4000)
    assert max(map(len, text.split())) == 16
    assert ex(text) == {"pleural effusion": E(["small"])}


@pytest.mark.parametrize("text", [
    "Small left pleural effusi\u03bfn.",  # Greek omicron
    "Small left pleural effusi\u043en.",  # Cyrillic o
    "Sm\u0430ll l\u0435ft pl\u0435ur\u0430l \u0435ffusion.",  # Cyrillic a, e
    "Small left \u03a1leural effusion.",  # Greek capital rho
    "Small left pleural effu\u3164sion.",  # Hangul filler
    "Small left pleural effusion\uffa0.",  # half-width Hangul filler
    "Small left\u3164pleural effusion.".replace("\u3164", "\u3164 "),
])
def test_look_alike_and_filler_characters_are_found(ex, text):
    assert ex(text) == {"pleural effusion": E(["small"], ["left"])}


def test_look_alikes_are_mapped_only_inside_latin_words():
    from medtrim_ext.extraction import normalize_text

    # Greek or Cyrillic words and symbols stay as they are
    for text in ["\u03b1-fetoprotein", "\u03bcg", "\u03bf\u03c1\u03bf\u03c2", "\u043e\u0441\u043e\u0431\u043e"]:
        assert normalize_text(text) == text
    assert normalize_text("effusi\u03bfn \u03bfx") == "effusion ox"


def test_one_failing_report_does_not_stop_the_batch(monkeypatch):
    ex = EntityExtractor()
    make_extraction_fail_on(monkeypatch, "boom")
    texts = ["Small left pleural effusion.", "boom effusion.", "Mild cardiomegaly."]
    with pytest.warns(UserWarning, match=r"report 's2': extraction failed \(RuntimeError: kaboom\)"):
        out = ex.extract(texts, ids=["s1", "s2", "s3"])
    assert out == [{"pleural effusion": E(["small"], ["left"])}, {}, {"cardiomegaly": E(["mild"])}]
    # the same through worker processes: the parent names the report
    many = texts * 40
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ex.extract(many, n_process=2, batch_size=16) == out * 40
    named = [str(w.message).split(":")[0] for w in caught if issubclass(w.category, ExtractionWarning)]
    assert named == [f"texts[{i}]" for i in range(1, 120, 3)]
    with pytest.raises(ValueError, match="ids"):
        ex.extract(texts, ids=["a"])


def test_building_an_extractor_keeps_warnings_visible():
    # medspacy's import runs warnings.filterwarnings("ignore"): every later warning was hidden
    code = ("import warnings; from medtrim_ext.extraction import EntityExtractor; EntityExtractor(); "
            "warnings.warn('still shown')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert "UserWarning: still shown" in out.stderr


# -- spaCy components ------------------------------------------------------------------------------
PIPE_NAMES = ["sentencizer", "medtrim_sentence_cap", "medtrim_targets", "medspacy_context",
              "medtrim_descriptors", "medtrim_record"]


def test_pipeline_is_made_of_registered_components(ex):
    from medspacy.context import ConText

    assert ex.nlp.pipe_names == PIPE_NAMES
    factories = {name: ex.nlp.get_pipe_meta(name).factory for name in ex.nlp.pipe_names}
    assert factories["medspacy_context"] == "medtrim_context"
    assert isinstance(ex.nlp.get_pipe("medspacy_context"), ConText)  # medspacy's, once per sentence
    doc = ex.nlp(ex.preprocess("FINDINGS: Small left pleural effusion. No pneumothorax."))
    assert doc._.medtrim_record == {"pleural effusion": E(["small"], ["left"])}
    assert [(e.text, e.label_, e._.is_negated) for e in doc.ents] == [
        ("pleural effusion", "D|pleural effusion", False), ("pneumothorax", "D|pneumothorax", True)]
    assert (0, 1, "A", "small") in doc._.medtrim_descriptors


def test_components_can_be_added_to_a_blank_pipeline_by_name(ex):
    import spacy

    import medtrim_ext.extraction.components  # noqa: F401  (registers the factories)

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("medtrim_targets")
    text = "Mild cardiomegaly. No effusion. Small left pneumothorax, no pericardial effusion."
    assert [e.label_ for e in nlp(text).ents] == ["D|cardiomegaly", "D|pleural effusion", "D|pneumothorax"]
    nlp.add_pipe("medtrim_context", name="medspacy_context")
    nlp.add_pipe("medtrim_descriptors")
    nlp.add_pipe("medtrim_record", config={"uncertain": "positive"})
    assert nlp(text)._.medtrim_record == ex(text) == {
        "cardiomegaly": E(["mild"]), "pneumothorax": E(["small"], ["left"])}
    assert nlp("Possible pneumonia.")._.medtrim_record == {"pneumonia": E()}
    with pytest.raises(ValueError, match="uncertain must be one of"):
        nlp.add_pipe("medtrim_record", name="other", config={"uncertain": "maybe"})
    with pytest.raises(ValueError, match="max_tokens must be a positive int, got 0"):
        nlp.add_pipe("medtrim_sentence_cap", config={"max_tokens": 0})
    nlp.add_pipe("medtrim_sentence_cap", config={"max_tokens": 4}, after="sentencizer")
    assert [len(s) for s in nlp("a b c d e f g h i j").sents] == [4, 4, 2]


def test_pipeline_rebuilds_from_its_config():
    # the components' state is their config (JSON values): spaCy rebuilds them from it alone
    from spacy.util import load_model_from_config
    from thinc.api import Config

    d = ExtractionOntology.default().to_config()
    d["diseases"]["pneumonia"] = d["diseases"]["pneumonia"] + ["pneumonitis"]
    ex = EntityExtractor(d, uncertain="positive")
    nlp = load_model_from_config(Config().from_str(ex.nlp.config.to_str()), auto_fill=True)
    assert nlp.pipe_names == PIPE_NAMES
    for text in ["pneumonitis . possible left effusion .", "no pneumonitis ."]:
        assert nlp(text)._.medtrim_record == ex(text)
    assert nlp("pneumonitis .")._.medtrim_record == {"pneumonia": E()}


def test_a_failing_component_names_the_report_in_and_out_of_workers(monkeypatch):
    from medtrim_ext.extraction import components

    ex = EntityExtractor()
    real = components.RecordBuilder.process

    def fragile(self, doc):
        if "boom" in doc.text:
            raise RuntimeError("kaboom")
        real(self, doc)

    monkeypatch.setattr(components.RecordBuilder, "process", fragile)  # forked workers inherit it
    texts = ["Small left pleural effusion.", "boom effusion.", "Mild cardiomegaly."] * 200
    expected = [{"pleural effusion": E(["small"], ["left"])}, {}, {"cardiomegaly": E(["mild"])}] * 200
    for n_process in (1, 2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert ex.extract(texts, n_process=n_process, batch_size=64) == expected
        messages = [str(w.message) for w in caught if issubclass(w.category, ExtractionWarning)]
        assert len(messages) == 200
        assert messages[0] == ("texts[1]: extraction failed (RuntimeError: kaboom) in component "
                               "'medtrim_record'; recorded as no finding")
    # without the extractor's error handler, spaCy's default raises
    from spacy.util import raise_error

    ex.nlp.set_error_handler(raise_error)
    with pytest.raises(RuntimeError, match="kaboom"):
        ex.nlp("boom effusion.")
