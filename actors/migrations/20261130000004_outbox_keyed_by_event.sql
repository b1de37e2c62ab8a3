-- The outbox's key is its event id. Every statement finds outbox rows by event id (the
-- settle and the park), by order (the oldest pending row of an order) or in write order
-- among the pending rows (outbox_pending); none by id alone. So the index on id was one
-- more index entry per event written, and one more index for each vacuum of a table whose
-- rows live for a fraction of a second, which served no query. `id` stays: it is the write
-- order.
ALTER TABLE outbox DROP CONSTRAINT outbox_pkey,
                   DROP CONSTRAINT outbox_event_id_key,
                   ADD CONSTRAINT outbox_pkey PRIMARY KEY (event_id);
