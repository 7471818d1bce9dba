"""Pure-torch maths of SLM: DTKR retrieval and JARe low-rank mixing. No transformers import here."""
