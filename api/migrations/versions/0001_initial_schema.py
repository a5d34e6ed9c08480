"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-21 23:59:21.632780
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('project',
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('project', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_project_id'), ['id'], unique=True)
        batch_op.create_index(batch_op.f('ix_project_name'), ['name'], unique=True)

    op.create_table('apikey',
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('project_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('key_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('prefix', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('revoked', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('apikey', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_apikey_id'), ['id'], unique=True)
        batch_op.create_index(batch_op.f('ix_apikey_key_hash'), ['key_hash'], unique=True)
        batch_op.create_index(batch_op.f('ix_apikey_project_id'), ['project_id'], unique=False)

    op.create_table('file',
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('project_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('filename', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('purpose', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.Integer(), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('status_details', sa.Text(), nullable=True),
    sa.Column('storage_key', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('stats', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('file', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_file_id'), ['id'], unique=True)
        batch_op.create_index(batch_op.f('ix_file_project_id'), ['project_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_file_purpose'), ['purpose'], unique=False)

    op.create_table('job',
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('project_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('training_file', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('validation_file', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('method', sa.JSON(), nullable=False),
    sa.Column('hyperparameters', sa.JSON(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('suffix', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('metadata', sa.JSON(), nullable=True),
    sa.Column('integrations', sa.JSON(), nullable=True),
    sa.Column('error', sa.JSON(), nullable=True),
    sa.Column('fine_tuned_model', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('finished_at', sa.Integer(), nullable=True),
    sa.Column('result_files', sa.JSON(), nullable=False),
    sa.Column('trained_tokens', sa.Integer(), nullable=True),
    sa.Column('estimated_finish', sa.Integer(), nullable=True),
    sa.Column('claimed_by', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('lease_expires_at', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_fine_tuned_model'), ['fine_tuned_model'], unique=False)
        batch_op.create_index(batch_op.f('ix_job_id'), ['id'], unique=True)
        batch_op.create_index(batch_op.f('ix_job_project_id'), ['project_id'], unique=False)
        batch_op.create_index('ix_job_project_seq', ['project_id', 'seq'], unique=False)
        batch_op.create_index(batch_op.f('ix_job_status'), ['status'], unique=False)

    op.create_table('checkpoint',
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('job_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('project_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('fine_tuned_model_checkpoint', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('step_number', sa.Integer(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('storage_key', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], ),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('checkpoint', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_checkpoint_fine_tuned_model_checkpoint'), ['fine_tuned_model_checkpoint'], unique=True)
        batch_op.create_index(batch_op.f('ix_checkpoint_id'), ['id'], unique=True)
        batch_op.create_index(batch_op.f('ix_checkpoint_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_checkpoint_project_id'), ['project_id'], unique=False)

    op.create_table('jobevent',
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('job_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('level', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('type', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('data', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], ),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('jobevent', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_jobevent_id'), ['id'], unique=True)
        batch_op.create_index(batch_op.f('ix_jobevent_job_id'), ['job_id'], unique=False)

    op.create_table('checkpointpermission',
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('checkpoint', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('project_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['checkpoint'], ['checkpoint.fine_tuned_model_checkpoint'], ),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('checkpointpermission', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_checkpointpermission_checkpoint'), ['checkpoint'], unique=False)
        batch_op.create_index(batch_op.f('ix_checkpointpermission_id'), ['id'], unique=True)
        batch_op.create_index(batch_op.f('ix_checkpointpermission_project_id'), ['project_id'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('checkpointpermission', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_checkpointpermission_project_id'))
        batch_op.drop_index(batch_op.f('ix_checkpointpermission_id'))
        batch_op.drop_index(batch_op.f('ix_checkpointpermission_checkpoint'))

    op.drop_table('checkpointpermission')
    with op.batch_alter_table('jobevent', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobevent_job_id'))
        batch_op.drop_index(batch_op.f('ix_jobevent_id'))

    op.drop_table('jobevent')
    with op.batch_alter_table('checkpoint', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_checkpoint_project_id'))
        batch_op.drop_index(batch_op.f('ix_checkpoint_job_id'))
        batch_op.drop_index(batch_op.f('ix_checkpoint_id'))
        batch_op.drop_index(batch_op.f('ix_checkpoint_fine_tuned_model_checkpoint'))

    op.drop_table('checkpoint')
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_status'))
        batch_op.drop_index('ix_job_project_seq')
        batch_op.drop_index(batch_op.f('ix_job_project_id'))
        batch_op.drop_index(batch_op.f('ix_job_id'))
        batch_op.drop_index(batch_op.f('ix_job_fine_tuned_model'))

    op.drop_table('job')
    with op.batch_alter_table('file', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_file_purpose'))
        batch_op.drop_index(batch_op.f('ix_file_project_id'))
        batch_op.drop_index(batch_op.f('ix_file_id'))

    op.drop_table('file')
    with op.batch_alter_table('apikey', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_apikey_project_id'))
        batch_op.drop_index(batch_op.f('ix_apikey_key_hash'))
        batch_op.drop_index(batch_op.f('ix_apikey_id'))

    op.drop_table('apikey')
    with op.batch_alter_table('project', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_project_name'))
        batch_op.drop_index(batch_op.f('ix_project_id'))

    op.drop_table('project')

