"""Assignment lease: index open assignments by issue time, so expired ones are found cheaply.

Assignments now expire (status `expired`, which fits the existing String(8) column) after the
project's `assignment_ttl_minutes`; the expiry sweep runs before every task hand-out and looks up
`status = 'open' AND issued_at < cutoff`, which this index answers without touching the
answered rows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-03-01
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_assignment_status_issued", "assignment", ["status", "issued_at"])


def downgrade() -> None:
    op.drop_index("ix_assignment_status_issued", table_name="assignment")
