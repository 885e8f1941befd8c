"""Languages: which one a text is written in (py3langid) and how each is analysed for BM25 (its
Snowball stemmer from PyStemmer, bm25s's stop words, accent folding).

Why py3langid and not lingua (measured on the 8,509 English, French and Spanish TICO-19 sentences,
2 cores; bench/language.py): py3langid 0.9953 correct at 0.16 ms a text, 165 MB resident, ready in
0.8 s; lingua (high accuracy) 0.9919 at 3.0 ms, 1.3 GB, 11 s; lingua's low-accuracy mode 0.9739.
On each sentence's first four words py3langid 0.889, lingua 0.902: short texts are the hard case,
which is why no query's language is detected (lexical.Analysis.query_terms): an index with one
language analyses queries in it, one with several in each of them.
"""

from __future__ import annotations

import threading
import unicodedata
from collections import Counter

from medsearch.errors import BadInputError

AUTO = "auto"
NEUTRAL = "none"  # no stemmer, no stop words: a language without an analysis, or none detected
# ISO 639-1 code -> (PyStemmer's Snowball algorithm, bm25s's stop words); None where there is none
ANALYSES: dict[str, tuple[str | None, str | None]] = {
    "en": ("english", "en"), "fr": ("french", "fr"), "es": ("spanish", "es"), "de": ("german", "de"),
    "it": ("italian", "it"), "pt": ("portuguese", "pt"), "nl": ("dutch", "nl"), "ru": ("russian", "ru"),
    "sv": ("swedish", "sv"), "no": ("norwegian", "no"), "da": ("danish", "da"), "tr": ("turkish", "tr"),
    "fi": ("finnish", None), "hu": ("hungarian", None), "ro": ("romanian", None), "ca": ("catalan", None),
    "el": ("greek", None), "ar": ("arabic", None), "id": ("indonesian", None), "pl": ("polish", None),
    "cs": ("czech", None), "lt": ("lithuanian", None), "et": ("estonian", None), "ga": ("irish", None),
    "hy": ("armenian", None), "eu": ("basque", None), "fa": ("persian", None),
    "sr": ("serbian", None),
}
# Not offered: Hindi, Tamil and Nepali (Snowball has stemmers, untested here), Chinese, Japanese and
# Korean (they need word segmentation, which this BM25 lacks). Their corpora get the language-neutral analysis;
# the dense half (multilingual-e5-small) reads them.
CHOICES = (AUTO, *ANALYSES, NEUTRAL)
MIN_LETTERS = 20  # fewer letters than this: too little text to tell its language
MIN_SHARE = 0.05  # a language is one of the corpus's when at least this share of its documents is in it
SAMPLE = 2000  # documents read to tell a corpus's languages
_lock = threading.Lock()
_identifier = None


def check(language: str) -> str:
    """`language` as an index option: auto, a code of ANALYSES, or none; anything else is refused."""
    code = (language or AUTO).strip().lower()
    if code not in CHOICES:
        raise BadInputError(f"unknown language '{language}' (use {AUTO}, {NEUTRAL} or one of {', '.join(ANALYSES)})")
    return code


def _ranker():
    global _identifier
    with _lock:
        if _identifier is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=False)
    return _identifier


def detect(text: str, among: tuple[str, ...] | None = None) -> str | None:
    """The language of `text` (an ISO 639-1 code), or None when it has too few letters to tell;
    `among` restricts the answer to those languages."""
    if sum(ch.isalpha() for ch in text[:1000]) < MIN_LETTERS and not among:
        return None
    ranked = _ranker().rank(text[:2000])
    if among:
        ranked = [pair for pair in ranked if pair[0] in among] or [(among[0], 0.0)]
    return ranked[0][0]


def corpus_languages(texts: list[str]) -> list[str]:
    """The languages of a corpus (each at least MIN_SHARE of the documents whose language could be
    told, most frequent first), read from up to SAMPLE documents spread over it."""
    step = max(1, len(texts) // SAMPLE)
    counts = Counter(detect(text) for text in texts[::step])
    told = sum(n for code, n in counts.items() if code is not None)
    return [code for code, n in counts.most_common() if code is not None and n >= MIN_SHARE * told]


def fold(word: str) -> str:
    """`word` without its diacritics (é -> e, ñ -> n; ß and œ stay): what people who type without
    accents write. (Written here: the standard library's NFD, less the combining marks.)"""
    if word.isascii():
        return word
    return "".join(ch for ch in unicodedata.normalize("NFD", word) if not unicodedata.combining(ch))
