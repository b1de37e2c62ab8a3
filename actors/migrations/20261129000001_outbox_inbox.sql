-- Shared by both nodes: the transactional outbox (publish side) and the inbox (consume side).

-- An event waiting for the broker. The state change and this row commit together; the
-- relay publishes rows with publisher confirms and stamps published_at after the ack.
CREATE TABLE outbox (
    id            BIGSERIAL PRIMARY KEY,
    event_id      UUID        NOT NULL UNIQUE,
    aggregate_id  UUID        NOT NULL,
    exchange      TEXT        NOT NULL,
    routing_key   TEXT        NOT NULL,
    payload       BYTEA       NOT NULL,
    -- traceparent, tracestate and x-request-id of the cause, carried into AMQP headers
    headers       JSONB       NOT NULL DEFAULT '{}'::jsonb,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at  TIMESTAMPTZ
);
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_pending_by_aggregate ON outbox (aggregate_id, id) WHERE published_at IS NULL;
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Every consumed event id, committed in the same transaction as its effect: a redelivery
-- finds its id here and changes nothing.
CREATE TABLE inbox (
    event_id     UUID        PRIMARY KEY,
    event_type   TEXT        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
