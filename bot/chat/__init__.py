"""The chat face of Shipyard, independent of Slack: the ``/deploy`` language (``parse``), the
verbs and what they answer (``verbs``), and the Block Kit they answer with (``blocks``). Slack
(``bot.slack``) and the terminal console render the same replies."""

from __future__ import annotations

from bot.chat import artifacts, environments, locks  # noqa: F401  (register their verbs)
