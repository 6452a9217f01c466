"""The Arrow allocator choice, checked in fresh interpreters (the pool is process-global)."""

from __future__ import annotations

import os
import subprocess
import sys

CODE = "from nodes_import.pipeline import memory; print(memory.use_jemalloc())"


def _pool(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if env_value is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = env_value
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


def test_jemalloc_is_the_default_pool() -> None:
    assert _pool(None) == "jemalloc"


def test_an_operators_choice_of_pool_wins() -> None:
    assert _pool("system") == "system"
