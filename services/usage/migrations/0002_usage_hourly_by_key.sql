-- The dashboard and the series narrowed to one API key read that key's hours. The primary key serves a user's
-- account (account_id, hour, then key_id checked inside the index), but an admin's "any account, this key"
-- would otherwise scan every account's hours; this index answers both directly. key_id and hour never change
-- on an upsert, so the consumer's updates stay HOT and only a new (hour, key, model) row pays for it.
-- A plain CREATE INDEX (migrations run in a transaction) holds off aggregate writes while it builds: 1.5 s for
-- 2.3M hourly rows on a dev machine; the consumer's batches wait and then catch up.
CREATE INDEX usage_hourly_key_hour ON usage_hourly (key_id, hour);
