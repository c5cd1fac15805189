"""Measures of the whole system: eval, the create self-check, the INT8 gate, bench, the live
bench and capacity. They use both the models and the server; only the CLI imports them, and
serving code never does (an import-linter contract in pyproject.toml keeps it so)."""
