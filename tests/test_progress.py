"""scalable_lm.progress: a bar where one can be drawn, periodic log lines elsewhere."""

from __future__ import annotations

import logging

from scalable_lm import progress


def test_log_lines_every_interval_with_the_latest_figures(caplog, monkeypatch):
    monkeypatch.setattr(progress, "interactive", lambda: False)
    bar = progress.progress(range(5), "training", every=0.0)
    with caplog.at_level(logging.INFO, logger="scalable_lm"):
        for i in bar:
            bar.set_postfix(loss=f"{i:.1f}")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("training: 1/5 after") and lines[-1].startswith("training: 4/5")
    assert lines[-1].endswith("loss 3.0")  # the figures set after the 4th item; no line after the last


def test_disabled_progress_is_silent_and_yields_everything(caplog):
    with caplog.at_level(logging.INFO, logger="scalable_lm"):
        assert list(progress.progress([1, 2, 3], "x", enabled=False)) == [1, 2, 3]
    assert not caplog.records
