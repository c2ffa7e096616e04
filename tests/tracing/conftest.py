"""The API and webhook receivers on loopback, as the webhook tests use them."""

from __future__ import annotations

from tests.api.conftest import api_pg_database, pg_url, start_api  # noqa: F401  (fixtures, used by name)
from tests.webhooks.conftest import receivers  # noqa: F401
