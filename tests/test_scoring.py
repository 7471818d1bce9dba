import pytest

from scalable_lm.scoring import bert_score_f1, first_word, first_word_match, label_match, rouge_l


def test_first_word_match_is_case_and_punctuation_blind():
    assert first_word("Positive. The news is good") == "positive"
    assert first_word_match(["Positive.", "B) because", "neutral"], ["positive", "B", "negative"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        first_word_match(["a"], [])


def test_label_match_needs_every_word_of_the_label():
    golds = ["very negative", "negative", "Sci/Tech", "EducationalInstitution"]
    assert label_match(["Very negative.", "negative", "sci/tech news", "EducationalInstitution"], golds) == 1.0
    assert label_match(["very positive", "very negative", "Sci", "Educational"], golds) == 0.0


@pytest.mark.integration
def test_free_answer_scores_rank_a_close_answer_higher():
    gold = ["it is possible that you have a cold"]
    assert rouge_l(["you may have a cold"], gold) > rouge_l(["take the train to paris"], gold)
    assert bert_score_f1(["you may have a cold"], gold) > bert_score_f1(["take the train to paris"], gold)
