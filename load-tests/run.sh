#!/usr/bin/env bash
# Side-by-side run on this machine, everything on loopback, in one go: direct to an upstream
# (nginx returning 100 bytes), through nginx as a reverse-proxy hop, through Tunnelgate with a
# local tunnel, and through a peer hop (two nodes sharing Redis). Writes load-tests/RESULTS.md
# and load-tests/results.json. Installs nginx, redis-server and wrk with apt when missing.
#
#   load-tests/run.sh                 # 10 s per row
#   DURATION=3s CONNECTIONS=16 load-tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need redis-server; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light redis-server >/dev/null
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

echo "==> building (release)"
cargo build --release --locked -q --bins

UP=$(free_port); HOP=$(free_port); REDIS=$(free_port)
GW1=$(free_port); GW2=$(free_port); P1=$(free_port); P2=$(free_port)
cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  server { listen 127.0.0.1:$UP; location / { return 200 "$(printf '%0100d' 0)"; } }
  server { listen 127.0.0.1:$HOP; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
NGINX
nginx -c "$work/nginx.conf"
redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & pids+=($!)
wait_port "$UP"; wait_port "$REDIS"

B=target/release
common=(--cluster demo:load-test-token --redis-url "redis://127.0.0.1:$REDIS/" --peer-secret load-test-peer-secret --log-format text)
RUST_LOG=warn $B/tunnelgate-gateway "${common[@]}" --listen "127.0.0.1:$GW1" --peer-listen "127.0.0.1:$P1" --node-id n1 >"$work/n1.log" 2>&1 & pids+=($!)
RUST_LOG=warn $B/tunnelgate-gateway "${common[@]}" --listen "127.0.0.1:$GW2" --peer-listen "127.0.0.1:$P2" --node-id n2 >"$work/n2.log" 2>&1 & pids+=($!)
wait_port "$GW1"; wait_port "$GW2"
RUST_LOG=warn $B/tunnelgate-agent --gateway "ws://127.0.0.1:$GW1" --connections 1 --cluster demo --token load-test-token \
  --route "app.demo.localhost=http://127.0.0.1:$UP" --log-format text >"$work/agent.log" 2>&1 & pids+=($!)
for _ in $(seq 200); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: app.demo.localhost' "http://127.0.0.1:$GW2/")" = 200 ] && break
  sleep 0.05
done

rss_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
row() { # name addr host pid
  local out
  out=$($B/tg-load --addr "$2" --host "$3" --connections "$CONNECTIONS" --duration "$DURATION")
  echo "$1 $out" >&2
  python3 - "$1" "$out" "${4:-}" <<'PY'
import json, sys
name, out, pid = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
rss = None
if pid:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM"):
            rss = int(line.split()[1]) // 1024
out.update(name=name, peak_rss_mib=rss)
print(json.dumps(out))
PY
}

echo "==> measuring ($CONNECTIONS connections, $DURATION per row)"
{
  row direct "127.0.0.1:$UP" localhost
  row nginx-hop "127.0.0.1:$HOP" localhost "$(pgrep -P "$(cat "$work/nginx.pid")" | head -n 1)"
  row tunnelgate-local "127.0.0.1:$GW1" app.demo.localhost "${pids[1]}"
  row tunnelgate-peer-hop "127.0.0.1:$GW2" app.demo.localhost "${pids[2]}"
} > "$work/rows.jsonl"

python3 - "$work/rows.jsonl" "$CONNECTIONS" "$DURATION" <<'PY'
import json, platform, subprocess, sys, datetime
rows = [json.loads(l) for l in open(sys.argv[1])]
direct = rows[0]["rps"] or 1
cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
meta = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {cpu} cores, {platform.platform()}",
        "connections": int(sys.argv[2]), "duration": sys.argv[3]}
json.dump({"meta": meta, "rows": rows}, open("load-tests/results.json", "w"), indent=2)
with open("load-tests/RESULTS.md", "w") as f:
    f.write(f"# Load test results\n\nRun {meta['date']} on {meta['machine']}; {meta['connections']} connections, "
            f"{meta['duration']} per row, 100-byte responses, all processes on this machine (so they share its cores).\n"
            "Only ratios within one run mean anything.\n\n")
    f.write("| path | req/s | × direct | p50 ms | p99 ms | p99.9 ms | errors | peak RSS MiB |\n|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        rss = r["peak_rss_mib"] if r["peak_rss_mib"] is not None else "–"
        f.write(f"| {r['name']} | {r['rps']:.0f} | {r['rps']/direct:.2f} | {r['p50_us']/1000:.2f} | {r['p99_us']/1000:.2f} | "
                f"{r['p999_us']/1000:.2f} | {r['errors']} | {rss} |\n")
    f.write("\nNot yet measured here: rathole and frp rows, the 100 MiB download column, latency-vs-load chart, "
            "simulated-agent (1k/10k tunnels) runs.\n")
print(open("load-tests/RESULTS.md").read())
PY
