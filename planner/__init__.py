"""Index, query language, mixture spec, compiler and feedback algorithms (pure where possible)."""
