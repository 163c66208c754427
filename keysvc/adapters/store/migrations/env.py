"""Alembic environment: migrates the connection that keysvc.adapters.store.migrate hands over."""

from alembic import context
from sqlalchemy import text

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, render_as_batch=True)

with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        # Replicas starting together migrate one after another, not all at once.
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('keysvc.migrate'))"))
    context.run_migrations()
