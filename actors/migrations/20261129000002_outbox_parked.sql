-- A row the broker refused (a nack) is set aside instead of being retried forever: it no
-- longer holds back the rest of the outbox. Later events of the same order still wait
-- behind it, so one order's events never leave out of order.
ALTER TABLE outbox ADD COLUMN parked_at TIMESTAMPTZ;
ALTER TABLE outbox ADD COLUMN parked_reason TEXT;
