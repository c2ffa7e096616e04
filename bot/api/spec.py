"""The one ``Api`` every endpoint module registers its operations on."""

from __future__ import annotations

from bot.api.routing import Api

API = Api(
    title="Shipyard",
    version="1",
    description=(
        "Deployment pipelines: versioned pipeline definitions, runs with stages, jobs and gates, "
        "environments and their deployment history. Authenticate with `Authorization: Bearer <token>`; "
        "errors are RFC 9457 problem documents; POSTs accept `Idempotency-Key`."
    ),
)
