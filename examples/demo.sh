#!/usr/bin/env bash
# The source design's first end-to-end demo (chapter 9 of the seed), against a running
#   opscase serve --config examples/demo.toml
# The six curl steps are as written there, with the host prefix ($B), the API key header
# ($H) and the stray quote in step 2's JSON fixed. Before them, the script ingests healthy
# 1-minute metrics for what the k8s.rollout.canary plan verifies (p95_ms and err_rate of
# checkout); after them it prints the case and its timeline.
#
#   OPSCASE_KEY=osk_... examples/demo.sh        (OPSCASE_URL defaults to http://127.0.0.1:8080)
set -euo pipefail

: "${OPSCASE_KEY:?set OPSCASE_KEY to an operator or admin key (opscase prints one on first start)}"
B="${OPSCASE_URL:-http://127.0.0.1:8080}"
H="Authorization: Bearer $OPSCASE_KEY"
command -v jq >/dev/null || { echo "demo.sh needs jq" >&2; exit 1; }

# 0) Healthy metrics for the last five minutes: p95 180 ms (< 300), 0.1% errors (< 1%).
points=$(for ago in 1 2 3 4 5; do
  bucket=$(date -u -d "-$ago min" +%Y-%m-%dT%H:%M:00Z)
  echo "{\"tenant\":\"t-001\",\"resource\":\"checkout\",\"metric\":\"p95_ms\",\"bucket\":\"$bucket\",\"p95\":180}"
  echo "{\"tenant\":\"t-001\",\"resource\":\"checkout\",\"metric\":\"err_rate\",\"bucket\":\"$bucket\",\"avg\":0.001}"
done | jq -s -c '{points: .}')
curl -sf -H "$H" -X POST "$B/v1/metrics/1m" -d "$points" >/dev/null

# 1) 创建 Case
CASE=$(curl -sX POST "$B/case/create" -H "$H" -d '{"title":"p95 spike","tenant":"t-001"}'|jq -r .data)
echo "case $CASE"

# 2) 开始分析
curl -X PATCH "$B/case/$CASE/transition" -H "$H" \
-H 'Idempotency-Key:a1' \
-d '{"event":"start_analysis","actor":"analyst@svc"}'
echo

# 3) 生成计划（模板/LLM）
curl -X POST "$B/plan/generate" -H "$H" -d '{"case_id":"'$CASE'","template":"k8s.rollout.canary"}'
# Planner 发 evt.plan.proposed.v1 → Orchestrator 判定 plan_ready → WAIT_GATE
echo

# 4) 自动审批
curl -X POST "$B/gate/eval" -H "$H" -d '{"case_id":"'$CASE'"}'
# Gatekeeper 发 evt.plan.approved.v1 → EXECUTING
echo

# 5) 执行适配器（示例: script）
curl -X POST "$B/adapter/exec" -H "$H" -d '{"case_id":"'$CASE'","adapter":"script","script":"echo ok"}'
# Executor 发 evt.exec.done.v1 → VERIFYING
echo

# 6) 验证通过 → CLOSED
curl -X POST "$B/verify/run" -H "$H" -d '{"case_id":"'$CASE'"}'
echo

status=$(curl -sf -H "$H" "$B/case/$CASE" | jq -r .status)
echo
echo "case $CASE is $status; its timeline:"
curl -sf -H "$H" "$B/case/$CASE/timeline" |
  jq -r '.items[] | [.id, .event, .outcome, (.from_status // "-") + " -> " + (.to_status // "-"), .actor, (.reason // "")] | @tsv' |
  column -t -s $'\t'
[ "$status" = CLOSED ]
