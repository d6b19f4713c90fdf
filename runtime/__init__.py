"""Lowest layer of mixtera: plan format, sample readers, the torch dataset and feedback reporting.

Nothing here imports ``planner`` or ``mixtera_cli``.
"""

from typing import Any

_LAZY = {
    "PlanDataset": "runtime.dataset",
    "PlanLoader": "runtime.dataset",
    "FeedbackReporter": "runtime.feedback",
}


def __getattr__(name: str) -> Any:
    """Import torch-dependent names on first use, so that `import runtime` stays light."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
