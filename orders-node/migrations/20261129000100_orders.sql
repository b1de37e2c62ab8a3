CREATE TABLE orders (
    id           UUID        PRIMARY KEY,
    customer_id  UUID        NOT NULL,
    currency     TEXT        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    items        JSONB       NOT NULL,
    total_cents  BIGINT      NOT NULL CHECK (total_cents >= 0),
    status       TEXT        NOT NULL CHECK (status IN ('pending', 'invoiced', 'paid', 'canceled')),
    invoice_id   UUID,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);
-- Keyset pagination, newest first, with and without the customer filter.
CREATE INDEX orders_by_created ON orders (created_at DESC, id DESC);
CREATE INDEX orders_by_customer ON orders (customer_id, created_at DESC, id DESC);

-- Idempotency-Key → the original request (normalised) and the response it got. Written in
-- the same transaction as the order, so a key never points at an order that does not exist.
CREATE TABLE idempotency_keys (
    key         TEXT        PRIMARY KEY,
    request     JSONB       NOT NULL,
    status      SMALLINT    NOT NULL,
    response    JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
