"""A hostile ``tokenizer.json`` (model folders come from strangers) and hostile prompts (from anyone, through a
server): every crafted file or prompt either tokenizes or is refused with a one-line ModelFolderError /
InvalidInputError naming the file or prompt and the rule, within bounded time and memory.

Each test pins one defect the reader had: ids the text encoder cannot embed, int64-overflowing template ids,
backtracking regexes, huge vocabulary pieces, Replace rules that multiply a prompt, prompts of any length,
and a fuzzer of crafted files that would catch anything else escaping as a traceback or a hang.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import struct
import time

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from helpers import BUNDLED
from musicgen_onnx.runtime import tokenizer as tok_mod
from musicgen_onnx.runtime.errors import InvalidInputError, ModelFolderError
from musicgen_onnx.runtime.prompt_ids import MAX_PROMPT_CHARS, MAX_PROMPT_TOKENS, TextTokenizer
from musicgen_onnx.runtime.tokenizer import MAX_NORMALIZED_CHARS, Tokenizer

BASE = json.loads((BUNDLED / "tokenizer.json").read_text(encoding="utf-8"))  # 134 pieces, ids 0..133


def _crafted(tmp_path, edit, name="tokenizer.json"):
    spec = copy.deepcopy(BASE)
    edit(spec)
    path = tmp_path / name
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def _refused(path, *fragments, **kwargs) -> str:
    """Loading ``path`` fails with one line naming the file and containing every fragment."""
    with pytest.raises(ModelFolderError) as err:
        TextTokenizer(path, **kwargs)
    message = str(err.value)
    assert str(path) in message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _prompt_refused(call, *fragments) -> str:
    with pytest.raises(InvalidInputError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _added(token_id, content):
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


# ---------------------------------------------------------------- 1. ids the text encoder cannot embed


@pytest.mark.parametrize("edit, max_id, what", [
    (lambda s: s["added_tokens"].append(_added(10**6, "<big>")), 512, "added token '<big>' has id 1000000"),
    (lambda s: s["post_processor"]["special_tokens"]["</s>"].update(ids=[600]), 512,
     "TemplateProcessing special token has id 600"),
    (lambda s: None, 100, "vocab piece 133 has id 133"),  # the 134-piece vocabulary itself
])
def test_an_id_the_text_encoder_cannot_embed_is_refused_on_load(tmp_path, edit, max_id, what):
    path = _crafted(tmp_path, edit)
    _refused(path, what, f"ids below {max_id}", max_id=max_id)
    with pytest.raises(ModelFolderError, match=f"ids below {max_id}"):
        Tokenizer.from_file(path, max_id=max_id)


def test_max_id_accepts_exactly_what_the_encoder_embeds(tmp_path):
    path = BUNDLED / "tokenizer.json"
    TextTokenizer(path, max_id=512)(["a calm piano melody"])  # the tiny T5's vocab_size
    TextTokenizer(path, max_id=134)(["a calm piano melody"])  # 134 pieces: ids 0..133
    _refused(path, "vocab piece 133 has id 133", "ids below 133", max_id=133)
    with pytest.raises(ValueError, match="max_id must be a positive integer"):
        Tokenizer.from_file(path, max_id=0)


def test_without_max_id_a_large_added_id_still_loads(tmp_path):
    """The bound is the caller's to give (the manifest's text encoder vocabulary size); without it, any
    int32 id is taken as today."""
    path = _crafted(tmp_path, lambda s: s["added_tokens"].append(_added(10**6, "<big>")))
    ids, _ = TextTokenizer(path)(["x <big>"])
    assert 10**6 in ids[0].tolist()


# ---------------------------------------------------------------- 2. ids are int32-sized ints, always


@pytest.mark.parametrize("bad", [2**63, 2**31, -1, True, 1.0, "1", None], ids=str)
def test_template_ids_must_be_ints_below_2_to_the_31(tmp_path, bad):
    path = _crafted(tmp_path, lambda s: s["post_processor"]["special_tokens"]["</s>"].update(ids=[bad]))
    _refused(path, "unreadable tokenizer", "TemplateProcessing '</s>' id", "is not an integer in [0, 2**31)")


@pytest.mark.parametrize("edit, fragment", [
    (lambda s: s["added_tokens"].append(_added(2**63, "<x>")), "added token '<x>' id"),
    (lambda s: s["added_tokens"][0].update(id=True), "added token '<pad>' id True"),
    (lambda s: s["post_processor"]["special_tokens"]["</s>"].update(ids=1), "must be a list"),
    (lambda s: s["model"].update(unk_id=True), "unk_id True"),
])
def test_other_ids_are_checked_the_same_way(tmp_path, edit, fragment):
    _refused(_crafted(tmp_path, edit), fragment)


def test_the_largest_int32_id_is_accepted(tmp_path):
    path = _crafted(tmp_path, lambda s: s["post_processor"]["special_tokens"]["</s>"].update(ids=[2**31 - 1]))
    ids, _ = TextTokenizer(path)(["a"])
    assert ids[0, -1] == 2**31 - 1


# ---------------------------------------------------------------- 3. regexes that backtrack


def _with_regex(pattern, content="▁"):
    def edit(spec):
        spec["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "NFKC"}, {"type": "Replace", "pattern": {"Regex": pattern}, "content": content}]}
    return edit


@pytest.mark.parametrize("pattern, rule", [
    ("(a+)+$", "a nested quantifier"),  # 2**35 paths on "a" * 35 + "!"
    ("(?:a*b?)*c", "a nested quantifier"),
    ("(a|aa)+$", "'|' inside a group"),  # exponential without any nested quantifier
    ("a*a*a*a*a*a*a*a*c", "a repeat that does not end its alternative"),  # O(n**8)
    (r"\s+$", "a repeat that does not end its alternative"),  # O(n**2): seconds on 16k spaces
    (r"(a)\1", "a backreference"),
    (r"(?P<x>a)(?P=x)", "the group extension '(?P'"),
    ("(?=a)a", "a lookaround"),
    ("(?<!b)a", "a lookaround"),
    ("(?>a+)b", "the group extension '(?>'"),
    ("a{1000}", "a repeat count of 1000"),
    ("[[a]b]", "a nested character class"),
    ("a" * 65, "65 characters"),
])
def test_regexes_that_can_backtrack_are_refused_by_name(tmp_path, pattern, rule):
    start = time.perf_counter()
    message = _refused(_crafted(tmp_path, _with_regex(pattern)), "unsupported Replace regex", rule,
                       "allowed: at most 64 characters, no backreferences, lookarounds, nested quantifiers")
    assert time.perf_counter() - start < 1, message


ALLOWED = [" {2,}", r"\s+", r"\A▁", r"[\s\]]{2,}", r"\S\s", r"a|b{2,}", "(?:ab)+", "x{2}", r"[^\s]+", ""]


@pytest.mark.export  # tokenizers / sentencepiece (the export extra) build or check the reference
@pytest.mark.parametrize("pattern", ALLOWED)
def test_the_regexes_sentencepiece_converters_write_still_match_tokenizers(tmp_path, pattern):
    from tokenizers import Tokenizer as Reference

    path = _crafted(tmp_path, _with_regex(pattern))
    ours, ref = Tokenizer.from_file(path), Reference.from_file(str(path))
    for text in ["a  calm   piano", "ab ab abab  x", "xx xxx", "]]  ]", "a" * 35 + "!", "\u3000 \t a", ""]:
        assert ours.encode(text) == ref.encode(text).ids, (pattern, text)


def test_a_literal_string_pattern_is_never_a_regex(tmp_path):
    """``String`` patterns are plain text (the bundled file's is the literal ``\\s+``): any content goes."""
    path = _crafted(tmp_path, lambda s: s["normalizer"]["normalizers"].append(
        {"type": "Replace", "pattern": {"String": "(a+)+$"}, "content": "x"}))
    start = time.perf_counter()
    TextTokenizer(path)(["a" * 35 + "!", "(a+)+$ " * 100])
    assert time.perf_counter() - start < 1


# ---------------------------------------------------------------- 4. huge vocabulary pieces


@pytest.mark.parametrize("edit, fragment", [
    (lambda s: s["model"]["vocab"].append(["a" * 200_000, -1.0]), "vocab piece 134 'aaaaaaa"),
    (lambda s: s["added_tokens"].append(_added(200, "<" * 10_000)), "added token content"),
    (lambda s: s["added_tokens"].append(dict(_added(200, "ﷺ" * 10), normalized=True)),
     "normalises to 180 characters"),  # NFKC: 18 characters each
])
def test_huge_pieces_are_refused_on_load(tmp_path, edit, fragment):
    _refused(_crafted(tmp_path, edit), fragment, "at most 64 allowed")


def test_viterbi_costs_at_most_prompt_length_times_longest_piece(tmp_path):
    """The worst a file within the bounds can do: every length of piece matching at every position of one
    16384-character word (a prompt of MAX_PROMPT_CHARS, grown 4x by a Replace): ~0.5 s here."""
    def edit(spec):
        spec["model"]["vocab"] += [["a" * k, -1.0] for k in range(2, 65)]
        spec["normalizer"] = {"type": "Replace", "pattern": {"String": "b"}, "content": "aaaa"}
        spec["pre_tokenizer"] = None
    tok = Tokenizer.from_file(_crafted(tmp_path, edit))
    start = time.perf_counter()
    ids = tok.encode("b" * MAX_PROMPT_CHARS)
    assert len(ids) == MAX_NORMALIZED_CHARS // 64 + 1 and time.perf_counter() - start < 5


# ---------------------------------------------------------------- 5. normalisers that multiply a prompt


@pytest.mark.parametrize("edit, fragment", [
    (lambda s: s["normalizer"]["normalizers"].append(
        {"type": "Replace", "pattern": {"String": "a"}, "content": "x" * 10_000}), "Replace content"),
    (lambda s: s["normalizer"]["normalizers"].append({"type": "Prepend", "prepend": "x" * 100}), "Prepend"),
])
def test_replacement_content_is_bounded_on_load(tmp_path, edit, fragment):
    _refused(_crafted(tmp_path, edit), fragment, "at most 64 allowed")


def test_a_long_precompiled_replacement_is_refused_on_load(tmp_path):
    blob = struct.pack("<I", 0) + b"x" * 100 + b"\0"
    path = _crafted(tmp_path, lambda s: s.update(normalizer={
        "type": "Precompiled", "precompiled_charsmap": base64.b64encode(blob).decode()}))
    _refused(path, "Precompiled charsmap with a 100-byte replacement (at most 64 bytes)")


def _grow(old, new):
    return {"type": "Replace", "pattern": {"String": old}, "content": new * 64}


def test_normalisation_that_multiplies_a_prompt_is_refused(tmp_path):
    """Each Replace is within bounds (64 characters for one), but two in a row make a 300-character prompt
    1.2 million characters long: the first pass past MAX_NORMALIZED_CHARS stops it."""
    path = _crafted(tmp_path, lambda s: s["normalizer"]["normalizers"].extend([_grow("a", "b"), _grow("b", "中")]))
    _prompt_refused(lambda: TextTokenizer(path)(["a" * 300]), "prompt: normalisation makes 19200 characters of it",
                    f"at most {MAX_NORMALIZED_CHARS} allowed (4x the prompt cap); shorten it")


def test_the_normalised_bound_holds_for_all_segments_together(tmp_path):
    """Added tokens split a prompt into segments, normalised one by one: each 12800 characters is fine,
    three are not."""
    tok = TextTokenizer(_crafted(tmp_path, lambda s: s["normalizer"]["normalizers"].append(_grow("a", "中"))))
    ids, _ = tok(["a" * 200])  # 12800 unknown characters: one fused <unk>
    assert ids.shape == (1, 3)
    _prompt_refused(lambda: tok(["</s>".join(["a" * 200] * 3)]), "normalisation makes 25600 characters")


# ---------------------------------------------------------------- 6. prompt length


def test_limits_are_module_constants_shared_by_tokenizer_and_text():
    assert (MAX_PROMPT_TOKENS, MAX_PROMPT_CHARS) == (512, 4096)
    assert tok_mod.MAX_PROMPT_TOKENS is MAX_PROMPT_TOKENS and tok_mod.MAX_PROMPT_CHARS is MAX_PROMPT_CHARS


def test_the_character_cap_is_checked_before_any_normalisation():
    tok = Tokenizer.from_file(BUNDLED / "tokenizer.json")

    def boom(text):
        raise AssertionError("normalised a prompt over the cap")
    normalize, tok._normalize = tok._normalize, boom
    _prompt_refused(lambda: tok.encode("a" * (MAX_PROMPT_CHARS + 1)),
                    f"prompt: {MAX_PROMPT_CHARS + 1} characters, at most {MAX_PROMPT_CHARS} allowed")
    tok._normalize = normalize
    assert len(tok.encode("中" * MAX_PROMPT_CHARS)) == 3  # at the cap: one fused unknown (and ▁, </s>)


def test_prompts_over_512_tokens_are_refused():
    tok = TextTokenizer(BUNDLED / "tokenizer.json")
    ids, _ = tok(["a " * 255])
    assert ids.shape == (1, MAX_PROMPT_TOKENS)
    message = _prompt_refused(lambda: tok(["a " * 256]), "prompt: 514 tokens, at most 512 allowed "
                                                         "(T5's model_max_length); shorten it")
    assert message.startswith("prompt: ")


def test_a_batch_names_the_prompt_that_broke_the_rule():
    tok = TextTokenizer(BUNDLED / "tokenizer.json")
    _prompt_refused(lambda: tok(["fine", None, "x" * 5000]), "prompts[2]: 5000 characters, at most 4096 allowed")
    _prompt_refused(lambda: tok(["fine", "a " * 256, None]), "prompts[1]: 514 tokens, at most 512 allowed")


@pytest.mark.parametrize("texts, fragment", [
    ([123], "prompt: must be a string, got int"),
    ([b"bytes"], "prompt: must be a string, got bytes"),
    (["ok", "bad \ud800 surrogate"], "prompts[1]: character 4 is a lone surrogate (U+D800)"),
    ("a calm piano", "prompts: expected a list of strings (or None), got str"),
    ([], "prompts: the list is empty"),
])
def test_prompts_that_are_not_text_are_refused(texts, fragment):
    tok = TextTokenizer(BUNDLED / "tokenizer.json")
    _prompt_refused(lambda: tok(texts), fragment)


# ---------------------------------------------------------------- other ways a file could escape


def test_a_precompiled_trie_pointing_outside_itself_is_no_rule(tmp_path):
    """A crafted darts trie whose leaf offset leaves the array raised IndexError on the first prompt."""
    units = [0] * 98
    units[ord("a")] = ord("a") | (1 << 8) | (1000 << 10)  # label 'a', leaf, offset -> unit 905 of 98
    blob = struct.pack("<I", 4 * len(units)) + struct.pack(f"<{len(units)}I", *units) + b"x\0"
    path = _crafted(tmp_path, lambda s: s.update(normalizer={
        "type": "Precompiled", "precompiled_charsmap": base64.b64encode(blob).decode()}))
    ids, _ = TextTokenizer(path)(["a calm piano"])
    assert ids.shape[0] == 1


@pytest.mark.parametrize("score", [float("nan"), float("inf"), pytest.param(10**400, id="10**400"), "1.5", True,
                                   None])
def test_scores_must_be_finite_numbers(tmp_path, score):
    _refused(_crafted(tmp_path, lambda s: s["model"]["vocab"].append(["zz", score])), "vocab entry 134: score",
             "is not a finite number")


@pytest.mark.parametrize("edit, fragment", [
    (lambda s: s["model"]["vocab"].append("a1"), "vocab entry 134 'a1' is not a [piece, score] pair"),
    (lambda s: s["model"]["vocab"].append(["\ud800", -1.0]), "holds a lone surrogate"),
    (lambda s: s["normalizer"].update(normalizers=[{"type": "NFKC"}] * 9), "normalizer of 10 components, at most 8"),
    (lambda s: s.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}] * 8}),
     "pre_tokenizer of 9 components"),
    (lambda s: s.update(added_tokens=[_added(i, f"<t{i}>") for i in range(1025)]), "at most 1024 tokens"),
    (lambda s: s["post_processor"]["special_tokens"]["</s>"].update(ids=[1] * 512), "adds 512 ids to every prompt"),
])
def test_other_unbounded_or_malformed_parts_are_refused(tmp_path, edit, fragment):
    _refused(_crafted(tmp_path, edit), fragment)


