"""The `mixtera` command line: parses arguments, calls planner/ and runtime/, renders with rich."""
