-- Invoice numbers: INV-<year>-<sequence>, unique and increasing (gaps are allowed).
CREATE SEQUENCE invoice_number_seq;

CREATE TABLE invoices (
    id            UUID        PRIMARY KEY,
    number        TEXT        NOT NULL UNIQUE,
    -- Exactly one invoice per order, whatever the broker redelivers.
    order_id      UUID        NOT NULL UNIQUE,
    customer_id   UUID        NOT NULL,
    currency      TEXT        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount_cents  BIGINT      NOT NULL CHECK (amount_cents >= 0),
    status        TEXT        NOT NULL CHECK (status IN ('issued', 'paid', 'void')),
    issued_at     TIMESTAMPTZ NOT NULL,
    due_at        TIMESTAMPTZ NOT NULL,
    paid_at       TIMESTAMPTZ,
    voided_at     TIMESTAMPTZ
);
CREATE INDEX invoices_by_issued ON invoices (issued_at DESC, id DESC);

-- An order.canceled that arrived before its order.created: the later create must not
-- leave a payable invoice.
CREATE TABLE canceled_orders (
    order_id     UUID        PRIMARY KEY,
    canceled_at  TIMESTAMPTZ NOT NULL
);
