#!/usr/bin/env bash
# Write, claim, acknowledge and check over HTTP with curl alone (tests/test_shell_client.py
# runs it against a live dashboard). Needs MOPQ_URL, MOPQ_PRODUCER_TOKEN, MOPQ_CONSUMER_TOKEN.
set -euo pipefail
. "$(dirname "$0")/mopq.sh"
queue=${1:-shell}

written=$(mopq_write "$queue" '{"body": {"order": 42, "note": "from curl"}}')
id=$(mopq_field "$written" id)
echo "written $id"

again=$(mopq_put "$queue" order-7 '{"body": {"order": 7}}')
twice=$(mopq_put "$queue" order-7 '{"body": {"order": 7}}')
[ "$(mopq_field "$again" id)" = "$(mopq_field "$twice" id)" ] && echo "put twice, written once"

for _ in 1 2; do
  claimed=$(mopq_claim "$queue" '{"limit": 1, "wait": 5, "visibility_timeout": 30}')
  message=$(mopq_field "$claimed" id)
  lease=$(mopq_field "$claimed" lease)
  [ -n "$message" ] || { echo "nothing claimed"; exit 1; }
  mopq_ack "$queue" "$message" "$lease" >/dev/null
  mopq_ack "$queue" "$message" "$lease" >/dev/null && echo "acknowledged $message (twice)"
done

if mopq_ack "$queue" "$id" 0123456789abcdef >/dev/null; then
  echo "a stale lease was accepted"; exit 1
fi
echo "stale lease refused"
mopq_emit '{"name": "shell.ran", "value": 1}' >/dev/null && echo "emitted"
outcome=$(mopq_outcome "$queue" "$id" 5)
[ "$(mopq_field "$outcome" state)" = done ] && echo "outcome done"
