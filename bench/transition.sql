-- transition-bench: one case transition, for `pgbench -n -f bench/transition.sql -D ncases=N`.
-- One statement per step, in one transaction: idempotency replay lookup, lock the case row,
-- update it, one timeline row, one outbox row (its statement-level NOTIFY trigger fires, as in
-- the service), one idempotency row. The service's PostgreSQL store sends the two reads as
-- one statement and the four writes as another (data-modifying CTEs). The bench seeds ops_case with N cases whose ids are
-- md5('opscase-bench-' || n)::uuid, n = 1..N (see bench/src/transition/pgbench.rs).
-- Unlike the service, pgbench computes nothing between statements (no JSON, no HTTP):
-- it is the database's own limit for this transaction shape.
\set n random(1, :ncases)
\set key random(1, 9223372036854775806)
BEGIN;
SELECT scope, key, fingerprint, status_code, response, headers, created_at, expires_at
  FROM idempotency WHERE scope = 'bench' AND key = 'k-' || :key;
SELECT c.id, c.tenant, c.title, c.severity, c.labels, c.automation, c.evidence, c.status,
       c.version, c.resolution, c.current_plan_id, c.created_by, c.created_at, c.updated_at,
       COALESCE(p.requested_by_key, p.requested_by) AS plan_requester
  FROM ops_case c LEFT JOIN plan_proposed p ON p.id = c.current_plan_id
  WHERE c.id = md5('opscase-bench-' || :n)::uuid FOR UPDATE OF c;
UPDATE ops_case
   SET status = CASE status WHEN 'NEW' THEN 'ANALYZING' ELSE 'NEW' END,
       version = version + 1, resolution = NULL, current_plan_id = NULL, updated_at = now()
 WHERE id = md5('opscase-bench-' || :n)::uuid;
INSERT INTO case_timeline (case_id, version, event, outcome, from_status, to_status, actor,
                           principal_id, principal_name, reason, correlation_id, request_id,
                           meta, created_at)
  SELECT id, version, 'start_analysis', 'accepted', 'NEW', 'ANALYZING', 'transition-bench',
         'bench-key', 'bench', NULL, NULL, gen_random_uuid()::text, '{}'::jsonb, now()
    FROM ops_case WHERE id = md5('opscase-bench-' || :n)::uuid
  RETURNING id;
INSERT INTO outbox (message_id, topic, key, payload, headers, created_at)
  VALUES (gen_random_uuid(), 'evt.case.transition.v1', md5('opscase-bench-' || :n)::uuid::text,
          jsonb_build_object('case_id', md5('opscase-bench-' || :n)::uuid, 'tenant', 'default',
                             'event', 'start_analysis', 'from', 'NEW', 'to', 'ANALYZING',
                             'version', 2, 'actor', 'transition-bench', 'reason', NULL,
                             'resolution', NULL, 'plan_id', NULL, 'occurred_at', now()),
          '{}'::jsonb, now());
INSERT INTO idempotency (scope, key, fingerprint, status_code, response, headers, created_at,
                         expires_at)
  VALUES ('bench', gen_random_uuid()::text, md5(:key::text), 200,
          jsonb_build_object('id', md5('opscase-bench-' || :n)::uuid, 'status', 'ANALYZING',
                             'version', 2, 'title', 'bench'),
          '{"etag": "\"2\""}'::jsonb, now(), now() + interval '24 hours')
  ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint,
    status_code = excluded.status_code, response = excluded.response,
    headers = excluded.headers, created_at = excluded.created_at,
    expires_at = excluded.expires_at
  WHERE idempotency.expires_at <= excluded.created_at;
COMMIT;
