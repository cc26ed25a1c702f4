"""The `published` chord vocabulary shipped in jasco/controls/chords/vocabularies: the published order."""
from __future__ import annotations

import json

import pytest
from reference_files import CHORD_MAPPING

from jasco.controls.chords.vocabulary import (
    PUBLISHED_VOCABULARY,
    ChordVocabulary,
    vocabulary_file,
)


def test_published_spec_names_the_packaged_json():
    path = vocabulary_file(PUBLISHED_VOCABULARY)
    assert path.is_file() and path.suffix == ".json" and path.parent.name == "vocabularies"
    mapping = json.loads(path.read_text(encoding="utf-8"))  # plain {"label": index}
    vocabulary = ChordVocabulary.from_spec("published")
    assert vocabulary.to_dict() == mapping
    assert vocabulary.card == 194 and vocabulary.no_chord_index == 0 and vocabulary.unk_index == 193
    builtin = ChordVocabulary.builtin()
    assert set(vocabulary.labels) == set(builtin.labels) and vocabulary.labels != builtin.labels


def test_published_json_has_the_order_of_the_published_pickle():
    if not CHORD_MAPPING.is_file():
        pytest.skip(f"the published chord_to_index_mapping.pkl is not at {CHORD_MAPPING}")
    assert ChordVocabulary.from_spec("published").labels == ChordVocabulary.from_file(CHORD_MAPPING).labels