def test_a_deeply_nested_normalizer_is_refused(tmp_path):
    def edit(spec):
        node = {"type": "NFKC"}
        for _ in range(200):
            node = {"type": "Sequence", "normalizers": [node]}
        spec["normalizer"] = node
    _refused(_crafted(tmp_path, edit), "normalizer of 201 components")


def test_only_a_bounded_regular_file_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(tok_mod, "MAX_FILE_BYTES", 1000)
    _refused(BUNDLED / "tokenizer.json", "larger than")
    monkeypatch.undo()
    _refused(tmp_path, "unreadable tokenizer")  # a directory
    if hasattr(os, "mkfifo"):  # opening a FIFO would block until someone writes to it
        os.mkfifo(tmp_path / "fifo.json")
        _refused(tmp_path / "fifo.json", "not a regular file")


# ---------------------------------------------------------------- 7. fuzzing crafted files


class _Spec:
    """A tokenizer.json that a failing example names in a few words, not 350 kB of charsmap."""

    def __init__(self, spec: dict):
        self.spec = spec

    def __repr__(self):
        return "<the T5-like tokenizer.json>"


@pytest.fixture(scope="module")
def t5_spec(tmp_path_factory):
    """The T5-like tokenizer.json (Precompiled charsmap, WhitespaceSplit + Metaspace, 103 added tokens), with a
    Strip, a regex and a literal Replace after the charsmap: every component the reader supports, in one file."""
    from musicgen_onnx.export.random_checkpoints import build_sentencepiece_tokenizer

    folder = build_sentencepiece_tokenizer(tmp_path_factory.mktemp("t5tok"))
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        spec["normalizer"], {"type": "Strip", "strip_left": False, "strip_right": True},
        {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": "▁"},
        {"type": "Replace", "pattern": {"String": "``"}, "content": '"'}]}
    return _Spec(spec)


