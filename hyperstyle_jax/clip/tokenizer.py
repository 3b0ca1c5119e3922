"""CLIP's byte-level BPE tokenizer (official `clip/simple_tokenizer.py`), reimplemented; no torch.

    tok = get_tokenizer()
    ids = tok.tokenize(["a face", "a smiling face"])   # int32 [2, 77]: SOT ... EOT, 0-padded
    tokenize("a face")                                 # the same, shared instance

The merges file `bpe_simple_vocab_16e6.txt.gz` ships next to this module (from the
clip-anytorch 2.6.0 wheel, MIT; see LICENSE here). Vocabulary: the 256 byte symbols, the same
with `</w>`, the first 48,894 merges, then `<|startoftext|>` = 49406 and `<|endoftext|>` =
49407 (49,408 in total).

Cleaning as the original: `ftfy.fix_text` (only when the optional `ftfy` package is
installed: without it, mojibake such as "cafÃ©" is not repaired; plain text is unaffected),
`html.unescape` twice, whitespace runs collapsed to one space, strip, lower-case. The
pre-split pattern needs Unicode classes (\\p{L}, \\p{N}); it uses the `regex` package when
installed, else an equivalent built on `re` that differs only for non-decimal numerals such
as "½" or "Ⅻ" (\\p{N} in CLIP, letters here).

Prompts longer than the context raise `ValueError` naming the prompt and its length, as the
official `RuntimeError`; `truncate=True` keeps the first `context_length` ids and puts EOT last.
"""
from __future__ import annotations

import functools
import gzip
import html
import os
import re
from typing import Iterable, Sequence

import numpy as np

VOCAB_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          "bpe_simple_vocab_16e6.txt.gz")
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
N_MERGES = 49152 - 256 - 2  # merges[1 : 48895] of the file (line 0 is a header)
CONTEXT_LENGTH = 77

try:
    import regex as _regex

    _PAT = _regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"""
                          r"""[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", _regex.IGNORECASE)
except ImportError:  # [^\W\d_] = letters (+ non-decimal numerals); \d = decimal digits
    _PAT = re.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"""
                      r"""[^\W\d_]+|\d|(?:[^\s\w]|_)+""", re.IGNORECASE)


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable character: the printable Latin-1 bytes map to themselves, the other 68
    to chr(256 + n) in byte order. Dict order (printables first) is the vocabulary order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _fix_text(text: str) -> str:
    try:
        import ftfy  # noqa: PLC0415  optional extra (clip)
    except ImportError:
        return text
    return ftfy.fix_text(text)


def clean(text: str) -> str:
    """The official basic_clean + whitespace_clean + lower()."""
    text = html.unescape(html.unescape(_fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


class SimpleTokenizer:
    def __init__(self, vocab_file: str = VOCAB_FILE):
        try:
            with gzip.open(vocab_file, "rt", encoding="utf-8") as f:
                lines = f.read().split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise ValueError(f"{vocab_file}: cannot read the CLIP BPE merges: {e}") from None
        merges = [tuple(line.split()) for line in lines[1:N_MERGES + 1]]
        if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{vocab_file}: expected {N_MERGES} merge pairs after the header")
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {SOT: SOT, EOT: EOT}
        self.sot_token, self.eot_token = self.encoder[SOT], self.encoder[EOT]

    def __len__(self) -> int:
        return len(self.encoder)

    def bpe(self, token: str) -> str:
        """Space-separated BPE symbols of one pre-split piece (already byte-encoded)."""
        if token in self.cache:
            return self.cache[token]
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):  # every occurrence of the best pair, left to right
                if i + 1 < len(word) and word[i] == best[0] and word[i + 1] == best[1]:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """Ids of `text` without SOT/EOT."""
        ids = []
        for piece in _PAT.findall(clean(text)):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(piece).split(" "))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` (pass them without the zero padding: id 0 is the symbol '!')."""
        text = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")

    def tokenize(self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH,
                 truncate: bool = False) -> np.ndarray:
        """`clip.tokenize`: int32 [N, context_length] of [SOT] + ids + [EOT], zero padded."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), context_length), np.int32)
        for row, text in enumerate(texts):
            ids = [self.sot_token] + self.encode(text) + [self.eot_token]
            if len(ids) > context_length:
                if not truncate:
                    raise ValueError(
                        f"prompt {_short(text)!r} is {len(ids)} tokens with SOT/EOT, more than "
                        f"the CLIP context of {context_length}; shorten it (or pass "
                        "truncate=True)")
                ids = ids[:context_length]
                ids[-1] = self.eot_token
            out[row, :len(ids)] = ids
        return out


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n] + "..."


@functools.lru_cache(maxsize=None)
def get_tokenizer(vocab_file: str = VOCAB_FILE) -> SimpleTokenizer:
    """A shared tokenizer (building the 49k-entry tables takes ~0.1 s)."""
    return SimpleTokenizer(vocab_file)


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH,
             truncate: bool = False) -> np.ndarray:
    return get_tokenizer().tokenize(texts, context_length, truncate)
