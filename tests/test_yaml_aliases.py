"""YAML inputs (training configs, overrides, the extraction ontology) refuse aliases: an alias
bomb passed ``load_config`` and then exhausted memory, and a self-referencing alias gave a
RecursionError (issue 24, item 8)."""

from __future__ import annotations

from importlib import resources

import pytest

from medtrim_ext.extraction.ontology import ExtractionOntology
from medtrim_ext.training import load_config
from medtrim_ext.training.config import parse_override, preset_names, read_config_file

# Nine levels of ten: 10**9 leaves once expanded (a few hundred bytes of text). Kept small
# enough here that the unfixed loader only builds shared references, not the expansion.
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("text", [
    BOMB,
    "train: &t {steps: *t}\n",       # refers to itself
    "optim: {lr: &lr 0.001, text_lr: *lr}\n",  # even a harmless one: the rule is simple
])
def test_config_aliases_are_refused_naming_the_file(tmp_path, text):
    path = tmp_path / "alias.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"config .*alias\.yaml: not valid YAML .*YAML aliases \(\*\w+\) are not allowed"):
        read_config_file(path)
    with pytest.raises(ValueError, match=r"alias\.yaml.*YAML aliases"):
        load_config(path)


def test_override_aliases_are_refused():
    with pytest.raises(ValueError, match=r"override 'train.steps=\[&a 1, \*a\]'.*YAML aliases"):
        parse_override("train.steps=[&a 1, *a]")


def test_ontology_aliases_are_refused():
    with pytest.raises(ValueError, match=r"ontology mine.yaml is not valid YAML.*YAML aliases \(\*a\)"):
        ExtractionOntology.from_text(BOMB, source="mine.yaml")
    with pytest.raises(ValueError, match=r"ontology self.yaml is not valid YAML.*YAML aliases \(\*d\)"):
        ExtractionOntology.from_text("diseases: &d {x: *d}\n", source="self.yaml")


def test_packaged_yaml_files_have_no_aliases_and_still_load():
    for name in preset_names():
        assert load_config(name).to_dict()
    ExtractionOntology.default()
    data = resources.files("medtrim_ext") / "data"
    for ref in [data / "extraction.yaml", *(data / "configs").iterdir()]:
        if ref.name.endswith(".yaml"):
            import yaml

            events = yaml.parse(ref.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
            assert not any(isinstance(e, yaml.AliasEvent) for e in events), ref.name
