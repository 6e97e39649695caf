"""A ``tokenizer.json`` reader for T5's SentencePiece-Unigram tokenizer, in pure Python.

The ``tokenizers`` wheel is 12 MB and pulls ~27 MB of ``huggingface_hub``/``hf_xet``/``httpx``/``pyyaml``
that a runtime never uses, for what is here a few hundred lines: MusicGen only ever conditions on T5,
whose tokenizer is a Unigram model behind a SentencePiece normaliser. This module reads the same file,
gives the same ids as ``tokenizers`` (tests/export/test_tokenizer.py fuzzes it against ``tokenizers``; the
exporter re-checks every file it writes) and refuses, naming the component, a ``tokenizer.json`` that
uses anything else.

It follows ``tokenizers`` (transformers' fast tokenizer, the parity reference) even where that differs
from ``sentencepiece`` (audiocraft's ``T5Conditioner`` uses the slow ``T5Tokenizer``): the ``Precompiled``
normaliser works per grapheme cluster with the shortest matching rule, so a combining mark after a
compatibility character is dropped (``"Ａ\\u0301"`` -> ``"A"``), and WhitespaceSplit splits on all of
Unicode's White_Space. On ordinary prompts the three agree. The NFKC-family normalisers use Python's
``unicodedata``, whose Unicode version can differ from the one compiled into ``tokenizers`` for recently
assigned characters (72 code points between Python 3.11 and tokenizers 0.23); T5's charsmap is data,
so the released checkpoints do not depend on it.

Both inputs are untrusted: a model folder (and its ``tokenizer.json``) is downloaded from strangers and
prompts come from anyone through a server. The limits below bound what either can cost; a file that breaks
one is refused on load (ModelFolderError naming the file and the rule), a prompt that breaks one in
:meth:`Tokenizer.encode` (InvalidInputError naming the prompt and the limit), never with a traceback.
"""

from __future__ import annotations

import base64
import math
import operator
import os
import re
import reprlib
import struct
import unicodedata
from typing import Callable

from .errors import InvalidInputError, ModelFolderError
from .json_file import read_json_file

__all__ = ["Tokenizer", "MAX_PROMPT_CHARS", "MAX_PROMPT_TOKENS", "MAX_NORMALIZED_CHARS"]

# ---------------------------------------------------------------- limits
# Prompts come from anyone (through a server) and tokenizer.json from a model folder downloaded from
# strangers: these bound the time and memory of reading the one and tokenizing the other. The first three
# are about prompts (the CLI/server may show or pre-check them); the others only refuse crafted files.

# transformers' T5 tokenizer's model_max_length (512 for t5-small..t5-11b): T5 was trained on 512 tokens,
# and the text encoder's attention memory grows with the square of the length (10k characters: 6.5 GB).
MAX_PROMPT_TOKENS = 512
# Checked before any normalisation work. English takes about 4-5 characters per T5 token, so 512 tokens are
# ~2000-2500 characters; the repo's tiny tokenizers (100-134 pieces) fill 512 tokens with ~860-880 characters.
MAX_PROMPT_CHARS = 4096
# After every normaliser pass, and for all segments of a prompt together. Real normalisers barely grow text,
# and 16384 characters of words make over 512 T5 tokens (its pieces are at most 16 characters) anyway.
MAX_NORMALIZED_CHARS = 4 * MAX_PROMPT_CHARS
# Vocabulary pieces and added tokens. sentencepiece's max_sentencepiece_length is 16; the Viterbi search
# costs (word length) x (longest piece) lookups.
MAX_PIECE_CHARS = 64
# Replace content, Prepend, and each Precompiled replacement (in UTF-8 bytes there; the longest in T5's
# nmt_nfkc charsmap is 33, U+FDFA's 18 Arabic characters): one pass grows a text at most 65-fold.
MAX_REPLACEMENT_CHARS = 64
MAX_REGEX_CHARS = 64  # SentencePiece converters write ' {2,}', '\A +| +\z', '\s+', '\A▁'
MAX_REPEAT_COUNT = 16  # the m and n of a regex's {m,n}
MAX_COMPONENTS = 8  # nodes of the normalizer tree, and of the pre_tokenizer tree (T5's: at most 4, and 3)
MAX_ADDED_TOKENS = 1024  # T5 has 103 (<pad>, </s>, <unk>, 100 <extra_id_*>); each is an alternative to try
MAX_FILE_BYTES = 16 * 2**20  # T5's tokenizer.json is 2.4 MB; json.load holds several times the file
_ID_LIMIT = 2**31  # ids are int64 on the way to onnxruntime, but no embedding table has 2**31 rows

