"""Delivery periods keyed by time first, then campaign.

A live stream's transactions add periods of the same recent hours for all of their
campaigns. Keyed by campaign first, each of those went into a leaf of the key's index of its
own, and every transaction rewrote a leaf per campaign; keyed by time first, they go in
together at the index's end. Lookups name the whole key, and the streamed ingest reads the
periods of a time range, so both still find their rows through it.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _rekey("period_start", "governance_context", "period_end")


def downgrade() -> None:
    _rekey("governance_context", "period_start", "period_end")


def _rekey(*key: str) -> None:
    """Rebuild the table with `key` as its primary key: the columns it stores, in their order
    (ingest writes whole rows by position), and its rows. SQLite cannot change a table's
    primary key in place."""
    bind = op.get_bind()
    stored = sa.Table("delivery_periods", sa.MetaData(), autoload_with=bind)
    postgresql = bind.dialect.name == "postgresql"
    # PostgreSQL names the key's index after the key, and the old table's holds that name.
    name = "pk_delivery_periods_rekeyed" if postgresql else "pk_delivery_periods"
    op.create_table(
        "delivery_periods_rekeyed",
        *(sa.Column(c.name, c.type, nullable=c.nullable) for c in stored.columns),
        sa.PrimaryKeyConstraint(*key, name=name),
    )
    op.execute("INSERT INTO delivery_periods_rekeyed SELECT * FROM delivery_periods")
    op.drop_table("delivery_periods")
    op.rename_table("delivery_periods_rekeyed", "delivery_periods")
    if postgresql:
        op.execute(f"ALTER TABLE delivery_periods RENAME CONSTRAINT {name} TO pk_delivery_periods")
