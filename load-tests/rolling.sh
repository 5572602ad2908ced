#!/usr/bin/env bash
# Rolling restart of three gateway nodes behind HAProxy, then scaling 3 → 2 → 3, under steady
# open-loop load; counts failed requests and refused connections. Everything on loopback.
# HAProxy health-checks each node's /readyz on its admin listener, as a Kubernetes Service's
# readiness probe would, and retries a request whose node went away before answering (what a
# Service's load balancer cannot do, which is why the manifests add a preStop sleep). Two agents
# (two replicas of one cluster) reach the nodes through the same HAProxy, as agents would reach a
# Service. Each node leaves by SIGTERM (its drain: agents move first, streams finish) and comes
# back on the same ports. Twenty WebSocket sessions (ws_sessions.py, echoing every 200 ms through
# the same path to an echo upstream) stay open throughout: a node leaving cuts the sessions it
# carries at its drain timeout, and each must reconnect by itself. Writes load-tests/ROLLING.md.
#
#   load-tests/rolling.sh                 # RATE=2000 req/s, about half of capacity here
#   RATE=4000 CONNECTIONS=64 load-tests/rolling.sh
#
# Installs haproxy, nginx, redis-server and curl with apt when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE="${RATE:-2000}"
CONNECTIONS="${CONNECTIONS:-32}"
SETTLE="${SETTLE:-3}"
DRAIN="${DRAIN:-5}"
SESSIONS="${SESSIONS:-20}"
work="$(mktemp -d)"
pids=()
log() { echo "==> $*" >&2; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$work"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need haproxy || ! need nginx || ! need redis-server || ! need curl; then
  log "installing haproxy, nginx, redis-server, curl"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx-light redis-server curl >/dev/null
fi
python3 -c 'import websockets' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check websockets
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

log "building (release)"
cargo build --release --locked -q -p tunnelgate-gateway -p tunnelgate-agent -p tunnelgate-load --bins
B=target/release
TOKEN=load-test-token-0123456789abcdef0123
UP=$(free_port); REDIS=$(free_port); LB=$(free_port); WSUP=$(free_port)
declare -A GW PEER ADM PID
for n in 1 2 3; do GW[$n]=$(free_port); PEER[$n]=$(free_port); ADM[$n]=$(free_port); done

cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "$(printf '%0100d' 0)"; } } }
NGINX
nginx -c "$work/nginx.conf"
redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & pids+=($!)
python3 load-tests/ws_sessions.py echo "$WSUP" & pids+=($!)
wait_port "$UP"; wait_port "$REDIS"; wait_port "$WSUP"

start_node() { # n
  local n=$1
  RUST_LOG=info $B/tunnelgate-gateway --cluster "demo:$TOKEN" --redis-url "redis://127.0.0.1:$REDIS/" \
    --peer-secret load-test-peer-secret-0123456789 --node-id "n$n" --listen "127.0.0.1:${GW[$n]}" \
    --peer-listen "127.0.0.1:${PEER[$n]}" --admin-listen "127.0.0.1:${ADM[$n]}" \
    --rate-limit 1000000 --rate-burst 1000000 --drain-timeout "${DRAIN}s" --log-format text >>"$work/n$n.log" 2>&1 &
  PID[$n]=$!; pids+=("${PID[$n]}")
  for _ in $(seq 400); do
    curl -sf -o /dev/null "http://127.0.0.1:${ADM[$n]}/readyz" && return 0
    sleep 0.05
  done
  echo "node n$n never became ready" >&2; return 1
}
stop_node() { # n: SIGTERM, wait for the drain to end; prints how long it took and the exit code
  local n=$1 t0 rc
  t0=$(date +%s.%N)
  kill -TERM "${PID[$n]}"
  rc=0; wait "${PID[$n]}" || rc=$?
  echo "n$n drained and exited $rc in $(python3 -c "print(f'{$(date +%s.%N) - $t0:.2f}')") s" >> "$work/events"
  [ "$rc" = 0 ] || { echo "node n$n exited $rc" >&2; return 1; }
}

cat > "$work/haproxy.cfg" <<HA
global
  maxconn 4000
  pidfile $work/haproxy.pid
defaults
  mode http
  timeout connect 1s
  timeout client 60s
  timeout server 60s
  timeout tunnel 1h
  retries 3
  option redispatch 1
  retry-on conn-failure empty-response response-timeout
frontend fe
  bind 127.0.0.1:$LB
  default_backend gateways
backend gateways
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  default-server check inter 200ms fall 1 rise 2
  server n1 127.0.0.1:${GW[1]} port ${ADM[1]}
  server n2 127.0.0.1:${GW[2]} port ${ADM[2]}
  server n3 127.0.0.1:${GW[3]} port ${ADM[3]}
