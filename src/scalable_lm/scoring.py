"""Scores of generated answers (pure functions; the heavy scorers are imported only when used).

- ``first_word_match``: label-like answers (finance sentiment word, MMLU letter): the first word of the
  answer, lower-cased and stripped of punctuation, equals the gold answer's.
- ``label_match``: text labels of one or more words ("very negative", "Sci/Tech"): the answer's words
  begin with all of the gold label's words (so "very positive" is not right for "very negative").
- ``rouge_l``: ROUGE-L F1 (``rouge-score``) for free answers.
- ``bert_score_f1``: BERTScore F1 computed offline with the packaged MiniLM (6 layers, no baseline
  rescaling: the rescaling files come from the hub).
"""

from __future__ import annotations

import re


def first_word(text: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", text.lower())
    return words[0] if words else ""


def first_word_match(predictions: list[str], golds: list[str]) -> float:
    if len(predictions) != len(golds) or not golds:
        raise ValueError("predictions and golds must be non-empty and of equal length")
    return sum(first_word(p) == first_word(g) for p, g in zip(predictions, golds)) / len(golds)


def label_match(predictions: list[str], golds: list[str]) -> float:
    if len(predictions) != len(golds) or not golds:
        raise ValueError("predictions and golds must be non-empty and of equal length")

    def words(text: str) -> list[str]:
        return re.findall(r"[a-z0-9]+", text.lower())
    return sum(words(p)[: len(words(g))] == words(g) for p, g in zip(predictions, golds)) / len(golds)


def rouge_l(predictions: list[str], golds: list[str]) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return sum(scorer.score(g, p)["rougeL"].fmeasure for p, g in zip(predictions, golds)) / len(golds)


def bert_score_f1(predictions: list[str], golds: list[str], batch_size: int = 32) -> float:
    from bert_score import score

    from scalable_lm.backbones import resolve

    _, _, f1 = score(predictions, golds, model_type=resolve("minilm"), num_layers=6, batch_size=batch_size,
                     lang="en", rescale_with_baseline=False, verbose=False)
    return float(f1.mean())
