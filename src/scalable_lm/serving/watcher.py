"""The model directory a front serves, watched and hot-swapped (``ModelWatcher``), and the bank it hands the
engine (``Loaded``).

The watcher loads the directory (``store.load``, or ``store.load(..., router_only=True)`` for an engine that
holds the model itself) and polls its manifest; when another process adds (or removes) a task, the new bank is
loaded in a background thread and offered to the engine, which swaps it in between batches. A directory that
does not load (a corrupt or half-written file, a bad manifest) is never served: the last good bank stays and
the reason is logged and counted.
"""


from __future__ import annotations

import copy
import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


from scalable_lm import store
from scalable_lm.backbones import is_skeleton
from scalable_lm.serving.front import AUTO, BASE
from scalable_lm.serving.protocol import ServeError
log = logging.getLogger("scalable_lm.serve")


@dataclass
class Loaded:
    """One loaded bank: the model, the manifest it came from, and when."""

    slm: object
    kind: str  # "classifier" | "generative"
    tasks: list[str]
    manifest_sha: str
    generation: int
    loaded_at: float = field(default_factory=time.time)
    # a copy of the model's tokenizer for the request thread: a fast tokenizer must not be used from two
    # threads at once, and the batch thread uses the model's own
    request_tokenizer: object | None = None

    @property
    def models(self) -> list[str]:
        """Valid values of a request's ``model``."""
        return [AUTO, *([BASE] if self.kind == "generative" else []), *self.tasks]

    def check(self, model: str) -> Loaded:
        """This bank, after checking that ``model`` names something in it (404 listing the valid ones)."""
        if model not in self.models:
            raise ServeError(404, f"model '{model}' does not exist; valid models: {self.models}",
                             kind="not_found_error", param="model")
        return self

    @property
    def context(self) -> int:
        """Most tokens the backbone can read (its position table)."""
        module = self.slm.backbone_module
        return int(getattr(module.config, "max_position_embeddings", 0) or 10**9)


def _router_only(loader):
    """``loader`` asked for a router-only load, when it takes that argument (a test's own loader may not)."""
    import inspect

    try:
        params = inspect.signature(loader).parameters
    except (TypeError, ValueError):
        return loader
    if "router_only" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return lambda directory: loader(directory, router_only=True)
    return loader


def _manifest_state(directory: Path) -> tuple[int, int, int] | None:
    try:
        st = (directory / store.MANIFEST).stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _manifest_sha(directory: Path) -> str:
    return hashlib.sha256((directory / store.MANIFEST).read_bytes()).hexdigest()


class ModelWatcher:
    """Load ``directory`` and keep loading it again when its manifest changes.

    Args:
        directory: a model directory (``slm learn`` output).
        interval: seconds between manifest checks (0: never reload).
        loader: ``loader(directory) -> slm`` (default ``store.load``); tests and benchmarks pass their own.
        on_event: ``on_event(result)`` with ``"loaded"`` or ``"failed"`` after each load attempt (metrics).
        query_cache: most query embeddings kept in memory (0: none). The encoder is frozen, so a repeated
            input skips its encoding; the bound keeps a long-running server's memory flat.
        router_only: load only what routing needs (``store.load(..., router_only=True)``: the query encoder,
            the index, the tokenizer; no backbone weights, no task values in memory), for an engine that holds
            the model itself (passed on to ``loader`` when it takes a ``router_only`` argument, as ``store.load``
            and the CLI's loader do).
    """

    def __init__(self, directory: str | Path, interval: float = 1.0, loader=None, on_event=None, query_cache: int = 0,
                 router_only: bool = False):
        self.directory = Path(directory)
        self.query_cache = query_cache
        self.interval = interval
        self.loader = _router_only(loader or store.load) if router_only else (loader or store.load)
        self.on_event = on_event or (lambda result: None)
        self.current: Loaded | None = None  # the last good bank
        self.pending: Loaded | None = None  # a newer good bank, not yet swapped in by the engine
        self.last_error: str | None = None
        self._seen: tuple | None = None  # manifest state of the last attempt (good or bad)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._generation = 0

    def load_now(self) -> Loaded:
        """Load the directory (raises ``ModelDirError`` when it cannot be served)."""
        state = _manifest_state(self.directory)
        sha = _manifest_sha(self.directory) if state is not None else ""
        self._seen = state
        slm = self.loader(self.directory)
        if self.current is not None:  # tasks added since the bank being served: verified now, so that a
            for name in set(slm.task_names) - set(self.current.tasks):  # bad file is never served
                slm.task_state(name)
        if getattr(slm, "encoder", None) is not None:
            slm.encoder.cache_limit = self.query_cache
        self._generation += 1
        kind = store.kind_of(slm)
        lm = getattr(slm, "lm", None)
        tokenizer = lm.tokenizer if lm is not None else getattr(getattr(slm, "classifier", None), "tokenizer", None)
        shared = getattr(getattr(slm, "encoder", None), "tokenizer", None) is tokenizer
        if tokenizer is not None and (shared or not is_skeleton(slm.backbone_module)):
            # the batch thread uses the model's tokenizer: the request thread gets its own (a fast tokenizer must
            # not be used from two threads at once). A router-only model never tokenizes in a batch thread (its
            # engine does), so its tokenizer is the request thread's alone (no copy: Gemma 3's is large), unless
            # its query is read from the backbone's blocks (``shared-lN``: the routing thread tokenizes too).
            tokenizer = copy.deepcopy(tokenizer)
        return Loaded(slm, kind, list(slm.task_names), sha, self._generation, request_tokenizer=tokenizer)

    def start(self) -> None:
        """Load in the background (``/health`` says ``loading`` until done), then watch."""
        self._thread = threading.Thread(target=self._run, name="slm-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _attempt(self) -> None:
        try:
            loaded = self.load_now()
        except Exception as err:  # noqa: BLE001 - whatever the directory holds, keep serving the last good bank
            self.last_error = str(err)
            held = f"keeping the {len(self.current.tasks)} tasks already served" if self.current else "nothing to serve yet"
            log.warning("model directory %s not loaded (%s); %s", self.directory, err, held)
            self.on_event("failed")
            return
        if self.current is not None and loaded.manifest_sha == self.current.manifest_sha:
            self.last_error = None  # put back as it was served: nothing is wrong any more
            return  # touched, not changed
        self.last_error = None
        if self.current is None:
            self.current = loaded
            log.info("serving %s: %s model, tasks %s", self.directory, loaded.kind, loaded.tasks)
        else:
            self.pending = loaded
            log.info("loaded a new bank from %s: tasks %s (was %s); swapping it in between batches",
                     self.directory, loaded.tasks, self.current.tasks)
        self.on_event("loaded")

    def _run(self) -> None:
        self._attempt()
        while not self._stop.wait(self.interval if self.interval > 0 else 3600):
            state = _manifest_state(self.directory)
            if self.interval <= 0 or state == self._seen:
                continue
            try:
                unchanged = self.current is not None and _manifest_sha(self.directory) == self.current.manifest_sha
            except OSError:
                unchanged = False
            if unchanged:  # touched, or put back as served (after a bad copy): nothing to load, nothing wrong
                self._seen = state
                self.last_error = None
                continue
            self._attempt()

    def take(self) -> Loaded | None:
        """The bank the next batch should use (swaps in a pending one)."""
        if self.pending is not None:
            self.current, self.pending = self.pending, None
        return self.current
