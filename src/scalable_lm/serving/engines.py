"""The registry of engines (``ENGINES``) that ``slm serve --engine`` reads its choices, its engine flags and their
checks from: how each engine is built from the front's options, which models it serves, whether the front must
load the whole model for it, and its own flags. Importing this loads no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from scalable_lm.serving.protocol import EngineProtocol


@dataclass(frozen=True)
class EngineSpec:
    """An engine the CLI offers (``slm serve --engine NAME``).

    - ``build(watcher, **front_options)``: the engine (an ``EngineProtocol``).
    - ``holds_model``: whether the front must load the whole model for it (else the router only).
    - ``help``: one line for ``--help``; ``kinds``: the model kinds it serves.
    - ``flags``: its own ``slm serve`` flags, as ``(flag, argparse keyword arguments)``; given with another engine
      they are an error. ``check(args)``: refuses (``ValueError``, one line) what cannot start, before anything
      loads. ``options(args)``: those flags as ``create_app`` options.
    """

    build: Callable[..., "EngineProtocol"]
    holds_model: bool
    help: str
    kinds: tuple[str, ...] = ("classifier", "generative")
    flags: tuple[tuple[str, dict], ...] = ()
    check: Callable[..., None] | None = field(default=None)
    options: Callable[..., dict] = field(default=lambda args: {})


def _local(watcher, *, metrics=None, max_batch=16, max_wait_ms=5.0, max_queue=256, max_new_tokens=256,
           lifo_after=1.0, **_):
    from scalable_lm.serving.local import Engine

    return Engine(watcher, max_batch, max_wait_ms, max_queue, max_new_tokens, metrics, lifo_after=lifo_after)


def _vllm(watcher, *, metrics=None, max_queue=256, vllm_urls=None, vllm_python=None, vllm_args=None,
          state_dir=None, **_):
    from scalable_lm.serving.vllm import VLLMEngine

    return VLLMEngine(watcher, vllm_urls, state_dir=state_dir, python=vllm_python, vllm_args=vllm_args,
                      max_queue=max_queue, metrics=metrics)


def _check_vllm(args) -> None:
    """With no ``--vllm-url`` the front starts vLLM: its interpreter must have it."""
    if args.vllm_url:
        return
    from scalable_lm.serving.vllm import default_python, has_vllm

    python = args.vllm_python or default_python()
    if not has_vllm(python):
        raise ValueError(f"no vLLM in {python}: run `make vllm` (a .venv-vllm beside this project), give "
                         "--vllm-python PY (or set SLM_VLLM_PYTHON), or name running engines with --vllm-url")


_VLLM_FLAGS = (
    ("--vllm-url", {"action": "append", "default": [], "help": "a vLLM OpenAI server to use (repeat for several; "
                    "started with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora); none: start one here"}),
    ("--vllm-python", {"help": "interpreter that has vLLM, for the vLLM started here (default: $SLM_VLLM_PYTHON, "
                       "else the .venv-vllm that `make vllm` made in the project this was installed from or in the "
                       "working directory, else this one)"}),
    ("--vllm-arg", {"action": "append", "default": [], "help": "one more argument for the vLLM started here "
                    "(repeat: --vllm-arg=--max-num-seqs --vllm-arg=64)"}),
    ("--vllm-state", {"help": "folder for exported adapters and the vLLM log (default: under "
                      "$SLM_CACHE_DIR/vllm-front/)"}),
)

ENGINES: dict[str, EngineSpec] = {
    "local": EngineSpec(_local, True, "batches requests in this process (default)"),
    "vllm": EngineSpec(_vllm, False, "routes here, generates on vLLM (started here, or --vllm-url); this process "
                       "loads only the router: no backbone weights", kinds=("generative",), flags=_VLLM_FLAGS,
                       check=_check_vllm, options=lambda args: {
                           "vllm_urls": args.vllm_url, "vllm_python": args.vllm_python, "vllm_args": args.vllm_arg,
                           "vllm_state": args.vllm_state}),
}


def engine_options(args) -> dict:
    """The chosen engine's flags of ``args`` as ``create_app`` options."""
    return ENGINES[args.engine].options(args)


def check_engine(args, kind: str, model: str) -> None:
    """Refuse, in one line, an engine that does not serve ``kind``, another engine's flags, and what the chosen
    engine's own check refuses."""
    spec = ENGINES[args.engine]
    if kind not in spec.kinds:
        raise ValueError(f"{model} is a {kind}; --engine {args.engine} serves {' and '.join(spec.kinds)} models "
                         "(use the default --engine local)")
    for name, other in ENGINES.items():
        given = [flag for flag, _ in other.flags
                 if name != args.engine and getattr(args, _dest(flag)) not in (None, [])]
        if given:
            raise ValueError(f"{', '.join(given)} need{'s' if len(given) == 1 else ''} --engine {name}")
    if spec.check is not None:
        spec.check(args)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")
