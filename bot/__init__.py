"""Everything that faces people or other systems: the CLI, the HTTP service, Slack."""