# Rust's char::is_whitespace (Unicode White_Space): what WhitespaceSplit and Strip use. Python's
# str.isspace also counts U+001C..U+001F, which tokenizers keeps as ordinary characters.
_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
               "\u2028\u2029\u202f\u205f\u3000"
_UNK_PENALTY = 10.0  # tokenizers' and sentencepiece's kUnkPenalty: unknown chars score min_score - 10


class _Unsupported(Exception):
    pass


class _PromptError(ValueError):
    """A prompt breaks a rule; :meth:`Tokenizer.encode` names the prompt and raises InvalidInputError."""


class _NoUnknown(_PromptError):
    def __init__(self, piece: str):
        super().__init__(f"{_short(piece)} is not in the vocabulary and the tokenizer has no unknown token")


class _TooLong(_PromptError):
    def __init__(self, length: int):
        super().__init__(f"normalisation makes {length} characters of it, at most {MAX_NORMALIZED_CHARS} "
                         f"allowed ({MAX_NORMALIZED_CHARS // MAX_PROMPT_CHARS}x the prompt cap); shorten it")


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxlong = _REPR.maxother = 40
_REPR.maxlist = _REPR.maxdict = 4


def _short(value) -> str:
    """``repr`` cut to a few dozen characters: messages quote values from untrusted files and prompts."""
    return _REPR.repr(value)


def _text(value, what: str, limit: int | None = None) -> str:
    """Every string the encoder will splice: checked once here, so a crafted file fails on load. A lone
    surrogate (JSON allows ``"\\ud800"``, tokenizers' Rust strings do not) would fail on every prompt."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if limit is not None and len(value) > limit:
        raise ValueError(f"{what} {_short(value)} is {len(value)} characters long, at most {limit} allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} {_short(value)} holds a lone surrogate at character {exc.start}") from None
    return value


def _token_id(value, what: str) -> int:
    """An id the tokenizer may emit: an int (not a bool, not a float) in [0, 2**31); anything else would
    overflow numpy's int64 batch or index past onnxruntime's embedding, far from the file at fault."""
    if type(value) is not int or not 0 <= value < _ID_LIMIT:
        raise ValueError(f"{what} id {_short(value)} is not an integer in [0, 2**31)")
    return value


def _tree_size(spec, key: str) -> int:
    """Nodes in a normalizer / pre_tokenizer tree, Sequences included: each one is a pass over the text."""
    if isinstance(spec, dict) and spec.get("type") == "Sequence" and isinstance(spec.get(key), list):
        return 1 + sum(_tree_size(sub, key) for sub in spec[key])
    return 0 if spec is None else 1


def _component(spec: dict | None, kind: str, table: dict) -> Callable | None:
    if spec is None:
        return None
    name = spec.get("type")
    if name not in table:
        raise _Unsupported(f"{kind} {_short(name)} (supported: {', '.join(sorted(table))})")
    return table[name](spec)


# ---------------------------------------------------------------- normalizers


class _Precompiled:
    """SentencePiece's compiled normalisation rules: a darts-clone double-array trie over UTF-8 keys
    whose values index NUL-terminated replacements (spm_precompiled's and sentencepiece's layout)."""

    def __init__(self, spec: dict):
        blob = base64.b64decode(spec.get("precompiled_charsmap") or "")
        if not blob:
            self._units, self._normalized = (), b""
            return
        (trie_size,) = struct.unpack_from("<I", blob)
        if trie_size % 4 or 4 + trie_size > len(blob):
            raise _Unsupported("Precompiled charsmap with a corrupt trie size")
        self._units = struct.unpack_from(f"<{trie_size // 4}I", blob, 4)
        self._normalized = blob[4 + trie_size:]
        longest = max(map(len, self._normalized.split(b"\0")))
        if longest > MAX_REPLACEMENT_CHARS:  # one character may become at most this many bytes
            raise _Unsupported(f"Precompiled charsmap with a {longest}-byte replacement "
                               f"(at most {MAX_REPLACEMENT_CHARS} bytes)")

    def _transform(self, chunk: bytes) -> bytes | None:
        """The replacement of the *shortest* key that prefixes ``chunk`` (spm_precompiled's rule)."""
        units = self._units
        if not units:
            return None
        pos = (units[0] >> 10) << ((units[0] & (1 << 9)) >> 6)
        for byte in chunk:
            if byte == 0:
                return None
            pos ^= byte
            if pos >= len(units) or (units[pos] & ((1 << 31) | 0xFF)) != byte:
                return None
            unit = units[pos]
            pos ^= (unit >> 10) << ((unit & (1 << 9)) >> 6)
            if pos >= len(units):  # a crafted trie pointing outside itself: no rule
                return None
            if (unit >> 8) & 1:
                value = units[pos] & ((1 << 31) - 1)
                end = self._normalized.find(b"\0", value)
                return self._normalized[value: end if end >= 0 else len(self._normalized)]
        return None

    def __call__(self, text: str) -> str:
        out = bytearray()
        for grapheme in _graphemes(text):
            chunk = grapheme.encode("utf-8")
            if len(chunk) < 6 and (norm := self._transform(chunk)) is not None:
                out += norm
                continue
            for char in grapheme:
                piece = char.encode("utf-8")
                norm = self._transform(piece)
                out += piece if norm is None else norm
        return out.decode("utf-8", errors="replace")


# Grapheme clusters (UAX #29) as far as the normaliser can tell them apart: it treats a cluster whole
# only below six UTF-8 bytes, so emoji sequences, regional-indicator pairs, Hangul jamo runs and Indic
# conjuncts (all >= 6 bytes) never matter and are left out.
# Joiners that are not marks (Mn/Me/Mc): Other_Grapheme_Extend, ZWNJ/ZWJ, Thai/Lao AM (SpacingMark), the
# emoji skin-tone modifiers and the tag characters.
_JOINERS = {0x09BE, 0x09D7, 0x0B3E, 0x0B57, 0x0BBE, 0x0BD7, 0x0CC2, 0x0CD5, 0x0CD6, 0x0D3E, 0x0D57, 0x0DCF, 0x0DDF,
            0x1B35, 0x200C, 0x200D, 0x302E, 0x302F, 0xFF9E, 0xFF9F, 0x0E33, 0x0EB3, *range(0x1F3FB, 0x1F400),
            *range(0xE0020, 0xE0080)}
_PREPEND = {0x0600, 0x0601, 0x0602, 0x0603, 0x0604, 0x0605, 0x06DD, 0x070F, 0x0890, 0x0891, 0x08E2, 0x0D4E}


def _is_control(char: str) -> bool:
    cp = ord(char)
    return unicodedata.category(char) in ("Cc", "Zl", "Zp", "Cf") and cp not in _JOINERS and cp not in _PREPEND


def _joins(prev: str, char: str) -> bool:
    if prev == "\r":
        return char == "\n"
    if _is_control(prev) or _is_control(char):
        return False
    if unicodedata.category(char) in ("Mn", "Me", "Mc") or ord(char) in _JOINERS:
        return True
    return ord(prev) in _PREPEND


def _graphemes(text: str) -> list[str]:
    """Cut at cluster starts rather than grown a character at a time: a run of thousands of combining marks
    is one cluster, and growing it would copy it once per mark."""
    starts = [i for i in range(len(text)) if i == 0 or not _joins(text[i - 1], text[i])]
    return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]


