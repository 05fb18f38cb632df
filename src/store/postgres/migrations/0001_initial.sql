-- certline's PostgreSQL schema, version 1. Applied by src/store/postgres/migrations.rs inside
-- one transaction, under an advisory lock, in the schema named by [store.postgres] schema
-- (the connection's search_path). Times are Unix seconds (UTC) as bigint: exactly the
-- UnixTime the store's interface carries, for any value a caller passes. Names are compared
-- byte-wise (COLLATE "C"), the order the sled store lists them in.

-- One row per API key, by the SHA-256 of the key (the key itself is never stored).
CREATE TABLE keys (
    hash          bytea PRIMARY KEY CHECK (length(hash) = 32),
    created_at    bigint NOT NULL,
    creator_ip    inet   NOT NULL,
    -- The address as the claim gave it, and lower-cased (ASCII) for the caps' comparison.
    email         text,
    email_norm    text COLLATE "C",
    claimed_at    bigint,
    confirmed_at  bigint,
    revoked_at    bigint,
    -- How many key_domains rows the key has; changed in the same transaction as they are,
    -- under the key row's lock.
    domain_count  bigint NOT NULL DEFAULT 0 CHECK (domain_count >= 0)
);
CREATE INDEX keys_email_norm ON keys (email_norm) WHERE email_norm IS NOT NULL;

-- The domains registered under each key (`add`/`remove`).
CREATE TABLE key_domains (
    key_hash  bytea NOT NULL REFERENCES keys (hash),
    domain    text COLLATE "C" NOT NULL,
    added_at  bigint NOT NULL,
    PRIMARY KEY (key_hash, domain)
);
-- "Who holds this domain?" (the inventory, the ACME worker's shared-account check).
CREATE INDEX key_domains_holders ON key_domains (domain, key_hash);

-- Every domain any key ever registered, with when it was first added.
CREATE TABLE domains (
    name            text COLLATE "C" PRIMARY KEY,
    first_added_at  bigint NOT NULL
);

-- The audit trail. `seq` is handed out at insert; a row is visible once its change commits.
CREATE TABLE audit (
    seq     bigserial PRIMARY KEY,
    at      bigint NOT NULL,
    ip      inet   NOT NULL,
    key_id  text   NOT NULL,
    event   text   NOT NULL,
    -- The whole event kind as serde writes it (AuditKind), for reading back.
    kind    jsonb  NOT NULL
);

-- Addresses that claimed at least one key. The row is also what claims of one address lock,
-- so that the unconfirmed-keys cap holds across concurrent callers and instances.
CREATE TABLE claim_emails (
    email_norm        text COLLATE "C" PRIMARY KEY,
    first_claimed_at  bigint NOT NULL
);

-- New addresses claimed from one source address on one UTC day (the per-day cap).
CREATE TABLE claim_new_emails (
    day    bigint  NOT NULL,
    ip     inet    NOT NULL,
    count  integer NOT NULL CHECK (count >= 0),
    PRIMARY KEY (day, ip)
);

-- Single-use confirm/revoke links, by the SHA-256 of the token.
CREATE TABLE link_tokens (
    token_hash  bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    key_hash    bytea NOT NULL CHECK (length(key_hash) = 32),
    action      text  NOT NULL CHECK (action IN ('confirm', 'revoke')),
    created_at  bigint NOT NULL,
    expires_at  bigint NOT NULL,
    used_at     bigint
);

-- Claim confirmation e-mails still to be sent.
CREATE TABLE mail_outbox (
    id           bigserial PRIMARY KEY,
    due          bigint NOT NULL,
    key_hash     bytea  NOT NULL,
    email        text   NOT NULL,
    ip           inet   NOT NULL,
    claimed_at   bigint NOT NULL,
    attempts     integer NOT NULL DEFAULT 0,
    -- The instance sending it now, and until when (see bridge).
    lease_owner  text,
    lease_until  timestamptz
);
CREATE INDEX mail_outbox_due ON mail_outbox (due, id);

-- The Sectigo bridge's state per host name. `record` is the versioned BridgeRecord as serde
-- writes it; the columns beside it are copies the queries need (kept equal by the store).
CREATE TABLE bridge (
    domain                  text COLLATE "C" PRIMARY KEY,
    phase                   text NOT NULL,
    -- record.next_attempt_at: when the worker should look at it next (NULL: not until
    -- requeued). This column is the bridge's outbox.
    due                     bigint,
    waiting_on_credentials  boolean NOT NULL DEFAULT false,
    dcv_domain              text COLLATE "C",
    record                  jsonb NOT NULL,
    -- The instance working on the domain, and until when no other instance may take it.
    lease_owner             text,
    lease_until             timestamptz
);
CREATE INDEX bridge_due ON bridge (due, domain) WHERE due IS NOT NULL;
CREATE INDEX bridge_dcv_domain ON bridge (dcv_domain) WHERE dcv_domain IS NOT NULL;
CREATE INDEX bridge_waiting_on_credentials ON bridge (domain) WHERE waiting_on_credentials;
CREATE INDEX bridge_phase ON bridge (phase);

-- The ACME worker's state per key: the versioned AcmeKeyRecord, its due time (the outbox)
-- and its lease, as for the bridge.
CREATE TABLE acme_keys (
    key_hash     bytea PRIMARY KEY CHECK (length(key_hash) = 32),
    due          bigint,
    record       jsonb NOT NULL,
    lease_owner  text,
    lease_until  timestamptz
);
CREATE INDEX acme_keys_due ON acme_keys (due, key_hash) WHERE due IS NOT NULL;

-- Small named values (the readiness probe's last write).
CREATE TABLE meta (
    name   text PRIMARY KEY,
    value  bigint NOT NULL
);
