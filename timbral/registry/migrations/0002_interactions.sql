-- Interactions ingested by POST /api/v1/interactions. event_id is the client's key:
-- a retried batch inserts nothing twice (INSERT ... ON CONFLICT DO NOTHING).

CREATE TABLE timbral_interactions (
    event_id    text        PRIMARY KEY,
    user_id     text        NOT NULL,
    item_id     text        NOT NULL,
    value       real        NOT NULL CHECK (value > 0 AND value < 'Infinity'),
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- A user's recent events (fold-in) and time windows of training reads.
CREATE INDEX timbral_interactions_user_time ON timbral_interactions (user_id, occurred_at);
CREATE INDEX timbral_interactions_time ON timbral_interactions (occurred_at);
