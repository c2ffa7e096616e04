"""The chat face of Shipyard, independent of Slack: the ``/deploy`` language (``parse``), the
verbs and what they answer (``verbs``), and the Block Kit they answer with (``blocks``). Slack
(``bot.slack``) and the terminal console render the same replies."""

from __future__ import annotations

# each family registers its verbs and buttons on import; ``/deploy help`` lists the verbs in the
# order they were registered (``verbs`` itself first: help, whoami), so keep this order
# isort: off
from bot.chat import runs, gates, rollouts, schedules, confirm, artifacts, environments, locks  # noqa: F401
from bot.chat import runners, dora, web_view  # noqa: F401
# isort: on
