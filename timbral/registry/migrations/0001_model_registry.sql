-- The model registry: one row per registered model version, the sha256 of each of its
-- files, the files themselves (chunked bytea) unless they live in object storage, and
-- the promotion history that `rollback` walks back.

CREATE TABLE timbral_model_versions (
    version       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_version text        NOT NULL,  -- the artifact's own id (metadata.json)
    status        text        NOT NULL DEFAULT 'staged'
                  CHECK (status IN ('staged', 'production', 'archived')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    promoted_at   timestamptz,
    params        jsonb       NOT NULL DEFAULT '{}',
    metrics       jsonb       NOT NULL DEFAULT '{}',
    data_summary  jsonb       NOT NULL DEFAULT '{}',
    lineage       jsonb       NOT NULL DEFAULT '{}',
    store         text        NOT NULL  -- 'database', or the object-store URL holding v<version>/
);

-- At most one production model, whatever the code does.
CREATE UNIQUE INDEX timbral_model_versions_one_production
    ON timbral_model_versions ((true)) WHERE status = 'production';

CREATE TABLE timbral_model_files (
    version bigint NOT NULL REFERENCES timbral_model_versions ON DELETE CASCADE,
    name    text   NOT NULL CHECK (name ~ '^[A-Za-z0-9_.-]+$' AND name NOT IN ('.', '..')),
    sha256  text   NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size    bigint NOT NULL CHECK (size >= 0),
    PRIMARY KEY (version, name)
);

CREATE TABLE timbral_model_chunks (
    version bigint  NOT NULL,
    name    text    NOT NULL,
    seq     integer NOT NULL CHECK (seq >= 0),
    data    bytea   NOT NULL,
    PRIMARY KEY (version, name, seq),
    FOREIGN KEY (version, name) REFERENCES timbral_model_files ON DELETE CASCADE
);
-- Factor arrays barely compress: store chunks out of line without spending CPU on pglz.
ALTER TABLE timbral_model_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE timbral_promotions (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version        bigint      NOT NULL REFERENCES timbral_model_versions ON DELETE CASCADE,
    promoted_at    timestamptz NOT NULL DEFAULT now(),
    rolled_back_at timestamptz
);
CREATE INDEX timbral_promotions_live ON timbral_promotions (id) WHERE rolled_back_at IS NULL;
