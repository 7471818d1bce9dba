"""Backbone wiring: put the bank's low-rank values into a model's linear layers, and task heads on top."""
