"""Environment health as the chat says it (``/deploy envs``, App Home, the deploy question, the
approval card, the post in the channel when it changes): one emoji per state and the words.
Pure: ``bot.chat.cards`` reads the health (only environments that watch health checks,
``health:``, show one); ``storage.analyses`` keeps it."""

from __future__ import annotations

from core.analysis import EnvironmentHealth, Health, HealthChange

EMOJI = {
    Health.HEALTHY: ":large_green_circle:",
    Health.DEGRADED: ":large_yellow_circle:",
    Health.UNHEALTHY: ":red_circle:",
    Health.UNKNOWN: ":white_circle:",
}


def said(health: EnvironmentHealth) -> str:
    """``production is healthy``, ``production is unhealthy: smoke: status 503 …`` (the reason
    whenever it is not healthy)."""
    words = f"{health.environment} is {health.state}"
    if health.state is not Health.HEALTHY and health.reason:
        words += f": {health.reason}"
    return words


def line(health: EnvironmentHealth) -> str:
    """``said`` with the state's emoji in front."""
    return f"{EMOJI[health.state]} {said(health)}"


def changed(change: HealthChange) -> str:
    """The post in the environment's channel: ``:large_green_circle: *production* is healthy
    (was degraded): …``."""
    words = f"{EMOJI[change.to_state]} *{change.environment}* is {change.to_state} (was {change.from_state})"
    return words + (f": {change.reason}" if change.reason else "")
