-- certline's PostgreSQL schema, version 2: the instances sharing the database, so that each
-- can take its share of what the deployment may spend (the Sectigo request budget). Applied
-- by src/store/postgres/migrations.rs like version 1.
--
-- Each instance upserts its row every [store.postgres] heartbeat_ms (`last_seen` from the
-- database's clock, never a host's) and deletes it on a clean shutdown; an instance counts
-- as live while its row was seen within three heartbeats (src/store/postgres/instances.rs).
CREATE TABLE instances (
    -- [store.postgres] instance: unique per running instance.
    name        text PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);
