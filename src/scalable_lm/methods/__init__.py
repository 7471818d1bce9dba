"""Continual-learning methods with the ``learn(task)`` / ``predict(texts)`` contract."""

from scalable_lm.methods.base import Prediction

__all__ = ["Prediction"]
