"""rollout records

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 23:40:00.000000
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('rollout',
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('job_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('split', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('line', sa.Integer(), nullable=True),
    sa.Column('group_index', sa.Integer(), nullable=False),
    sa.Column('sample_index', sa.Integer(), nullable=False),
    sa.Column('completion', sa.Text(), nullable=False),
    sa.Column('reward', sa.Float(), nullable=True),
    sa.Column('sub_rewards', sa.JSON(), nullable=False),
    sa.Column('advantage', sa.Float(), nullable=True),
    sa.Column('errors', sa.JSON(), nullable=False),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('truncated', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], ),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('rollout', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollout_id'), ['id'], unique=True)
        batch_op.create_index(batch_op.f('ix_rollout_job_id'), ['job_id'], unique=False)
        batch_op.create_index('ix_rollout_job_step_split', ['job_id', 'step', 'split'], unique=False)


def downgrade() -> None:

    with op.batch_alter_table('rollout', schema=None) as batch_op:
        batch_op.drop_index('ix_rollout_job_step_split')
        batch_op.drop_index(batch_op.f('ix_rollout_job_id'))
        batch_op.drop_index(batch_op.f('ix_rollout_id'))

    op.drop_table('rollout')