def _paths(node, prefix=()):
    """Every place in a tokenizer.json (lists by their first entries) a value could be swapped."""
    items = node.items() if isinstance(node, dict) else enumerate(node[:3]) if isinstance(node, list) else []
    for key, value in items:
        yield prefix + (key,)
        yield from _paths(value, prefix + (key,))


def _nested(depth):
    node = []
    for _ in range(depth):
        node = [node]
    return node


# Where a T5 tokenizer.json holds each kind of value (the test's file: normalizers are Precompiled, Strip,
# Replace regex, Replace string), and values of that kind a crafted file could put there instead.
ID_PATHS = [("model", "unk_id"), ("added_tokens", 0, "id"), ("added_tokens", 2, "id"),
            ("post_processor", "special_tokens", "</s>", "ids", 0), ("post_processor", "special_tokens", "</s>", "ids")]
SCORE_PATHS = [("model", "vocab", i, 1) for i in (0, 3, 50)]
STRING_PATHS = [("model", "vocab", 3, 0), ("model", "vocab", 60, 0), ("added_tokens", 1, "content"),
                ("normalizer", "normalizers", 2, "content"), ("normalizer", "normalizers", 3, "pattern", "String"),
                ("normalizer", "normalizers", 3, "content"), ("pre_tokenizer", "pretokenizers", 1, "replacement"),
                ("normalizer", "normalizers", 0, "precompiled_charsmap")]
