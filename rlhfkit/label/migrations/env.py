"""Alembic environment: runs on the connection handed over by `rlhfkit.label.store.upgrade`."""

from alembic import context

from rlhfkit.label.store import metadata

connection = context.config.attributes["connection"]
# render_as_batch: SQLite cannot ALTER most things; batch mode rebuilds the table instead.
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
