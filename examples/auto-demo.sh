#!/usr/bin/env bash
# automation: auto — one case from creation to CLOSED with no calls after the opening ones.
# Against a running `opscase serve --config examples/demo.toml`:
#   OPSCASE_KEY=osk_... examples/auto-demo.sh    (OPSCASE_URL defaults to http://127.0.0.1:8080)
#
# The case carries `template: script.restart` and `service: checkout`: entering PLANNING sends
# cmd.plan.generate, the plan (restart-service checkout, risk 0.3) is auto-approved by the
# default policy, the executor runs the allowlisted examples/scripts/restart-service, and the
# verifier checks checkout's error rate in metric_1m.
set -euo pipefail

: "${OPSCASE_KEY:?set OPSCASE_KEY to an operator or admin key (opscase prints one on first start)}"
B="${OPSCASE_URL:-http://127.0.0.1:8080}"
H="Authorization: Bearer $OPSCASE_KEY"
command -v jq >/dev/null || { echo "auto-demo.sh needs jq" >&2; exit 1; }

points=$(for ago in 1 2 3 4 5; do
  bucket=$(date -u -d "-$ago min" +%Y-%m-%dT%H:%M:00Z)
  echo "{\"tenant\":\"t-001\",\"resource\":\"checkout\",\"metric\":\"err_rate\",\"bucket\":\"$bucket\",\"avg\":0.002}"
done | jq -s -c '{points: .}')
curl -sf -H "$H" -X POST "$B/v1/metrics/1m" -d "$points" >/dev/null

CASE=$(curl -sf -H "$H" -X POST "$B/v1/cases" -d '{
  "title": "checkout error rate above 1%", "tenant": "t-001", "severity": "high",
  "automation": "auto", "labels": {"template": "script.restart", "service": "checkout"}
}' | jq -r .id)
echo "case $CASE (automation: auto)"

# The opening call: start the analysis. The analyst's findings end it; nothing else is called.
curl -sf -H "$H" -X PATCH "$B/v1/cases/$CASE/transition" -H "Idempotency-Key: $CASE-start" \
  -d '{"event":"start_analysis","actor":"oncall@svc"}' | jq -r '"\(.status) (version \(.version))"'

# Watch it go.
for _ in $(seq 1 100); do
  status=$(curl -sf -H "$H" "$B/v1/cases/$CASE" | jq -r .status)
  case "$status" in CLOSED|PARKED) break ;; esac
  sleep 0.2
done
echo "case $CASE is $status; its timeline:"
curl -sf -H "$H" "$B/v1/cases/$CASE/timeline" |
  jq -r '.items[] | [.id, .event, .outcome, (.from_status // "-") + " -> " + (.to_status // "-"), .actor, (.reason // "")] | @tsv' |
  column -t -s $'\t'
[ "$status" = CLOSED ]
