"""A ``tokenizer.json`` reader for T5's SentencePiece-Unigram tokenizer, in pure Python.

The ``tokenizers`` wheel is 12 MB and pulls ~27 MB of ``huggingface_hub``/``hf_xet``/``httpx``/``pyyaml``
that a runtime never uses, for what is here a few hundred lines: MusicGen only ever conditions on T5,
whose tokenizer is a Unigram model behind a SentencePiece normaliser. This module reads the same file,
gives the same ids as ``tokenizers`` (tests/test_tokenizer.py fuzzes it against ``tokenizers``; the
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
"""

from __future__ import annotations

import base64
import json
import os
import re
import struct
import unicodedata
from typing import Callable

from .errors import ModelFolderError

# Rust's char::is_whitespace (Unicode White_Space): what WhitespaceSplit and Strip use. Python's
# str.isspace also counts U+001C..U+001F, which tokenizers keeps as ordinary characters.
_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
               "\u2028\u2029\u202f\u205f\u3000"
_UNK_PENALTY = 10.0  # tokenizers' and sentencepiece's kUnkPenalty: unknown chars score min_score - 10


class _Unsupported(Exception):
    pass


def _text(value, what: str) -> str:
    """Every string the encoder will splice: checked once here, so a crafted file fails on load."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _component(spec: dict | None, kind: str, table: dict) -> Callable | None:
    if spec is None:
        return None
    name = spec.get("type")
    if name not in table:
        raise _Unsupported(f"{kind} {name!r} (supported: {', '.join(sorted(table))})")
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
    clusters: list[str] = []
    for i, char in enumerate(text):
        if i and _joins(text[i - 1], char):
            clusters[-1] += char
        else:
            clusters.append(char)
    return clusters


def _regex(pattern: str) -> re.Pattern:
    """An Oniguruma pattern (tokenizers' engine) in Python's ``re``: ``\\s`` is Unicode White_Space there,
    while Python's also matches U+001C..U+001F, so it is spelled out (inside a class too)."""
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
        else:
            in_class = (in_class and pattern[i] != "]") or (not in_class and pattern[i] == "[")
            out.append(pattern[i])
            i += 1
            continue
        i += 2
    try:
        return re.compile("".join(out))
    except re.error as exc:
        raise _Unsupported(f"Replace regex {pattern!r} ({exc})") from None


def _replace(spec: dict) -> Callable[[str], str]:
    pattern, content = spec.get("pattern") or {}, _text(spec.get("content", ""), "Replace content")
    if "String" in pattern:
        literal = _text(pattern["String"], "Replace pattern")
        return lambda s: s.replace(literal, content) if literal else s
    if "Regex" in pattern:
        compiled = _regex(_text(pattern["Regex"], "Replace pattern"))
        return lambda s: compiled.sub(lambda _: content, s)
    raise _Unsupported(f"Replace pattern {pattern!r}")


def _strip(spec: dict) -> Callable[[str], str]:
    left, right = spec.get("strip_left", True), spec.get("strip_right", True)

    def strip(s: str) -> str:
        s = s.lstrip(_WHITE_SPACE) if left else s
        return s.rstrip(_WHITE_SPACE) if right else s
    return strip


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


_NORMALIZERS: dict[str, Callable[[dict], Callable[[str], str]]] = {
    "Precompiled": _Precompiled,
    "NFC": lambda spec: lambda s: unicodedata.normalize("NFC", s),
    "NFD": lambda spec: lambda s: unicodedata.normalize("NFD", s),
    "NFKC": lambda spec: lambda s: unicodedata.normalize("NFKC", s),
    "NFKD": lambda spec: lambda s: unicodedata.normalize("NFKD", s),
    "Lowercase": lambda spec: str.lower,
    "Strip": _strip,
    "Replace": _replace,
    "Prepend": lambda spec: lambda s, p=_text(spec.get("prepend", ""), "Prepend"): p + s if s else s,
}
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
        self.ids = {}
        for i, (piece, _) in enumerate(vocab):
            self.ids[_text(piece, "vocabulary piece")] = i  # a duplicate maps to its last id, as in tokenizers
        self.scores = [float(score) for _, score in vocab]
        self.unk_id = spec.get("unk_id")
        if self.unk_id is not None and (type(self.unk_id) is not int or not 0 <= self.unk_id < len(vocab)):
            raise ValueError(f"unk_id {self.unk_id!r} is not an id of the {len(vocab)}-piece vocabulary")
        self.byte_fallback = bool(spec.get("byte_fallback", False))
        self.longest = max((len(piece) for piece, _ in vocab), default=0)
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


class _NoUnknown(ValueError):
    def __init__(self, piece: str):
        super().__init__(f"{piece!r} is not in the vocabulary and the tokenizer has no unknown token")


# ---------------------------------------------------------------- added tokens and template


class _AddedToken:
    def __init__(self, spec: dict):
        self.id = spec["id"]
        if type(self.id) is not int or self.id < 0:
            raise ValueError(f"added token id {self.id!r} is not a token id")
        self.content = _text(spec["content"], "added token content")
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
        if "Sequence" in item:
            seen_sequence = True
        elif "SpecialToken" in item:
            ids = spec["special_tokens"][item["SpecialToken"]["id"]]["ids"]
            if not all(type(i) is int and i >= 0 for i in ids):
                raise ValueError(f"TemplateProcessing ids {ids!r} are not token ids")
            (after if seen_sequence else before).extend(ids)
        else:
            raise _Unsupported(f"TemplateProcessing item {item!r}")
    return before, after


# ---------------------------------------------------------------- the tokenizer


class Tokenizer:
    """``tokenizer.json`` -> ids, without ``</s>`` handling of its own: the post-processor's template
    adds what the file says."""

    def __init__(self, spec: dict):
        try:
            model = spec.get("model") or {}
            if model.get("type", "Unigram") != "Unigram" or "vocab" not in model:
                raise _Unsupported(f"model {model.get('type')!r} (supported: 'Unigram')")
            self._model = _Unigram(model)
            self._normalize = _component(spec.get("normalizer"), "normalizer", _NORMALIZERS) or (lambda s: s)
            self._pre_tokenize = _component(spec.get("pre_tokenizer"), "pre_tokenizer", _PRE_TOKENIZERS) \
                or (lambda words: words)
            self._prefix, self._suffix = _template(spec.get("post_processor"))
            self._added = [_AddedToken(t) for t in spec.get("added_tokens") or []]
            for token in self._added:
                if token.normalized:  # matched after normalisation, against the normalised content
                    token.pattern = self._normalize(token.content)
            self._split_raw = _AddedSplitter([t for t in self._added if not t.normalized])
            self._split_normalized = _AddedSplitter([t for t in self._added if t.normalized])
        except _Unsupported as exc:
            raise ValueError(f"unsupported {exc}") from None
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError, struct.error) as exc:
            raise ValueError(f"malformed ({type(exc).__name__}: {exc})") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Tokenizer":
        try:
            with open(path, encoding="utf-8") as f:
                spec = json.load(f)
            if not isinstance(spec, dict):
                raise ValueError("not a JSON object")
            return cls(spec)
        except (OSError, ValueError, RecursionError) as exc:
            raise ModelFolderError(f"{path}: unreadable tokenizer ({str(exc).splitlines()[0][:160]})") from None

    def token_to_id(self, token: str) -> int | None:
        for added in self._added:
            if added.content == token:
                return added.id
        return self._model.ids.get(token)

    def encode(self, text: str) -> list[int]:
        ids = list(self._prefix)
        for segment, added in self._split_raw(text):
            if added is not None:
                ids.append(added.id)
                continue
            for piece, added2 in self._split_normalized(self._normalize(segment)):
                if added2 is not None:
                    ids.append(added2.id)
                else:
                    for word in self._pre_tokenize([piece]):
                        ids += self._model(word)
        return ids + list(self._suffix)
