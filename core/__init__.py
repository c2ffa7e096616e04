"""Shipyard's engine: pipeline definitions, run state machines and orchestration.

Nothing in this package talks to Slack or writes SQL; adapters in ``bot`` and ``storage`` do that.
"""