STRUCTURE_PATHS = [("normalizer",), ("pre_tokenizer",), ("post_processor",), ("model",), ("model", "vocab"),
                   ("model", "vocab", 5), ("added_tokens",), ("added_tokens", 0), ("normalizer", "normalizers"),
                   ("normalizer", "normalizers", 1), ("post_processor", "single"), ("post_processor", "special_tokens")]
IDS = st.one_of(st.sampled_from([-1, 0, 1, 2**31 - 1, 2**31, 2**63, 10**6, 10**400, True, False, 1.0, "1", None, [1]]),
                st.integers())
SCORES = st.one_of(st.sampled_from([float("nan"), float("inf"), float("-inf"), 10**400, -(10**400), "1.5", True, None]),
                   st.floats(), st.integers())
STRINGS = st.one_of(st.text(max_size=8), st.sampled_from(
    ["", " ", "▁", "<pad>", "</s>", "\ud800", "a" * 65, "a" * 200_000, "x" * 10_000, "ﷺ" * 64, "!!!!", 7, None]))
HOSTILE_REGEXES = ["(a+)+$", "(a|aa)*c", "(a*)*", r"(\s+)+x", "a*a*a*a*a*b", r"\s+$", r"(.)\1", "(?=a)", "(?i)a",
                   "x{99999}", "[", "(", ")", "\\", "*", "a**", r"\p{L}", r"\A +| +\z", "", "x*", ".", "(?:)",
                   "[]]+", "[^]", "a{,}", " {2,}", "a" * 65]
