"""Persistence: SQLModel tables, Alembic migrations, and the store the engine uses."""
