"""Pure decisions: a function of (spec, observed state, now) returning a decision.

No clock reads, no sockets, no sleeps; the caller persists the returned state.
The import-linter contract in pyproject.toml enforces this.
"""