REGEXES = st.one_of(st.sampled_from(HOSTILE_REGEXES), st.text(alphabet="()[]{}*+?|\\^$.:=!<>kzsSA1a ,-&", max_size=16))
STRUCTURES = st.sampled_from([
    [], {}, [[]], [["a", "b"]], [["a", 1.0]], ["a1"], [1], _nested(300), {"type": "NFKC"}, {"type": "Lowercase"},
    {"String": "a"}, {"type": "Sequence", "normalizers": [{"type": "Lowercase"}] * 9},
    {"type": "Replace", "pattern": {"String": "a"}, "content": "a" * 64}, {"type": "Prepend", "prepend": "▁" * 64},
    {"type": "Metaspace", "replacement": "ab"}, {"type": "Metaspace", "prepend_scheme": "never", "split": False},
    {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, {"type": "Metaspace"}]},
    {"</s>": {"id": "</s>", "ids": [2**63], "tokens": ["</s>"]}}, [{"SpecialToken": {"id": "nope", "type_id": 0}}],
    {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "</s>"}}], "special_tokens": {}},
    {"id": 5, "content": "a", "normalized": True, "single_word": True, "lstrip": True, "rstrip": True},
    {"type": "Unigram", "vocab": [["▁", -1.0], ["a", -2.0]], "unk_id": None},
    [{"id": i, "content": "a" * (i + 1), "normalized": bool(i % 2)} for i in range(64)]])
