"""vLLM behind the routing front: the client that relays routed requests (``client.VLLMEngine``) and the
child process it may start (``child.VLLMChild``)."""

from scalable_lm.serving.vllm.child import (BASE_NAME, LORA_RANKS, MAX_FAILED_STARTS, PROJECT_ROOT,  # noqa: F401
                                           PYTHON_ENV, VLLMChild, child_argv, default_python, free_port, has_vllm,
                                           vllm_rank)
from scalable_lm.serving.vllm.client import VLLMEngine  # noqa: F401
