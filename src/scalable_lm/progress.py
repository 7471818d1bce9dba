"""Progress of long work: a tqdm bar on a terminal (or in a notebook), log lines everywhere else.

Under ``nohup``, systemd, Kubernetes or CI, stderr is not a terminal and a bar would be either hidden or a
stream of carriage returns; there, the same loop logs one INFO line (logger ``scalable_lm``) at most every
``LOG_EVERY_S`` seconds, with the position, elapsed time and the latest figures (``set_postfix``).
tqdm has no such mode of its own (its ``mininterval`` still redraws one line with carriage returns), hence
this small wrapper.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator

from tqdm.auto import tqdm

log = logging.getLogger("scalable_lm")
LOG_EVERY_S = 60.0


def interactive() -> bool:
    """A terminal or a notebook: where a progress bar can be drawn."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


class _LogLines:
    """The part of tqdm's interface the loops use, writing a log line every ``every`` seconds."""

    def __init__(self, items: list, desc: str, every: float):
        self.items, self.desc, self.every = items, desc, every
        self.postfix: dict = {}

    def __iter__(self) -> Iterator:
        start = last = time.monotonic()
        for i, item in enumerate(self.items):
            yield item
            now = time.monotonic()
            if now - last >= self.every and i + 1 < len(self.items):
                last = now
                extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
                log.info("%s: %d/%d after %.0fs%s", self.desc, i + 1, len(self.items), now - start, extra)

    def set_postfix(self, **values) -> None:
        self.postfix = values


def progress(items: Iterable, desc: str, enabled: bool = True, every: float | None = None):
    """Iterate ``items`` showing progress: a bar where one can be drawn, else periodic log lines; nothing
    when ``enabled`` is False."""
    items = list(items)
    if not enabled:
        return tqdm(items, disable=True)
    if interactive():
        return tqdm(items, desc=desc, leave=False)
    return _LogLines(items, desc, LOG_EVERY_S if every is None else every)
