"""Scores of generated answers (pure functions; the heavy scorers are imported only when used).

- ``first_word_match``: label-like answers (finance sentiment word, MMLU letter): the first word of the
  answer, lower-cased and stripped of punctuation, equals the gold answer's.
- ``label_match``: text labels of one or more words ("very negative", "Sci/Tech"): the answer's words
  begin with all of the gold label's words (so "very positive" is not right for "very negative").
- ``exact_match``: the whole answer equals the gold one (case, surrounding space and final punctuation aside).
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


def exact_match(predictions: list[str], golds: list[str]) -> float:
    if len(predictions) != len(golds) or not golds:
        raise ValueError("predictions and golds must be non-empty and of equal length")

    def norm(text: str) -> str:
        return " ".join(text.lower().split()).rstrip(".!?")
    return sum(norm(p) == norm(g) for p, g in zip(predictions, golds)) / len(golds)


METRICS = {"label": label_match, "first-word": first_word_match, "exact": exact_match}  # and the two below
FREE_TEXT = ("rouge-l", "bertscore")


def choose_metric(golds: list[str]) -> str:
    """``label`` when the gold answers look like labels (each at most 4 words, at most 50 distinct), else
    ``rouge-l`` (free answers; BERTScore-F1 is reported beside it)."""
    short = all(len(g.split()) <= 4 for g in golds)
    return "label" if short and len(set(g.strip().lower() for g in golds)) <= 50 else "rouge-l"


def score_answers(predictions: list[str], golds: list[str], metric: str) -> dict[str, float]:
    """``{"metric": name, "score": value, ...}``: the chosen metric, and for free answers both ROUGE-L and
    BERTScore-F1 (``score`` is the one asked for)."""
    if metric in METRICS:
        return {"metric": metric, "score": METRICS[metric](predictions, golds)}
    if metric not in FREE_TEXT:
        raise ValueError(f"unknown metric '{metric}'; choose from {sorted(METRICS) + list(FREE_TEXT)} or auto")
    out = {"rouge_l": rouge_l(predictions, golds), "bertscore_f1": bert_score_f1(predictions, golds)}
    return {"metric": metric, "score": out["rouge_l" if metric == "rouge-l" else "bertscore_f1"], **out}


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
