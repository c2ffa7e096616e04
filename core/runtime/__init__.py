"""The imperative shell around the pure engine: the service that applies commands through the
store's unit of work, the orchestrator's group commit and timers, the built-in runner, the
executor and job spawner that run jobs as real processes, and the pipeline catalog on disk.

Everything in ``core`` outside this package is pure (no I/O, no threads, no processes, no
clock); an import-linter contract in ``pyproject.toml`` keeps it that way."""
