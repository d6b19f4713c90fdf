"""The `mixtera` command line (installed as `mixtera.cli`): parses arguments, calls the planner and the
runtime, renders with rich."""
