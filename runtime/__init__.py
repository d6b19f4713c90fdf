"""Lowest layer of mixtera: plan format, sample readers, the torch dataset and feedback reporting.

Nothing here imports ``planner`` or ``mixtera_cli``.
"""
