#!/usr/bin/env python3
"""Reference values for crates/lushan-train/src/task_metrics.rs, from scikit-learn and sacrebleu.

Run by hand from the repository root:

    venv/bin/pip install scikit-learn sacrebleu
    venv/bin/python tools/metrics_reference.py

It prints every number (and the two classification_report texts) that the Rust tests hard-code, with the
library versions they came from. Nothing is written to disk. Values were produced with scikit-learn 1.9.1
and sacrebleu 2.6.0 (Python 3.11).

The classification cases pass `labels=list(range(len(names)))` so that a class absent from both gold and
predicted still gets a row (as lushan's report does), and `zero_division=0`.
chrF is sacrebleu's `CHRF()` with its defaults: char_order 6, word_order 0, beta 2, whitespace removed,
effective-order averaging (no eps smoothing), statistics summed over the corpus before the F-score.
"""

from __future__ import annotations

import sklearn
import sacrebleu
from sacrebleu.metrics import CHRF
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

# name -> (label names, gold ids, predicted ids)
CLASSIFICATION = {
    # 3 classes, "bird" is never predicted.
    "never_predicted": (
        ["cat", "dog", "bird"],
        [0, 0, 0, 1, 1, 2, 2, 0, 1, 2],
        [0, 1, 0, 1, 1, 0, 1, 0, 0, 1],
    ),
    # 4 classes: "neutral" is predicted but never gold, "mixed" appears nowhere; non-ASCII names.
    "unseen_classes": (
        ["négatif", "positif", "neutral", "mixed"],
        [0, 1, 1, 0, 1, 0, 1, 1],
        [0, 1, 2, 2, 1, 1, 1, 0],
    ),
    # Binary, all correct.
    "perfect": (
        ["no", "yes"],
        [1, 0, 1, 1],
        [1, 0, 1, 1],
    ),
}

# name -> (hypotheses, references)
CHRF_CORPORA = {
    "english": (
        [
            "The cat sat on the mat.",
            "A quick brown fox jumps over the lazy dog",
            "It is raining today, so we stay at home.",
        ],
        [
            "The cat is sitting on the mat.",
            "The quick brown fox jumped over the lazy dog.",
            "Today it rains, so we are staying home.",
        ],
    ),
    "spanish": (
        [
            "El niño comió una manzana en la mañana.",
            "¿Dónde está la estación de autobús?",
            "Mi corazón late rápido cuando corro.",
        ],
        [
            "El niño se comió una manzana por la mañana.",
            "¿Dónde queda la estación de autobuses?",
            "Mi corazon late rapido cuando corro.",
        ],
    ),
    # Short strings (orders above their length drop out of the average), whitespace, empties.
    "edge": (
        ["ab", "a b c", "", "", "xyz", "café"],
        ["abc", "abc", "", "hello", "", "cafe\u0301"],
    ),
}

# (hypothesis, reference) pairs for chrf_sentence beyond the corpus sentences.
CHRF_SENTENCES = [
    ("identical sentence", "identical sentence"),
    ("", ""),
    ("", "non-empty"),
    ("non-empty", ""),
    ("ab\x1ccd", "abcd"),  # Python's str.split() treats U+001C..U+001F as whitespace
    ("café au lait", "cafe\u0301 au lait"),  # NFC vs NFD: code points differ
    ("ñandú", "nandu"),
]


def show(name, value):
    print(f"{name} = {value!r}")


def main():
    print(f"# scikit-learn {sklearn.__version__}, sacrebleu {sacrebleu.__version__}")
    for case, (names, gold, pred) in CLASSIFICATION.items():
        labels = list(range(len(names)))
        print(f"\n## classification: {case}")
        p, r, f, s = precision_recall_fscore_support(gold, pred, labels=labels, zero_division=0)
        show("accuracy", accuracy_score(gold, pred))
        show("macro_f1", f1_score(gold, pred, labels=labels, average="macro", zero_division=0))
        for avg in ("macro", "weighted"):
            ap, ar, af, _ = precision_recall_fscore_support(
                gold, pred, labels=labels, average=avg, zero_division=0
            )
            show(f"{avg}_avg (p, r, f1)", (float(ap), float(ar), float(af)))
        for i, n in enumerate(names):
            show(f"class {n} (p, r, f1, support)", (float(p[i]), float(r[i]), float(f[i]), int(s[i])))
        show("confusion", confusion_matrix(gold, pred, labels=labels).tolist())
        for digits in (2, 4):
            print(f"classification_report digits={digits}:")
            text = classification_report(
                gold, pred, labels=labels, target_names=names, zero_division=0, digits=digits
            )
            print(repr(text))

    chrf = CHRF()
    print("\n## chrF corpora (CHRF() defaults)")
    for case, (hyps, refs) in CHRF_CORPORA.items():
        show(f"corpus {case}", chrf.corpus_score(hyps, [refs]).score)
        for h, r in zip(hyps, refs):
            show(f"  sentence {h!r} | {r!r}", chrf.sentence_score(h, [r]).score)
    print("\n## chrF sentences")
    for h, r in CHRF_SENTENCES:
        show(f"sentence {h!r} | {r!r}", chrf.sentence_score(h, [r]).score)


if __name__ == "__main__":
    main()
