"""The pure-Python tokenizer (runtime/tokenizer.py) against the libraries it stands in for.

``tokenizers`` (transformers' fast T5 tokenizer) is the reference, id for id, on the bundled tokenizer and
on a T5 tokenizer built like the released ones (SentencePiece ``nmt_nfkc`` charsmap, WhitespaceSplit +
Metaspace, ``<extra_id_*>`` tokens). ``sentencepiece`` (audiocraft's slow tokenizer) must agree on
ordinary prompts; the one documented divergence is pinned so a change in either library shows up.
"""

from __future__ import annotations

import json
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import BUNDLED
from musicgen_onnx.export.validate import TOKENIZER_PROBES, check_tokenizer
from musicgen_onnx.runtime.errors import ExportError, InvalidInputError, ModelFolderError
from musicgen_onnx.runtime.prompt_ids import TextTokenizer
from musicgen_onnx.runtime.tokenizer import Tokenizer

PROMPTS = [
    "", " ", "a", " a", "a ", "a  b", "A calm piano melody", "80s pop track with bassy drums and synth",
    "a light and cheerly EDM track, with syncopated drums, aery pads, and strong emotions",
    "lofi slow bpm electro chill with organic samples", "Café naïve déjà vu", "ﬁne ｆｕｌｌ ＷＩＤＴＨ ① ™",
    "tab\there\nnew line\r\nCRLF", "trailing spaces   ", "\u3000ideographic\u00a0nbsp", "emoji 🎸🎹 drums 👍🏽",
    "中文 音乐", "</s> inside <pad> and <unk>", "x</s>y<extra_id_3>z", "e\u0301 combining", "ＡBC",
]
# Characters that trip grapheme, whitespace and normalisation rules, and the added tokens.
TRICKY = list("abcXYZ09 .,!?<>/_") + ["\t", "\n", "\r", "\r\n", "\x85", "\xa0", "\u3000", "\u2028", "\u200b",
                                        "\u200c", "\u200d", "\ufe0f", "\u0301", "\u0308", "\u0600", "\u0e33",
                                        "\uff9e", "\uff76", "Ａ", "ﬁ", "é", "ß", "İ", "™", "①", "\u1100",
                                        "\u1161", "\uac00", "🎸", "\U0001f3fb", "\U0001f1e6", "中", "</s>",
                                        "<pad>", "<unk>", "<extra_id_0>", "<extra_id_99>"]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _reference(path):
    from tokenizers import Tokenizer as Reference

    ref = Reference.from_file(str(path))
    ref.no_padding()
    ref.no_truncation()
    return ref


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    """(tokenizer.json path, sentencepiece processor) of a T5 tokenizer built like the released ones."""
    import sentencepiece as spm

    from musicgen_onnx.export.random_checkpoints import build_sentencepiece_tokenizer

    folder = build_sentencepiece_tokenizer(tmp_path_factory.mktemp("t5tok"))
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    assert spec["normalizer"]["type"] == "Precompiled" and len(spec["added_tokens"]) == 103  # the real layout
    return folder / "tokenizer.json", spm.SentencePieceProcessor(model_file=str(folder / "spiece.model"))


@pytest.fixture(scope="module")
def pairs(t5):
    """[(ours, tokenizers)] for the bundled tokenizer and the T5 one."""
    return [(Tokenizer.from_file(p), _reference(p)) for p in (BUNDLED / "tokenizer.json", t5[0])]


def _same(pairs, text):
    for ours, ref in pairs:
        assert ours.encode(text) == ref.encode(text).ids, text


def test_matches_tokenizers_on_prompts(pairs):
    for text in PROMPTS + list(TOKENIZER_PROBES):
        _same(pairs, text)


@FUZZ
@given(text=st.lists(st.sampled_from(TRICKY), max_size=24).map("".join))
def test_matches_tokenizers_on_tricky_text(pairs, text):
    _same(pairs, text)


@FUZZ
@given(text=st.text(max_size=24))
def test_matches_tokenizers_on_any_text_with_the_t5_charsmap(pairs, text):
    ours, ref = pairs[1]
    assert ours.encode(text) == ref.encode(text).ids


# The bundled tokenizer normalises with NFKC, i.e. with the Unicode tables of Python's unicodedata
# (14.0 on 3.11) against those compiled into tokenizers (older: 72 code points assigned since Unicode
# 12.1 map differently, e.g. U+32FF). T5's own tokenizer carries its rules in the charsmap instead.
OLD_UNICODE = st.characters(exclude_categories=("Cs",)).filter(lambda c: unicodedata.ucd_3_2_0.category(c) != "Cn")


@FUZZ
@given(text=st.text(alphabet=OLD_UNICODE, max_size=24))
def test_matches_tokenizers_on_any_text_with_nfkc(pairs, text):
    ours, ref = pairs[0]
    assert ours.encode(text) == ref.encode(text).ids


@FUZZ
@given(text=st.lists(st.sampled_from(TRICKY + ["\x1c", "]", "\\s"]), max_size=24).map("".join))
def test_regex_normalizers_match_tokenizers(tmp_path_factory, text):
    """Oniguruma's \\s (tokenizers) is not Python's: the reader spells it out, in and outside classes."""
    spec = json.loads((BUNDLED / "tokenizer.json").read_text(encoding="utf-8"))
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Replace", "pattern": {"Regex": r"[\s\]]{2,}"}, "content": "_"},
        {"type": "Replace", "pattern": {"Regex": r"\S\s"}, "content": "="},
        {"type": "Strip", "strip_left": True, "strip_right": False}]}
    path = tmp_path_factory.getbasetemp() / "regex-tokenizer.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    assert Tokenizer.from_file(path).encode(text) == _reference(path).encode(text).ids


