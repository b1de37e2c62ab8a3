-- An event its writer publishes itself, right after its commit, without waiting for a relay
-- pass to select it: until lease_until no relay pass takes the row (so no replica publishes
-- it a second time meanwhile); after it, a pass does, as for any pending row (the writer
-- failed or crashed before its broker's confirm). A leased row still holds back its order's
-- later events, so one order's events still leave in the order they were written.
ALTER TABLE outbox ADD COLUMN lease_until TIMESTAMPTZ;
