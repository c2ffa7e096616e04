"""Webhooks both ways (docs/webhooks.md).

Outgoing: subscribers get signed messages about runs, stages, gates and deployments from a
durable outbox fed by the engine's event log (``messages``, ``service``, ``policy``,
``signing``). Incoming: signed GitHub pushes and generic JSON requests start runs
(``incoming``; the HTTP side is ``bot.api.hooks``), and subscribers clear external gates by
calling back.
"""
