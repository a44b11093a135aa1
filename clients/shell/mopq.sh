# mopq over HTTP with curl alone: source this file, then call the functions.
#
#   export MOPQ_URL=http://127.0.0.1:8000
#   export MOPQ_PRODUCER_TOKEN=...   # one of MOPQ_PRODUCER_TOKENS on the dashboard
#   export MOPQ_CONSUMER_TOKEN=...   # one of MOPQ_CONSUMER_TOKENS
#   . clients/shell/mopq.sh
#   mopq_write orders '{"body": {"order": 42}}'          # -> {"created":true,"id":"..."}
#   mopq_put orders order-42 '{"body": {"order": 42}}'   # written once per key
#   mopq_claim orders '{"limit": 1, "wait": 20}'         # -> {"messages":[{"id":..,"lease":..}]}
#   mopq_ack orders "$id" "$lease"                        # acknowledge (repeatable)
#   mopq_ack_many orders '{"messages": [{"id": "..", "lease": ".."}, ...]}'  # several at once
#   mopq_fail orders "$id" "$lease" '{"reason": "out of stock"}'
#   mopq_extend orders "$id" "$lease" '{"extend_by": 60, "progress": 0.5}'
#   mopq_outcome orders "$id" 20                          # state and result, waiting up to 20 s
#   mopq_emit '{"name": "order.paid", "value": 12.5, "tags": {"region": "eu"}}'
#   mopq_field "$answer" id                               # a top-level string field of an answer
#
# Every function prints the JSON answer and returns 0 on 2xx, 1 otherwise (the answer
# then says why: {"error": ..., "parameter": ...}). The API is described at $MOPQ_URL/openapi.json.

_mopq() {  # method path token [json]
  local method=$1 path=$2 token=$3 body=${4:-}
  local answer status
  if [ -n "$body" ]; then
    answer=$(curl -sS -X "$method" -H "Authorization: Bearer $token" \
      -H "Content-Type: application/json" --data-binary "$body" \
      -w '\n%{http_code}' "$MOPQ_URL$path") || return 1
  else
    answer=$(curl -sS -X "$method" -H "Authorization: Bearer $token" \
      -w '\n%{http_code}' "$MOPQ_URL$path") || return 1
  fi
  status=${answer##*$'\n'}
  printf '%s\n' "${answer%$'\n'*}"
  [ "${status:0:1}" = 2 ]
}

_mopq_path() {  # percent-encode one path segment
  local text=$1 out= c i
  for ((i = 0; i < ${#text}; i++)); do
    c=${text:i:1}
    case $c in [a-zA-Z0-9.~_-]) out+=$c ;; *) out+=$(printf '%%%02X' "'$c") ;; esac
  done
  printf '%s' "$out"
}

mopq_write()   { _mopq POST "/api/queues/$(_mopq_path "$1")/messages" "$MOPQ_PRODUCER_TOKEN" "$2"; }
mopq_put()     { _mopq PUT "/api/queues/$(_mopq_path "$1")/messages/$(_mopq_path "$2")" "$MOPQ_PRODUCER_TOKEN" "$3"; }
mopq_claim()   { _mopq POST "/api/queues/$(_mopq_path "$1")/claims" "$MOPQ_CONSUMER_TOKEN" "${2:-"{}"}"; }
mopq_ack()     { _mopq DELETE "/api/queues/$(_mopq_path "$1")/messages/$2?lease=$3" "$MOPQ_CONSUMER_TOKEN"; }
mopq_ack_many() { _mopq POST "/api/queues/$(_mopq_path "$1")/acknowledgements" "$MOPQ_CONSUMER_TOKEN" "$2"; }
mopq_fail()    { _mopq POST "/api/queues/$(_mopq_path "$1")/messages/$2/failures?lease=$3" "$MOPQ_CONSUMER_TOKEN" "${4:-"{}"}"; }
mopq_extend()  { _mopq POST "/api/queues/$(_mopq_path "$1")/messages/$2/lease?lease=$3" "$MOPQ_CONSUMER_TOKEN" "${4:-"{}"}"; }
mopq_outcome() { _mopq GET "/api/queues/$(_mopq_path "$1")/messages/$2?wait=${3:-0}" "$MOPQ_PRODUCER_TOKEN"; }
mopq_emit()    { _mopq POST "/api/events" "$MOPQ_PRODUCER_TOKEN" "$1"; }

mopq_field() {  # answer name: the last "name":"value" string in the answer (answers sort keys,
               # so a claim's "id" and "lease" come after its body)
  printf '%s' "$1" | sed -n "s/.*\"$2\":\"\([^\"]*\)\".*/\1/p" | head -n 1
}
