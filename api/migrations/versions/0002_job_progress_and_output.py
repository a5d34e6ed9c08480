"""job progress and output

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 00:13:05.147451
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:

    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('progress', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('output_key', sqlmodel.sql.sqltypes.AutoString(), nullable=True))




def downgrade() -> None:

    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('output_key')
        batch_op.drop_column('progress')