# A repeat: * + ? {m} {m,} {,n} {m,n} {,} as Python's re reads them ("{}" and "{x" are literals).
_REPEAT = re.compile(r"[*+?]|\{(\d*)(?:,(\d*))?\}")
_REGEX_RULE = (f"allowed: at most {MAX_REGEX_CHARS} characters, no backreferences, lookarounds, nested quantifiers "
               f"or nested classes, '|' only outside groups, a repeat (counts <= {MAX_REPEAT_COUNT}) only at the "
               f"end of an alternative")


def _check_regex(translated: str, shown: str) -> None:
    """Replace patterns run in Python's backtracking ``re`` on prompts from anyone, so a file may only hold
    the shapes SentencePiece converters write (' {2,}', '\\s+', '\\A▁', classes): with a repeat last in its
    alternative, no group repeat holding a repeat and '|' only at the top level, a match attempt is linear
    in the pattern, never exponential (``(a+)+$``) or polynomial (``a*a*a*b``) in the prompt. Checked on the
    pattern Python runs (after the ``\\s`` rewrite), quoting the one in the file."""
    def refuse(rule: str):
        raise _Unsupported(f"Replace regex {_short(shown)}: {rule} ({_REGEX_RULE})")

    i, groups = 0, []  # groups: per open group, whether it holds a repeat
    repeatable = None  # what a repeat here applies to: None (nothing), False (an atom), True (a group holding a repeat)
    ended = False  # a repeat closed this top-level alternative: only ')' or a top-level '|' may follow
    late = None  # that rule's breach, reported only if no more specific one follows (``(a*b?)*``: nested)
    while i < len(translated):
        char = translated[i]
        repeat = _REPEAT.match(translated, i) if char in "*+?{" else None
        if repeat and repeat.group() != "{}":
            if repeatable is True:
                refuse("a nested quantifier (a repeated group holds a repeat)")
            counts = [int(n) for n in repeat.groups() if n]
            if any(n > MAX_REPEAT_COUNT for n in counts):
                refuse(f"a repeat count of {max(counts)} (at most {MAX_REPEAT_COUNT})")
            i = repeat.end() + (translated[repeat.end():repeat.end() + 1] in ("?", "+"))  # lazy, possessive
            if groups:
                groups[-1] = True
            ended, repeatable = True, None
            continue
        if ended and char not in "|)":
            late = late or "a repeat that does not end its alternative"
        if char == "|":
            if groups:
                refuse("'|' inside a group")
            ended, repeatable, i = False, None, i + 1
        elif char == ")":
            if not groups:
                refuse("an unbalanced ')'")
            repeatable = groups.pop()
            if repeatable and groups:
                groups[-1] = True
            i += 1
        elif char == "(":
            if translated.startswith(("(?=", "(?!", "(?<=", "(?<!"), i):
                refuse("a lookaround")
            if translated.startswith("(?", i) and not translated.startswith("(?:", i):
                refuse(f"the group extension {translated[i:i + 3]!r}")
            groups.append(False)
            repeatable, i = None, i + (3 if translated.startswith("(?:", i) else 1)
        elif char == "\\":
            if translated[i + 1:i + 2] in tuple("0123456789kg"):
                refuse("a backreference")
            repeatable, i = False, i + 2
        elif char == "[":
            repeatable, i = False, _class_end(translated, i, refuse)
        else:
            repeatable, i = False, i + 1
    if late:
        refuse(late)