def test_agrees_with_sentencepiece_on_ordinary_prompts(t5):
    path, sp = t5
    ours = Tokenizer.from_file(path)
    for text in [p for p in PROMPTS if "<" not in p and "\r" not in p and "\u3000" not in p and "👍" not in p]:
        assert ours.encode(text) == sp.encode(text) + [1], text


def test_follows_tokenizers_where_sentencepiece_differs(t5):
    """tokenizers normalises per grapheme cluster: the accent after a full-width A is dropped."""
    path, sp = t5
    ours, ref = Tokenizer.from_file(path), _reference(path)
    text = "Ａ\u0301"
    assert ours.encode(text) == ref.encode(text).ids != sp.encode(text) + [1]


def test_batches_pad_and_mask():
    ids, mask = TextTokenizer(BUNDLED / "tokenizer.json")(["a calm piano melody", None, "rock"])
    ref = _reference(BUNDLED / "tokenizer.json")
    for row, text in enumerate(["a calm piano melody", "", "rock"]):
        want = ref.encode(text).ids
        assert ids[row, : len(want)].tolist() == want and (ids[row, len(want):] == 0).all()
        assert mask[row].tolist() == [int(row != 1)] * len(want) + [0] * (ids.shape[1] - len(want))


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["model"].update(type="BPE"), "unsupported model 'BPE' (supported: 'Unigram')"),
    (lambda s: s.update(normalizer={"type": "BertNormalizer"}), "unsupported normalizer 'BertNormalizer'"),
    (lambda s: s.update(pre_tokenizer={"type": "Metaspace", "prepend_scheme": "first"}),
     "unsupported Metaspace prepend_scheme 'first' (supported: 'always', 'never')"),
    (lambda s: s.update(pre_tokenizer={"type": "ByteLevel"}), "unsupported pre_tokenizer 'ByteLevel'"),
    (lambda s: s.update(post_processor={"type": "BertProcessing"}), "unsupported post_processor 'BertProcessing'"),
    (lambda s: s["model"].update(vocab=[["a", "x"]]), "malformed"),
    (lambda s: s.update(normalizer={"type": "Replace", "pattern": {"Regex": r"\p{L}+"}, "content": ""}),
     "unsupported Replace regex"),
])
def test_unsupported_or_malformed_files_are_refused_by_name(tmp_path, edit, message):
    spec = json.loads((BUNDLED / "tokenizer.json").read_text(encoding="utf-8"))
    edit(spec)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ModelFolderError, match="unreadable tokenizer") as err:
        Tokenizer.from_file(path)
    assert str(path) in str(err.value) and message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ExportError, match="the runtime cannot read it"):
        check_tokenizer(json.dumps(spec))


def test_character_outside_a_vocabulary_without_unk_is_a_prompt_error(tmp_path):
    spec = json.loads((BUNDLED / "tokenizer.json").read_text(encoding="utf-8"))
    spec["model"]["unk_id"] = None
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"prompt: '中' is not in the vocabulary"):
        TextTokenizer(path)(["中"])
    check_tokenizer(json.dumps(spec))  # tokenizers refuses the same probe texts: the export accepts it


def test_export_check_catches_a_disagreement(monkeypatch):
    """The exporter compares the two readers; a runtime that tokenized differently would be caught."""
    from musicgen_onnx.runtime import tokenizer as tok_mod

    text = (BUNDLED / "tokenizer.json").read_text(encoding="utf-8")
    check_tokenizer(text)
    monkeypatch.setattr(tok_mod._Unigram, "__call__", lambda self, word: [self.unk_id])
    with pytest.raises(ExportError, match="the runtime tokenizes"):
        check_tokenizer(text)


def _paths(node, prefix=()):
    """Every place in a tokenizer.json (the vocabulary by its first entries) a value could be swapped."""
    items = node.items() if isinstance(node, dict) else enumerate(node[:4]) if isinstance(node, list) else []
    for key, value in items:
        yield prefix + (key,)
        yield from _paths(value, prefix + (key,))


_SPEC = json.loads((BUNDLED / "tokenizer.json").read_text(encoding="utf-8"))
_PATHS = list(_paths(_SPEC))
_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2, 10**12), st.floats(allow_nan=True), st.text(max_size=5),
                  st.just([]), st.just({}), st.just([["a", "b"]]), st.just({"type": "NFKC"}), st.just({"Regex": "("}))


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(_PATHS), _JUNK), min_size=1, max_size=3))
def test_crafted_tokenizer_files_load_or_fail_cleanly(tmp_path_factory, edits):
    """Any tokenizer.json either tokenizes or is refused as a folder error; nothing else escapes."""
    import copy

    spec = copy.deepcopy(_SPEC)
    for path, value in edits:
        node = spec
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = copy.deepcopy(value)  # st.just hands out one shared object
        except (KeyError, IndexError, TypeError):
            continue
    target = tmp_path_factory.getbasetemp() / "crafted-tokenizer.json"
    target.write_text(json.dumps(spec), encoding="utf-8")
    try:
        TextTokenizer(target)(["A calm piano melody", None, "x </s> ﬁ"])
    except (ModelFolderError, InvalidInputError) as exc:
        assert "\n" not in str(exc)
