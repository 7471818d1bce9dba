"""Former name of ``scalable_lm.serving.vllm`` (kept for one release): the same names, from there."""

from scalable_lm.serving.vllm import (BASE_NAME, LORA_RANKS, MAX_FAILED_STARTS, PROJECT_ROOT,  # noqa: F401
                                      PYTHON_ENV, VLLMChild, VLLMEngine, child_argv, default_python, free_port,
                                      has_vllm, vllm_rank)