def _class_end(pattern: str, i: int, refuse: Callable) -> int:
    """The index after the character class opening at ``i``, read as Python's re does (a ']' first is a
    literal). Nested classes and set operations are refused: Oniguruma and Python read them differently."""
    j = i + 1 + (pattern[i + 1:i + 2] == "^")
    j += pattern[j:j + 1] == "]"
    while j < len(pattern) and pattern[j] != "]":
        if pattern[j] == "[" or pattern.startswith(("&&", "--", "~~", "||"), j):
            refuse("a nested character class or set operation")
        j += 2 if pattern[j] == "\\" else 1
    return j + 1


def _regex(pattern: str) -> re.Pattern:
    """An Oniguruma pattern (tokenizers' engine) in Python's ``re``: ``\\s`` is Unicode White_Space there,
    while Python's also matches U+001C..U+001F, so it is spelled out (inside a class too)."""
    if len(pattern) > MAX_REGEX_CHARS:
        raise _Unsupported(f"Replace regex {_short(pattern)}: {len(pattern)} characters ({_REGEX_RULE})")
    spaces = re.escape(_WHITE_SPACE)
    out, i, in_class = [], 0, False
    while i < len(pattern):
        two = pattern[i:i + 2]
        if two == r"\s":
            out.append(spaces if in_class else f"[{spaces}]")
        elif two == r"\S" and not in_class:
            out.append(f"[^{spaces}]")
        elif pattern[i] == "\\":
            out.append(two)
        elif not in_class and pattern[i] == "[":
            j = i + 1 + (two == "[^")
            j += pattern[j:j + 1] == "]"  # a ']' first in a class is a literal, in both engines
            out.append(pattern[i:j])
            in_class, i = True, j
            continue
        else:
            in_class = in_class and pattern[i] != "]"
            out.append(pattern[i])
            i += 1
            continue
        i += 2
    translated = "".join(out)
    _check_regex(translated, pattern)
    try:
        return re.compile(translated)
    except re.error as exc:
        raise _Unsupported(f"Replace regex {_short(pattern)} ({exc})") from None


def _replace(spec: dict) -> Callable[[str], str]:
    """Literal patterns are plain ``str.replace``; regexes pass :func:`_check_regex`. The content is bounded
    so that one pass grows a text at most (1 + MAX_REPLACEMENT_CHARS)-fold, and the caller's
    MAX_NORMALIZED_CHARS check stops a chain of them."""
    pattern = spec.get("pattern")
    content = _text(spec.get("content", ""), "Replace content", MAX_REPLACEMENT_CHARS)
    if isinstance(pattern, dict) and "String" in pattern:
        literal = _text(pattern["String"], "Replace pattern")
        return lambda s: s.replace(literal, content) if literal else s
    if isinstance(pattern, dict) and "Regex" in pattern:
        compiled = _regex(_text(pattern["Regex"], "Replace pattern"))
        return lambda s: compiled.sub(lambda _: content, s)
    raise _Unsupported(f"Replace pattern {_short(pattern)}")