JUNK = st.one_of(IDS, SCORES, STRINGS, REGEXES.map(lambda r: {"Regex": r}), STRUCTURES)
EDITS = st.one_of(
    st.tuples(st.sampled_from(ID_PATHS), IDS), st.tuples(st.sampled_from(SCORE_PATHS), SCORES),
    st.tuples(st.sampled_from(STRING_PATHS), STRINGS),
    REGEXES.map(lambda r: (("normalizer", "normalizers", 2, "pattern", "Regex"), r)),
    st.tuples(st.sampled_from(STRUCTURE_PATHS), STRUCTURES), st.tuples(st.sampled_from(list(_paths(BASE))), JUNK))
HOSTILE_PROMPTS = ["A calm piano melody", "x </s> ﬁ  <extra_id_0>   " + "a" * 35 + "!", " " * 40 + "\t\u3000a",
                   "lofi chill " * 372]  # 4092 characters: past 512 tokens, after all the work


@pytest.mark.export  # tokenizers / sentencepiece (the export extra) build or check the reference
@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(edits=st.lists(EDITS, min_size=1, max_size=3), max_id=st.sampled_from([None, None, 32128, 300, 150]))
def test_crafted_tokenizer_files_load_or_fail_cleanly_and_quickly(tmp_path_factory, t5_spec, edits, max_id):
    """Type-confused and out-of-range values at random places of a T5 tokenizer.json (ids, scores, pieces,
    regexes, nested structures), and a random max_id: each example loads and encodes the prompts, or is
    refused by a one-line ModelFolderError / InvalidInputError, within the 2 s deadline. Anything else (a
    traceback, a hang, a slow example) fails the test."""
    spec = copy.deepcopy(t5_spec.spec)
    for path, value in edits:
        node = spec
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = copy.deepcopy(value)  # st.sampled_from hands out shared objects
        except (KeyError, IndexError, TypeError):
            continue
    target = tmp_path_factory.getbasetemp() / "fuzzed-tokenizer.json"
    target.write_text(json.dumps(spec), encoding="utf-8")
    try:
        tok = TextTokenizer(target, max_id=max_id)
    except ModelFolderError as exc:
        assert "\n" not in str(exc) and str(target) in str(exc)
        event(f"refused on load: {str(exc).split(' (')[1][:30] if ' (' in str(exc) else str(exc)[-40:]}")
        return
    event("loaded")
    for prompt in HOSTILE_PROMPTS:
        try:
            tok([prompt, None])
            event(f"prompt {HOSTILE_PROMPTS.index(prompt)} encoded")
        except InvalidInputError as exc:
            assert "\n" not in str(exc) and str(exc).startswith("prompts[")
