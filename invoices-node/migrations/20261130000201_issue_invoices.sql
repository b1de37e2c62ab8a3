-- Issues the invoices of a batch of order.created events for distinct orders, in one call
-- that commits by itself: the node's steady-state batch without BEGIN and COMMIT round trips.
--
-- Why a function: the batch must take each order's advisory lock first and only then read
-- canceled_orders, with a snapshot taken once the locks are held, or a cancel committed by
-- another replica while this batch waited for its lock would be missed. One plain statement
-- has a single snapshot, taken before its first lock; in a PL/pgSQL function (read
-- committed) each statement takes a new one.
--
-- Parameters: $1-$7 are the outbox rows, as actors::outbox::OutboxRows binds them (each
-- new invoice's two possible events, issued and voided, and the lease); $8-$14 the
-- consumed events, one per order (event id, invoice id, invoice number, order, customer,
-- currency, amount); $15 the invoice status each outbox row is for; $16 issued_at; $17 due_at.
-- Returns, per consumed event: its order, whether the event was new, and the status of the
-- invoice it made (NULL when it made none).
CREATE FUNCTION issue_invoices(
    uuid[], uuid[], text[], text[], bytea[], text[], float8,
    uuid[], uuid[], text[], uuid[], uuid[], text[], int8[],
    text[], timestamptz, timestamptz
) RETURNS TABLE (order_id uuid, first boolean, status text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    locked uuid;
BEGIN
    -- In one order for every batch, so two batches never wait on each other in a cycle.
    FOR locked IN SELECT id FROM unnest($11) AS t(id) ORDER BY id LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended(locked::text, 0));
    END LOOP;
    RETURN QUERY
    WITH e AS (
        SELECT * FROM unnest($8, $9, $10, $11, $12, $13, $14)
                 WITH ORDINALITY
                 AS e(event_id, invoice_id, number, order_id, customer_id, currency, amount_cents, n)
    ),
    fresh AS (
        INSERT INTO inbox (event_id, event_type)
        SELECT event_id, 'order.created' FROM e
        ON CONFLICT DO NOTHING
        RETURNING event_id
    ),
    issued AS (
        INSERT INTO invoices (id, number, order_id, customer_id, currency, amount_cents, status, issued_at, due_at, voided_at)
        SELECT invoice_id, number, order_id, customer_id, currency, amount_cents, status, $16, $17,
               CASE WHEN status = 'void' THEN $16 END
          FROM (SELECT e.*, CASE WHEN EXISTS (SELECT 1 FROM canceled_orders c WHERE c.order_id = e.order_id)
                                 THEN 'void' ELSE 'issued' END AS status
                  FROM e JOIN fresh ON fresh.event_id = e.event_id) f
         ORDER BY n
        ON CONFLICT (order_id) DO NOTHING
        RETURNING order_id, status
    ),
    published AS (
        INSERT INTO outbox (event_id, aggregate_id, exchange, routing_key, payload, headers, lease_until)
        SELECT o.event_id, o.aggregate_id, o.exchange, o.routing_key, o.payload, o.headers::jsonb,
               now() + $7 * interval '1 second'
          FROM unnest($1, $2, $3, $4, $5, $6, $15)
               WITH ORDINALITY AS o(event_id, aggregate_id, exchange, routing_key, payload, headers, if_status, n)
          JOIN issued ON issued.order_id = o.aggregate_id AND issued.status = o.if_status
         ORDER BY o.n
    )
    SELECT e.order_id, fresh.event_id IS NOT NULL, issued.status
      FROM e LEFT JOIN fresh ON fresh.event_id = e.event_id
             LEFT JOIN issued ON issued.order_id = e.order_id;
END
$$;
