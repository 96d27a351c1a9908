"""MetaEntities and Vocabulary: packing, records, synonyms, indexing."""

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from medtrim_ext import MetaEntities, Vocabulary
from medtrim_ext.entities.bits import pack_bits, unpack_bits

from helpers import entity_sets, generic_vocabulary


@given(st.integers(0, 5), st.integers(1, 130), st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(n, k, seed):
    mask = torch.rand(n, 3, k, generator=torch.Generator().manual_seed(seed)) < 0.4
    words = pack_bits(mask)
    assert words.dtype == torch.int32 and words.shape == (n, 3, -(-k // 32))
    assert torch.equal(unpack_bits(words, k), mask)


def test_bit_layout():
    mask = torch.zeros(1, 40, dtype=torch.bool)
    mask[0, [0, 31, 33]] = True
    words = pack_bits(mask)
    assert words[0, 0].item() == 1 - 2**31  # bits 0 and 31
    assert words[0, 1].item() == 2  # bit 33 is bit 1 of word 1


@given(entity_sets())
def test_records_round_trip(sets):
    anchors, _, vocab = sets
    again = MetaEntities.from_records(anchors.to_records(), vocabulary=vocab)
    assert torch.equal(again.disease_bits, anchors.disease_bits)
    assert torch.equal(again.adjective_bits, anchors.adjective_bits)
    assert torch.equal(again.direction_bits, anchors.direction_bits)


def test_synonyms_and_case_are_canonicalized():
    a = MetaEntities.from_records([{"Effusions": {"adjs": ["Tiny"], "dirs": ["left-sided"]},
                                    "mass": {"dirs": ["both"]}}])
    assert a.to_records() == [{"lung lesion": {"adjs": [], "dirs": ["bilateral"]},
                               "pleural effusion": {"adjs": ["small"], "dirs": ["left"]}}]


def test_no_finding_forms():
    ents = MetaEntities.from_records([{}, {"no finding": {}}, {"No Finding": None}])
    assert ents.disease_bits.tolist() == [0, 0, 0]


def test_sets_and_tuples_accepted():
    ents = MetaEntities.from_records([{"edema": {"adjs": {"mild"}, "dirs": ("left", "right")}}])
    assert ents.to_records()[0]["edema"] == {"adjs": ["mild"], "dirs": ["left", "right"]}


def test_indexing_and_cat():
    recs = [{"edema": {}}, {}, {"fracture": {"dirs": ["left"]}}, {"cardiomegaly": {}}]
    ents = MetaEntities.from_records(recs)
    assert len(ents) == 4
    assert ents[2].to_records() == [{"fracture": {"adjs": [], "dirs": ["left"]}}]
    assert ents[-1].to_records() == [recs[3] | {"cardiomegaly": {"adjs": [], "dirs": []}}]
    assert len(ents[1:3]) == 2
    assert len(ents[torch.tensor([True, False, True, False])]) == 2
    assert ents[torch.tensor([3, 0])].to_records()[1] == {"edema": {"adjs": [], "dirs": []}}
    both = MetaEntities.cat([ents[:2], ents[2:]])
    assert both.to_records() == ents.to_records()
    with pytest.raises(IndexError):
        ents[4]
    with pytest.raises(TypeError, match="bool or integer"):
        ents[torch.tensor([0.5])]
    with pytest.raises(ValueError, match="different vocabulary"):
        MetaEntities.cat([ents, MetaEntities.from_records([{}], vocabulary=generic_vocabulary(12, 98, 3))])


def test_masks_shapes_and_device_moves():
    ents = MetaEntities.from_records([{"edema": {"adjs": ["mild"]}}, {}])
    d, a, r = ents.masks()
    assert d.shape == (2, 12) and a.shape == (2, 12, 98) and r.shape == (2, 12, 3)
    assert ents.to("cpu") is ents and ents.device.type == "cpu"
    assert "n=2" in repr(ents)


def test_default_vocabulary_is_the_packaged_ontology():
    v = Vocabulary.default()
    assert v.sizes == (12, 98, 3)
    assert v.directions == ("left", "right", "bilateral")
    assert "no finding" not in v.diseases
    assert v.name == "medtrim-default" and v.version


def test_custom_vocabulary_file(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"name": "mine", "diseases": ["nodule"], "adjectives": ["tiny"],
                                "directions": ["left"], "disease_synonyms": {"lump": "nodule"}}))
    v = Vocabulary.from_file(path)
    ents = MetaEntities.from_records([{"lump": {"adjs": ["tiny"]}}], vocabulary=v)
    assert ents.to_records() == [{"nodule": {"adjs": ["tiny"], "dirs": []}}]


@pytest.mark.parametrize("kind", ["disease", "adjective", "direction"])
def test_synonym_equal_to_another_canonical_name_is_refused(kind, tmp_path):
    # {"b": "a"} with "b" canonical would silently move every "b" record to "a" (issue 24, item 9).
    names = {"diseases": ["nodule"], "adjectives": ["tiny"], "directions": ["left"]}
    names[kind + "s"] = ["a", "b"]
    with pytest.raises(ValueError, match=rf"{kind}_synonyms entry 'B'.*'B' is itself a canonical name"):
        Vocabulary(**names, **{f"{kind}_synonyms": {"B": "a"}})
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({**names, f"{kind}_synonyms": {"b": "a"}}))
    with pytest.raises(ValueError, match=rf"vocab.json: {kind}_synonyms entry 'b' maps to 'a'"):
        Vocabulary.from_file(path)
    # A synonym naming its own canonical class is harmless and still accepted.
    v = Vocabulary(**names, **{f"{kind}_synonyms": {"B": "b"}})
    assert getattr(v, f"{kind}_index")("B") == 1


def test_synonyms_that_normalise_alike_must_agree():
    with pytest.raises(ValueError, match=r"normalised 'lump'\) already maps to 'a'"):
        Vocabulary(("a", "b"), ("x",), ("l",), disease_synonyms={"lump": "a", " Lump ": "b"})