def _strip(spec: dict) -> Callable[[str], str]:
    left, right = spec.get("strip_left", True), spec.get("strip_right", True)

    def strip(s: str) -> str:
        s = s.lstrip(_WHITE_SPACE) if left else s
        return s.rstrip(_WHITE_SPACE) if right else s
    return strip


def _prepend(spec: dict) -> Callable[[str], str]:
    prefix = _text(spec.get("prepend", ""), "Prepend", MAX_REPLACEMENT_CHARS)
    return lambda s: prefix + s if s else s


def _sequence(table: dict, key: str, kind: str) -> Callable[[dict], Callable]:
    def build(spec: dict) -> Callable:
        subs = spec.get(key) or []
        if not all(isinstance(sub, dict) for sub in subs):
            raise ValueError(f"{kind} Sequence holds something other than components")
        parts = [_component(sub, kind, table) for sub in subs]

        def run(value):
            for part in parts:
                value = part(value)
            return value
        return run
    return build


def _bounded(build: Callable[[dict], Callable[[str], str]]) -> Callable[[dict], Callable[[str], str]]:
    """A normaliser whose output is checked against MAX_NORMALIZED_CHARS after every pass, so that a chain
    of growing passes stops at the first one past the bound instead of multiplying it."""
    def bounded_build(spec: dict) -> Callable[[str], str]:
        step = build(spec)

        def run(s: str) -> str:
            s = step(s)
            if len(s) > MAX_NORMALIZED_CHARS:
                raise _TooLong(len(s))
            return s
        return run
    return bounded_build


_NORMALIZERS: dict[str, Callable[[dict], Callable[[str], str]]] = {name: _bounded(build) for name, build in {
    "Precompiled": _Precompiled,
    "NFC": lambda spec: lambda s: unicodedata.normalize("NFC", s),
    "NFD": lambda spec: lambda s: unicodedata.normalize("NFD", s),
    "NFKC": lambda spec: lambda s: unicodedata.normalize("NFKC", s),
    "NFKD": lambda spec: lambda s: unicodedata.normalize("NFKD", s),
    "Lowercase": lambda spec: str.lower,
    "Strip": _strip,
    "Replace": _replace,
    "Prepend": _prepend,
}.items()}
_NORMALIZERS["Sequence"] = _sequence(_NORMALIZERS, "normalizers", "normalizer")


# ---------------------------------------------------------------- pre-tokenizers (str -> words)


def _whitespace_split(spec: dict) -> Callable[[list[str]], list[str]]:
    splitter = re.compile(f"[{re.escape(_WHITE_SPACE)}]+")
    return lambda words: [piece for word in words for piece in splitter.split(word) if piece]


