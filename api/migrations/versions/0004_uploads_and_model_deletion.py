"""uploads (POST /v1/uploads) and model deletion

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 00:00:00.000000
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('upload',
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('project_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('filename', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('purpose', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('mime_type', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.Integer(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('received_bytes', sa.BigInteger(), nullable=False),
    sa.Column('file_expires_after', sa.Integer(), nullable=True),
    sa.Column('file_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('upload', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_upload_id'), ['id'], unique=True)
        batch_op.create_index(batch_op.f('ix_upload_project_id'), ['project_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_upload_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_upload_status'), ['status'], unique=False)

    op.create_table('uploadpart',
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('upload_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('storage_key', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.ForeignKeyConstraint(['upload_id'], ['upload.id'], ),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('uploadpart', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_uploadpart_id'), ['id'], unique=True)
        batch_op.create_index(batch_op.f('ix_uploadpart_upload_id'), ['upload_id'], unique=False)

    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('model_deleted_at', sa.Integer(), nullable=True))


def downgrade() -> None:

    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('model_deleted_at')

    with op.batch_alter_table('uploadpart', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_uploadpart_upload_id'))
        batch_op.drop_index(batch_op.f('ix_uploadpart_id'))
    op.drop_table('uploadpart')

    with op.batch_alter_table('upload', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_upload_status'))
        batch_op.drop_index(batch_op.f('ix_upload_expires_at'))
        batch_op.drop_index(batch_op.f('ix_upload_project_id'))
        batch_op.drop_index(batch_op.f('ix_upload_id'))
    op.drop_table('upload')
