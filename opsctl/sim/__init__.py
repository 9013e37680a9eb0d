"""A vLLM-compatible simulator that stands in for GPU pods in tests, demos and benchmarks.

OpenAI routes, SSE with usage chunks, vLLM metrics, a latency model and fault injection.
"""

from opsctl.sim.config import SimConfig
from opsctl.sim.runner import CRASH_EXIT_CODE, run_sim
from opsctl.sim.server import SIM_ENGINE, create_sim_app
from opsctl.sim.tokens import (
    count_completion_tokens,
    count_prompt_tokens,
    plan_completion,
)

__all__ = [
    "CRASH_EXIT_CODE",
    "SIM_ENGINE",
    "SimConfig",
    "count_completion_tokens",
    "count_prompt_tokens",
    "create_sim_app",
    "plan_completion",
    "run_sim",
]