def _metaspace(spec: dict) -> Callable[[list[str]], list[str]]:
    replacement = _text(spec.get("replacement", "▁"), "Metaspace replacement")
    if len(replacement) != 1:
        raise ValueError(f"Metaspace replacement must be one character, got {replacement!r}")
    scheme = spec.get("prepend_scheme")
    if scheme is None:  # files written before tokenizers 0.14
        scheme = "always" if spec.get("add_prefix_space", True) else "never"
    if scheme not in ("always", "never"):
        raise _Unsupported(f"Metaspace prepend_scheme {scheme!r} (supported: 'always', 'never')")
    split = spec.get("split", True)

    def run(words: list[str]) -> list[str]:
        out = []
        for word in words:
            word = word.replace(" ", replacement)
            if scheme == "always" and not word.startswith(replacement):
                word = replacement + word
            if not split:
                out.append(word)
                continue
            # MergedWithNext: every replacement character starts a new piece.
            starts = [i for i, c in enumerate(word) if c == replacement and i > 0]
            bounds = [0, *starts, len(word)]
            out += [word[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
        return out
    return run


_PRE_TOKENIZERS: dict[str, Callable[[dict], Callable[[list[str]], list[str]]]] = {
    "WhitespaceSplit": _whitespace_split,
    "Metaspace": _metaspace,
}
_PRE_TOKENIZERS["Sequence"] = _sequence(_PRE_TOKENIZERS, "pretokenizers", "pre_tokenizer")


# ---------------------------------------------------------------- model


class _Unigram:
    """Viterbi over the pieces, as tokenizers' ``encode_optimized``: pieces tried shortest first, a
    later candidate wins only with a strictly higher score, an unknown character scores
    ``min_score - 10`` and consecutive unknowns fuse into one ``unk``."""

    def __init__(self, spec: dict):
        vocab = spec.get("vocab") or []
        if not isinstance(vocab, list):
            raise ValueError(f"vocab must be a list of [piece, score] pairs, got {type(vocab).__name__}")
        self.ids, self.scores = {}, []
        for i, entry in enumerate(vocab):
            if not (isinstance(entry, list) and len(entry) == 2):
                raise ValueError(f"vocab entry {i} {_short(entry)} is not a [piece, score] pair")
            # Pieces are bounded so that the Viterbi search below costs at most
            # (word length) x MAX_PIECE_CHARS lookups; a duplicate maps to its last id, as in tokenizers.
            self.ids[_text(entry[0], f"vocab piece {i}", MAX_PIECE_CHARS)] = i
            self.scores.append(_score(entry[1], i))
        self.unk_id = spec.get("unk_id")
        if self.unk_id is not None and (type(self.unk_id) is not int or not 0 <= self.unk_id < len(vocab)):
            raise ValueError(f"unk_id {_short(self.unk_id)} is not an id of the {len(vocab)}-piece vocabulary")
        self.byte_fallback = bool(spec.get("byte_fallback", False))
        self.longest = max(map(len, self.ids), default=0)
        self.unk_score = min(self.scores, default=0.0) - _UNK_PENALTY

    def __call__(self, word: str) -> list[int]:
        n = len(word)
        best_score = [0.0] * (n + 1)
        best_start = [-1] * (n + 1)
        best_id = [0] * (n + 1)
        best_start[0] = 0
        for start in range(n):
            here = best_score[start]
            single = False
            for length in range(1, min(self.longest, n - start) + 1):
                piece_id = self.ids.get(word[start:start + length])
                if piece_id is None:
                    continue
                single |= length == 1
                end, score = start + length, self.scores[piece_id] + here
                if best_start[end] < 0 or score > best_score[end]:
                    best_score[end], best_start[end], best_id[end] = score, start, piece_id
            if not single:
                score = self.unk_score + here
                if best_start[start + 1] < 0 or score > best_score[start + 1]:
                    best_score[start + 1], best_start[start + 1], best_id[start + 1] = score, start, -1
        pieces: list[tuple[int, int]] = []  # (start, end) spans of the best path, unknowns fused
        end, unknown_end = n, -1
        while end > 0:
            start = best_start[end]
            if best_id[end] < 0:
                unknown_end = end if unknown_end < 0 else unknown_end
            else:
                if unknown_end >= 0:
                    pieces.append((end, unknown_end))
                    unknown_end = -1
                pieces.append((start, end))
            end = start
        if unknown_end >= 0:
            pieces.append((0, unknown_end))
        ids: list[int] = []
        for start, end in reversed(pieces):
            piece = word[start:end]
            if piece in self.ids:
                ids.append(self.ids[piece])
            elif self.byte_fallback and all(f"<0x{b:02X}>" in self.ids for b in piece.encode("utf-8")):
                ids += [self.ids[f"<0x{b:02X}>"] for b in piece.encode("utf-8")]
            elif self.unk_id is None:
                raise _NoUnknown(piece)
            else:
                ids.append(self.unk_id)
        return ids


def _score(value, i: int) -> float:
    """A piece's log-probability: a finite JSON number. NaN or infinities would make the Viterbi
    comparisons meaningless, and an integer past float range would raise OverflowError on the way."""
    if type(value) in (int, float):
        try:
            score = float(value)
        except OverflowError:
            score = math.inf
        if math.isfinite(score):
            return score
    raise ValueError(f"vocab entry {i}: score {_short(value)} is not a finite number")


# ---------------------------------------------------------------- added tokens and template


class _AddedToken:
    def __init__(self, spec: dict):
        self.content = _text(spec["content"], "added token content", MAX_PIECE_CHARS)
        self.id = _token_id(spec["id"], f"added token {_short(self.content)}")
        self.normalized = bool(spec.get("normalized", not spec.get("special", False)))
        self.single_word = bool(spec.get("single_word", False))
        self.lstrip, self.rstrip = bool(spec.get("lstrip", False)), bool(spec.get("rstrip", False))
        self.pattern = self.content


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


class _AddedSplitter:
    """Leftmost-longest matches of the added tokens' patterns, honouring single_word / lstrip / rstrip
    as tokenizers' AddedVocabulary does; the text between them is returned with ``None``. The matcher is
    compiled once per tokenizer, not per prompt."""

    def __init__(self, tokens: list[_AddedToken]):
        self._by_pattern = {t.pattern: t for t in tokens if t.pattern}
        alternatives = sorted(self._by_pattern, key=len, reverse=True)  # longest first: leftmost-longest
        self._finder = re.compile("|".join(map(re.escape, alternatives))) if alternatives else None

    def __call__(self, text: str) -> list[tuple[str, _AddedToken | None]]:
        if self._finder is None or not text:
            return [(text, None)] if text else []
        out: list[tuple[str, _AddedToken | None]] = []
        done = pos = 0
        while (match := self._finder.search(text, pos)) is not None:
            token, start, stop = self._by_pattern[match.group()], match.start(), match.end()
            pos = stop
            if token.single_word and ((start > 0 and _is_word_char(text[start - 1]))
                                      or (stop < len(text) and _is_word_char(text[stop]))):
                continue
            if token.lstrip:
                while start > done and text[start - 1] in _WHITE_SPACE:
                    start -= 1
            if token.rstrip:
                while stop < len(text) and text[stop] in _WHITE_SPACE:
                    stop += 1
            if start > done:
                out.append((text[done:start], None))
            out.append((text[start:stop], token))
            done = pos = stop
        if done < len(text):
            out.append((text[done:], None))
        return out


def _template(spec: dict | None) -> tuple[list[int], list[int]]:
    """The ids a TemplateProcessing post-processor puts before and after a single sequence."""
    if spec is None:
        return [], []
    if spec.get("type") != "TemplateProcessing":
        raise _Unsupported(f"post_processor {spec.get('type')!r} (supported: 'TemplateProcessing')")
    before: list[int] = []
    after: list[int] = []
    seen_sequence = False
    for item in spec.get("single") or []:
        if not isinstance(item, dict):
            raise _Unsupported(f"TemplateProcessing item {_short(item)}")
        if "Sequence" in item:
            seen_sequence = True
        elif "SpecialToken" in item:
            name = item["SpecialToken"]["id"]
            ids = spec["special_tokens"][name]["ids"]
            if not isinstance(ids, list):
                raise ValueError(f"TemplateProcessing ids of {_short(name)} must be a list, got {_short(ids)}")
            (after if seen_sequence else before).extend(_token_id(i, f"TemplateProcessing {_short(name)}") for i in ids)
        else:
            raise _Unsupported(f"TemplateProcessing item {_short(item)}")
    if len(before) + len(after) >= MAX_PROMPT_TOKENS:
        raise ValueError(f"TemplateProcessing adds {len(before) + len(after)} ids to every prompt, "
                         f"fewer than {MAX_PROMPT_TOKENS} allowed")
    return before, after


# ---------------------------------------------------------------- the tokenizer


class Tokenizer:
    """``tokenizer.json`` -> ids, without ``</s>`` handling of its own: the post-processor's template
    adds what the file says. The file and the prompts are untrusted: a file breaking a rule fails on load
    (ValueError here, ModelFolderError from :meth:`from_file`), a prompt breaking one in :meth:`encode`
    (InvalidInputError), and the limits at the top of this module bound the time and memory of both."""

    def __init__(self, spec: dict):
        try:
            model = spec.get("model") or {}
            if model.get("type", "Unigram") != "Unigram" or "vocab" not in model:
                raise _Unsupported(f"model {_short(model.get('type'))} (supported: 'Unigram')")
            self._model = _Unigram(model)
            for key, kind in (("normalizer", "normalizers"), ("pre_tokenizer", "pretokenizers")):
                if (size := _tree_size(spec.get(key), kind)) > MAX_COMPONENTS:
                    raise ValueError(f"{key} of {size} components, at most {MAX_COMPONENTS} allowed")
            self._normalize = _component(spec.get("normalizer"), "normalizer", _NORMALIZERS) or (lambda s: s)
            self._pre_tokenize = _component(spec.get("pre_tokenizer"), "pre_tokenizer", _PRE_TOKENIZERS) \
                or (lambda words: words)
            self._prefix, self._suffix = _template(spec.get("post_processor"))
            added = spec.get("added_tokens") or []
            if not isinstance(added, list) or len(added) > MAX_ADDED_TOKENS:
                raise ValueError(f"added_tokens must be a list of at most {MAX_ADDED_TOKENS} tokens")
            self._added = [_AddedToken(t) for t in added]
            for token in self._added:
                if token.normalized:  # matched after normalisation, against the normalised content
                    token.pattern = self._normalize(token.content)
                    if len(token.pattern) > MAX_PIECE_CHARS:
                        raise ValueError(f"added token {_short(token.content)} normalises to {len(token.pattern)} "
                                         f"characters, at most {MAX_PIECE_CHARS} allowed")
            self._split_raw = _AddedSplitter([t for t in self._added if not t.normalized])
            self._split_normalized = _AddedSplitter([t for t in self._added if t.normalized])
        except _Unsupported as exc:
            raise ValueError(f"unsupported {exc}") from None
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError, OverflowError,
                struct.error) as exc:
            raise ValueError(f"malformed ({type(exc).__name__}: {exc})") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike, max_id: int | None = None) -> "Tokenizer":
        """Read ``path``; with ``max_id`` (the text encoder's vocabulary size), also refuse any id the
        tokenizer could emit that the encoder cannot embed, which would otherwise fail inside onnxruntime
        on the first prompt that produces it."""
        if max_id is not None:  # the caller's value (numpy's ints too), not the file's
            if isinstance(max_id, bool) or operator.index(max_id) < 1:
                raise ValueError(f"max_id must be a positive integer, got {max_id!r}")
            max_id = operator.index(max_id)
        spec = read_json_file(path, MAX_FILE_BYTES, "tokenizer")
        try:
            if not isinstance(spec, dict):
                raise ValueError("not a JSON object")
            tokenizer = cls(spec)
        except (OSError, ValueError, RecursionError) as exc:
            raise ModelFolderError(f"{path}: unreadable tokenizer ({str(exc).splitlines()[0][:300]})") from None
        if max_id is not None:
            for token_id, what in tokenizer._emittable():
                if token_id >= max_id:
                    raise ModelFolderError(f"{path}: {what} has id {token_id}, but the text encoder embeds only "
                                           f"ids below {max_id} (its vocabulary size)")
        return tokenizer

    def _emittable(self) -> list[tuple[int, str]]:
        """The largest vocabulary id, and every added and template id, with what it belongs to."""
        out = [(len(self._model.scores) - 1, f"vocab piece {len(self._model.scores) - 1}")]
        out += [(t.id, f"added token {_short(t.content)}") for t in self._added]
        out += [(i, "a TemplateProcessing special token") for i in self._prefix + self._suffix]
        return out

    def token_to_id(self, token: str) -> int | None:
        for added in self._added:
            if added.content == token:
                return added.id
        return self._model.ids.get(token)

    def encode(self, text: str, name: str = "prompt") -> list[int]:
        """The ids of one prompt, or InvalidInputError naming it ``name``: not a string, over
        MAX_PROMPT_CHARS (checked before any work), normalised past MAX_NORMALIZED_CHARS, holding a
        character the vocabulary cannot spell, or over MAX_PROMPT_TOKENS ids."""
        _check_prompt(text, name)
        try:
            ids = self._encode(text)
        except _PromptError as exc:
            raise InvalidInputError(f"{name}: {exc}") from None
        if len(ids) > MAX_PROMPT_TOKENS:
            raise InvalidInputError(f"{name}: {len(ids)} tokens, at most {MAX_PROMPT_TOKENS} allowed "
                                    f"(T5's model_max_length); shorten it")
        return ids

    def _encode(self, text: str) -> list[int]:
        ids, normalized = list(self._prefix), 0
        for segment, added in self._split_raw(text):
            if added is not None:
                ids.append(added.id)
                continue
            segment = self._normalize(segment)
            normalized += len(segment)  # each pass is bounded; so are all segments together
            if normalized > MAX_NORMALIZED_CHARS:
                raise _TooLong(normalized)
            for piece, added2 in self._split_normalized(segment):
                if added2 is not None:
                    ids.append(added2.id)
                else:
                    for word in self._pre_tokenize([piece]):
                        ids += self._model(word)
        return ids + list(self._suffix)


def _check_prompt(text, name: str) -> None:
    """What can be said of a prompt before any work on it: it is a string of valid Unicode (a lone
    surrogate cannot be encoded as UTF-8, which the normaliser needs) of at most MAX_PROMPT_CHARS."""
    if not isinstance(text, str):
        raise InvalidInputError(f"{name}: must be a string, got {type(text).__name__}")
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidInputError(f"{name}: {len(text)} characters, at most {MAX_PROMPT_CHARS} allowed; shorten it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"{name}: character {exc.start} is a lone surrogate "
                                f"(U+{ord(text[exc.start]):04X}); only valid Unicode text is allowed") from None
