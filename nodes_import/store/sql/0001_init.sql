-- 0001: the seed's three tables (LLD section 4) plus what tracking and resumption need.

CREATE TABLE IF NOT EXISTS job_status (
    id              UUID PRIMARY KEY,
    group_id        VARCHAR(255) NOT NULL,
    domain_id       UUID NOT NULL,
    status          VARCHAR(50) NOT NULL
                    CHECK (status IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED')),
    total_nodes     INT DEFAULT 0,
    success_count   INT DEFAULT 0,
    failed_count    INT DEFAULT 0,
    created_at      TIMESTAMPTZ DEFAULT NOW(),
    updated_at      TIMESTAMPTZ DEFAULT NOW(),
    -- additions
    node_type       VARCHAR(64) NOT NULL DEFAULT 'USER',
    source          TEXT NOT NULL DEFAULT 'reference-ids',
    error           TEXT,
    started_at      TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ,
    attempts        INT NOT NULL DEFAULT 0,
    rows_committed  BIGINT NOT NULL DEFAULT 0,
    inserted_count  INT NOT NULL DEFAULT 0,
    updated_count   INT NOT NULL DEFAULT 0,
    unchanged_count INT NOT NULL DEFAULT 0,
    -- resumption: one checkpoint per key partition (the highest data row committed there)
    checkpoint      BIGINT[],
    source_bytes    BIGINT,
    bytes_read      BIGINT NOT NULL DEFAULT 0,
    -- who runs it (the daemon's lease)
    claimed_by      TEXT,
    heartbeat_at    TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS idx_job_status_group_domain ON job_status (group_id, domain_id);
CREATE INDEX IF NOT EXISTS idx_job_status_status ON job_status (status, created_at);

CREATE TABLE IF NOT EXISTS nodes (
    id           UUID PRIMARY KEY,
    reference_id VARCHAR(255) NOT NULL,
    group_id     VARCHAR(255) NOT NULL,
    type         VARCHAR(64) NOT NULL,
    domain_id    UUID NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE UNIQUE INDEX IF NOT EXISTS idx_nodes_reference_group ON nodes (reference_id, group_id);
CREATE INDEX IF NOT EXISTS idx_nodes_domain ON nodes (domain_id);

CREATE TABLE IF NOT EXISTS node_metadata (
    node_id  UUID PRIMARY KEY REFERENCES nodes (id) ON DELETE CASCADE,
    metadata JSONB NOT NULL
);

CREATE TABLE IF NOT EXISTS job_failures (
    job_id       UUID NOT NULL REFERENCES job_status (id) ON DELETE CASCADE,
    row_number   BIGINT NOT NULL,
    reference_id TEXT,
    reason       TEXT NOT NULL,
    line         TEXT
);
CREATE INDEX IF NOT EXISTS idx_job_failures_job ON job_failures (job_id, row_number);