HA
haproxy -c -q -f "$work/haproxy.cfg"

log "three nodes, HAProxy, two agents"
for n in 1 2 3; do start_node "$n"; done
haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 & pids+=($!)
wait_port "$LB"
for a in 1 2; do
  RUST_LOG=info $B/tunnelgate-agent --gateway "ws://127.0.0.1:$LB" --cluster demo --token "$TOKEN" \
    --route "app.demo.localhost=http://127.0.0.1:$UP" --route "ws.demo.localhost=http://127.0.0.1:$WSUP" \
    --log-format text >"$work/agent$a.log" 2>&1 & pids+=($!)
done
# Both agents registered, and every node serves the routes (directly, not through HAProxy).
for _ in $(seq 400); do
  [ "$(grep -l 'tunnel registered' "$work"/agent*.log 2>/dev/null | wc -l)" -ge 2 ] && break
  sleep 0.05
done
for n in 1 2 3; do
  for _ in $(seq 400); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: app.demo.localhost' "http://127.0.0.1:${GW[$n]}/")" = 200 ] && break
    sleep 0.05
  done
done

load() { # seconds -> tg-load's JSON report
  $B/tg-load --addr "127.0.0.1:$LB" --host app.demo.localhost --rate "$RATE" --connections "$CONNECTIONS" \
    --duration "${1}s" --max-requests 100000000
}
log "steady: $RATE req/s for 10 s, no change"
before=$(load 10)
log "$before"

: > "$work/events"
total=$((SETTLE + 4 * (DRAIN + SETTLE + 2) + 2 * SETTLE + 5))
log "rolling restart n1, n2, n3, then 3 → 2 → 3 nodes, under $RATE req/s for ${total} s"
python3 load-tests/ws_sessions.py clients "ws://ws.demo.localhost:$LB/" "127.0.0.1:$LB" "$SESSIONS" "$total" \
  > "$work/ws.json" & WS=$!
load "$total" > "$work/during.json" & LOAD=$!
sleep "$SETTLE"
for n in 1 2 3; do
  stop_node "$n"
  start_node "$n"
  echo "n$n back" >> "$work/events"
  sleep "$SETTLE"
done
stop_node 3
echo "running on two nodes" >> "$work/events"
sleep $((2 * SETTLE))
start_node 3
echo "n3 back: three nodes" >> "$work/events"
wait "$LOAD"
wait "$WS"
during=$(cat "$work/during.json")
ws=$(cat "$work/ws.json")
log "websocket sessions: $ws"
log "$during"
cat "$work/events" >&2

python3 - "$before" "$during" "$RATE" "$work/events" "$ws" <<'PY'
import json, sys, datetime, platform, os
before, during = json.loads(sys.argv[1]), json.loads(sys.argv[2])
rate, events = sys.argv[3], open(sys.argv[4]).read().strip().splitlines()
ws = json.loads(sys.argv[5])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
row = lambda name, r: (f"| {name} | {r['requests']} | {r['errors']} | {r['rps']:.0f} | "
                       f"{r['p50_us']/1000:.2f} | {r['p99_us']/1000:.2f} | {r['p999_us']/1000:.2f} | {r['max_us']/1000:.1f} |")
out = [
    "# Rolling restart and scaling behind HAProxy",
    "",
    f"Run {datetime.date.today()} on {os.cpu_count()} × {cpu}; load-tests/rolling.sh: three gateway nodes and Redis, "
    f"HAProxy health-checking `/readyz` on each admin listener (every 200 ms), two agents of one cluster "
    f"connected through HAProxy, open-loop load of {rate} req/s (100-byte responses) through HAProxy. "
    "Each node leaves by SIGTERM and comes back on the same ports; then one node leaves for a while (3 → 2 → 3).",
    "",
    "| phase | requests | failed | req/s | p50 ms | p99 ms | p99.9 ms | max ms |",
    "|---|---|---|---|---|---|---|---|",
    row("steady, no change", before),
    row("rolling restart, then 3 → 2 → 3", during),
    "",
    "Failed counts every request that did not get a 2xx and every refused or broken connection.",
    "",
    f"WebSocket sessions: {ws['sessions']} open at the start, echoing every 200 ms; "
    f"**{ws['open_at_end']} open at the end**; {ws['reconnects']} reconnects after cuts "
    f"(how each ended: {ws['close_codes'] or 'none'}); {ws['echoes']} echoes, {ws['wrong']} wrong.",
    "",
    "What happened, in order:",
    "",
] + [f"- {e}" for e in events]
open("load-tests/ROLLING.md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
ok = (during["errors"] == 0 and before["errors"] == 0
      and ws["open_at_end"] == ws["sessions"] and ws["wrong"] == 0)
sys.exit(0 if ok else 1)
PY
