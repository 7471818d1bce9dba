"""Baselines with the same ``learn(task)`` / ``predict(texts)`` contract as SLM."""
