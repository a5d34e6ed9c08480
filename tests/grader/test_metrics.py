"""Text similarity metrics. Reference values were computed with sacrebleu 2.6 (sentence_bleu, tokenize="none"
on the same tokens), nltk 3.10 (sentence_gleu, meteor_score without WordNet) and rouge-score 0.1.2, and
agree to 1e-9; the small ones are also checked by hand in the comments."""

from __future__ import annotations

import math

import pytest

from grader import metrics as m

# (hypothesis, reference): bleu, gleu, meteor, rouge_1, rouge_2, rouge_l
REFERENCE = {
    ("the cat is on the mat", "the cat sat on the mat"): (0.379918, 0.5, 0.806667, 0.833333, 0.6, 0.833333),
    ("the cat sat on the mat", "the cat sat on a mat"): (0.537285, 0.611111, 0.743333, 0.833333, 0.6, 0.833333),
    ("hello world", "hello there world"): (0.428882, 0.333333, 0.344828, 0.8, 0.0, 0.8),
    ("A quick brown fox jumps over the lazy dog.", "The quick brown fox jumped over the lazy dog!"):
        (0.379918, 0.470588, 0.799219, 0.777778, 0.625, 0.777778),
    ("a b c d", "a c d"): (0.353553, 0.4, 0.824373, 0.857143, 0.4, 0.857143),
    ("the cat sat", "the cat ran"): (0.550321, 0.5, 0.625, 0.666667, 0.5, 0.666667),
    ("one two three", "one two three"): (1.0, 1.0, 0.981481, 1.0, 1.0, 1.0),
    ("x", "a b c"): (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
}


@pytest.mark.parametrize("pair", list(REFERENCE))
def test_against_reference_implementations(pair):
    h, r = pair
    bleu, gleu, meteor, r1, r2, rl = REFERENCE[pair]
    assert m.bleu(h, r) == pytest.approx(bleu, abs=1e-6)
    assert m.gleu(h, r) == pytest.approx(gleu, abs=1e-6)
    assert m.meteor(h, r) == pytest.approx(meteor, abs=1e-6)
    assert m.rouge_n(h, r, 1) == pytest.approx(r1, abs=1e-6)
    assert m.rouge_n(h, r, 2) == pytest.approx(r2, abs=1e-6)
    assert m.rouge_l(h, r) == pytest.approx(rl, abs=1e-6)


def test_hand_checked():
    # rouge_1 "the cat sat" vs "the cat ran": 2 of 3 unigrams match both ways -> P = R = F = 2/3
    assert m.rouge_n("the cat sat", "the cat ran", 1) == pytest.approx(2 / 3)
    # rouge_2: bigrams (the cat)(cat sat) vs (the cat)(cat ran): 1 of 2 -> 0.5
    assert m.rouge_n("the cat sat", "the cat ran", 2) == pytest.approx(0.5)
    # rouge_l "a b c d" vs "a c d": LCS 3, P = 3/4, R = 1 -> F = 6/7
    assert m.rouge_l("a b c d", "a c d") == pytest.approx(6 / 7)
    # bleu "the cat sat" vs "the cat ran" (3 tokens, effective order 3): p1=2/3, p2=1/2, p3: 0 matches -> 1/(2*1)
    assert m.bleu("the cat sat", "the cat ran") == pytest.approx((2 / 3 * 1 / 2 * 1 / 2) ** (1 / 3))
    # gleu: 1..4-grams of "a b" vs "a c": hyp {a, b, ab} ref {a, c, ac}: 1 match / 3 -> 1/3
    assert m.gleu("a b", "a c") == pytest.approx(1 / 3)
    # fuzzy_match = rapidfuzz ratio = 2 * LCS / (len1 + len2): kitten/sitting LCS "ittn" = 4 -> 8/13
    assert m.fuzzy_match("kitten", "sitting") == pytest.approx(8 / 13)
    # brevity penalty: "the cat" vs "the cat sat on the mat": p1 = p2 = 1, bp = exp(1 - 6/2)
    assert m.bleu("the cat", "the cat sat on the mat") == pytest.approx(math.exp(1 - 6 / 2))


@pytest.mark.parametrize("name", ["fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4",
                                  "rouge_5", "rouge_l"])
def test_empty_and_identical(name):
    f = m.METRICS[name]
    assert f("", "") == 1.0
    assert f("", "abc") == 0.0 and f("abc", "") == 0.0
    assert f("   ", "abc") == 0.0
    assert f("same words here and there", "same words here and there") > 0.97
    for a, b in [("x", "y z"), ("the cat", "a dog"), ("1 2 3", "3 2 1")]:
        assert 0.0 <= f(a, b) <= 1.0


def test_unicode_text():
    # rouge keeps non-ASCII words (rouge-score's own tokenizer would drop them and score 0)
    assert m.rouge_n("猫 在 垫子 上", "猫 在 地板 上", 1) == pytest.approx(0.75)
    assert m.rouge_l("Ça va très bien", "ça va bien") == pytest.approx(2 * (3 / 4 * 1) / (3 / 4 + 1))
    assert m.bleu("naïve café", "naïve café") == 1.0
    assert m.fuzzy_match("café", "cafe") == pytest.approx(0.75)
    assert m.meteor("Ünïcödé wörds", "ünïcödé wörds") > 0.9  # lower-cased before matching


def test_meteor_uses_stems():
    # "jumps"/"jumped" match through the Porter stemmer
    assert m.meteor("the dog jumps", "the dog jumped") > m.meteor("the dog runs", "the dog jumped")


def test_cosine_loads_lazily_and_never_at_import():
    import subprocess
    import sys

    code = (
        "import grader, grader.core, grader.metrics, sys; "
        "assert 'torch' not in sys.modules and 'sentence_transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cosine_with_the_packaged_embedding_model():
    same = m.cosine("A man is playing a guitar.", "A man plays the guitar.")
    other = m.cosine("A man is playing a guitar.", "The stock market fell today.")
    assert 0.6 < same <= 1.0 and other < same
    assert m.cosine_batch(["a", "b"], ["a", "c"])[0] == pytest.approx(1.0, abs=1e-5)
