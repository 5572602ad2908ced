#!/usr/bin/env bash
# Side-by-side run on this machine, everything on loopback, in one go. Paths: direct to an
# upstream (nginx), through nginx as a reverse-proxy hop, through rathole, through Tunnelgate
# with a local tunnel, and through a peer hop (two nodes sharing Redis). For each: closed-loop
# req/s and latency (100-byte responses), CPU per request of the proxy processes, one 100 MiB
# download, peak RSS; then open-loop latency at several rates (the chart), then simulated agents
# (1k and 10k idle tunnels on one node, memory per tunnel, reconnect storm after a node restart).
# Writes load-tests/RESULTS.md, results.json and latency.svg.
#
#   load-tests/run.sh                                   # the full run (a few minutes)
#   DURATION=3s RATES="2000 8000" AGENTS="1000" load-tests/run.sh   # shorter
#   SKIP_RATHOLE=1 load-tests/run.sh                    # without the rathole row
#
# Installs nginx, redis-server and curl with apt, and rathole with cargo, when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-8s}"
CONNECTIONS="${CONNECTIONS:-64}"
RATES="${RATES:-2000 5000 10000 15000 20000 30000}"
POINT="${POINT:-3s}"
AGENTS="${AGENTS:-1000 10000}"
work="$(mktemp -d)"
pids=()
log() { echo "==> $*" >&2; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$work"/nginx-*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need redis-server || ! need curl; then
  log "installing nginx, redis-server, curl"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light redis-server curl >/dev/null
fi
RATHOLE=""
if [ -z "${SKIP_RATHOLE:-}" ]; then
  if need rathole; then RATHOLE="$(command -v rathole)"
  elif [ -x "$PWD/target/tools/bin/rathole" ]; then RATHOLE="$PWD/target/tools/bin/rathole"
  else
    # Not --locked: rathole 0.5.0's lockfile pins a `time` that no longer builds on current rustc.
    log "installing rathole from crates.io (once; a few minutes)"
    cargo install -q rathole --no-default-features --features server,client --root "$PWD/target/tools"
    RATHOLE="$PWD/target/tools/bin/rathole"
  fi
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }
wait_gone() { tail --pid="$1" -f /dev/null; }

log "building (release)"
cargo build --release --locked -q -p tunnelgate-gateway -p tunnelgate-agent -p tunnelgate-load --bins
B=target/release

UP=$(free_port); HOP=$(free_port); REDIS=$(free_port); RH_CTL=$(free_port); RH=$(free_port)
PP=$(free_port); PPT=$(free_port); PA=$(free_port); PAT=$(free_port)
GW1=$(free_port); GW2=$(free_port); P1=$(free_port); P2=$(free_port); GWS=$(free_port); NTLS=$(free_port)
# HTTPS rows: a test CA and a certificate for the names both TLS paths serve.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=load-test-ca \
  -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -keyout "$work/tls.key" -out "$work/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,DNS:*.demo.localhost\n' > "$work/san.ext"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
  -extfile "$work/san.ext" -out "$work/tls.crt" 2>/dev/null
chmod 644 "$work/tls.key"
# nginx's workers run as an unprivileged user: they must be able to read the file.
chmod 755 "$work"
head -c $((100 * 1024 * 1024)) /dev/urandom > "$work/big"; chmod 644 "$work/big"
nginx_conf() { # name server-block
  cat > "$work/nginx-$1.conf" <<NGINX
worker_processes 1;
pid $work/nginx-$1.pid;
error_log $work/nginx-$1-error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; sendfile on; $2 }
NGINX
  nginx -c "$work/nginx-$1.conf"
}
nginx_conf up "server { listen 127.0.0.1:$UP; location / { return 200 \"$(printf '%0100d' 0)\"; } location = /big { alias $work/big; } }"
nginx_conf hop "upstream up { server 127.0.0.1:$UP; keepalive 128; }
  server { listen 127.0.0.1:$HOP; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
# nginx terminating TLS in front of the same upstream: the HTTPS reference.
nginx_conf tls "upstream up { server 127.0.0.1:$UP; keepalive 128; }
  server { listen 127.0.0.1:$NTLS ssl; ssl_certificate $work/tls.crt; ssl_certificate_key $work/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & pids+=($!)
wait_port "$UP"; wait_port "$HOP"; wait_port "$REDIS"; wait_port "$NTLS"

if [ -n "$RATHOLE" ]; then
  printf '[server]\nbind_addr = "127.0.0.1:%s"\n[server.services.up]\ntoken = "load-test"\nbind_addr = "127.0.0.1:%s"\n' "$RH_CTL" "$RH" > "$work/rs.toml"
  printf '[client]\nremote_addr = "127.0.0.1:%s"\n[client.services.up]\ntoken = "load-test"\nlocal_addr = "127.0.0.1:%s"\n' "$RH_CTL" "$UP" > "$work/rc.toml"
  RUST_LOG=warn "$RATHOLE" -s "$work/rs.toml" >"$work/rs.log" 2>&1 & RHS=$!; pids+=($RHS)
  wait_port "$RH_CTL"
  RUST_LOG=warn "$RATHOLE" -c "$work/rc.toml" >"$work/rc.log" 2>&1 & RHC=$!; pids+=($RHC)
  wait_port "$RH"
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$RH/" && break; sleep 0.05; done
fi

common=(--cluster demo:load-test-token-0123456789abcdef0123 --redis-url "redis://127.0.0.1:$REDIS/" --peer-secret load-test-peer-secret-0123456789 --admin-listen 127.0.0.1:0 --rate-limit 1000000 --rate-burst 1000000 --log-format text)
RUST_LOG=warn $B/tunnelgate-gateway "${common[@]}" --listen "127.0.0.1:$GW1" --peer-listen "127.0.0.1:$P1" --node-id n1 \
  --tls-listen "127.0.0.1:$GWS" --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" >"$work/n1.log" 2>&1 & N1=$!; pids+=($N1)
RUST_LOG=warn $B/tunnelgate-gateway "${common[@]}" --listen "127.0.0.1:$GW2" --peer-listen "127.0.0.1:$P2" --node-id n2 >"$work/n2.log" 2>&1 & N2=$!; pids+=($N2)
wait_port "$GW1"; wait_port "$GW2"; wait_port "$GWS"
# The agent as shipped: its default two connections, which with one node to reach take a tunnel
# on each of the node's workers (ADR 0013).
RUST_LOG=warn $B/tunnelgate-agent --gateway "ws://127.0.0.1:$GW1" --cluster demo --token load-test-token-0123456789abcdef0123 \
  --route "app.demo.localhost=http://127.0.0.1:$UP" --log-format text >"$work/agent.log" 2>&1 & AG=$!; pids+=($AG)
for _ in $(seq 200); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: app.demo.localhost' "http://127.0.0.1:$GW2/")" = 200 ] && break
  sleep 0.05
done

# The byte-pipe prototype of ADR 0010 (tg-pipe): its own HTTP/1.1 front, and actix-web's.
$B/tg-pipe gateway --listen "127.0.0.1:$PP" --tunnel-listen "127.0.0.1:$PPT" >"$work/pipe.log" 2>&1 & PPG=$!; pids+=($PPG)
$B/tg-pipe gateway --listen "127.0.0.1:$PA" --tunnel-listen "127.0.0.1:$PAT" --front actix >"$work/pipe-actix.log" 2>&1 & PAG=$!; pids+=($PAG)
wait_port "$PPT"; wait_port "$PAT"; wait_port "$PP"; wait_port "$PA"
$B/tg-pipe agent --gateway "ws://127.0.0.1:$PPT" --upstream "127.0.0.1:$UP" >>"$work/pipe.log" 2>&1 & PPA=$!; pids+=($PPA)
$B/tg-pipe agent --gateway "ws://127.0.0.1:$PAT" --upstream "127.0.0.1:$UP" >>"$work/pipe-actix.log" 2>&1 & PAA=$!; pids+=($PAA)
for a in "$PP" "$PA"; do
  for _ in $(seq 100); do curl -sf -o /dev/null -H 'Host: app.demo.localhost' "http://127.0.0.1:$a/" && break; sleep 0.05; done
done

ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
download() { # addr host -> median bytes/s of 3 downloads of 100 MiB
  local i out
  for i in 1 2 3; do
    out=$(curl -sSf -o /dev/null -w '%{size_download} %{speed_download}' -H "Host: $2" "http://$1/big")
    [ "${out% *}" = $((100 * 1024 * 1024)) ] || { echo "download through $1 got ${out% *} bytes" >&2; return 1; }
    echo "${out#* }"
  done | sort -n | sed -n 2p
}
# row NAME ADDR HOST "LABEL:PID ..." : closed-loop run, CPU per request, download, peak RSS.
row() {
  local name=$1 addr=$2 host=$3 procs=$4 out dl p before="" after="" rss=""
  for p in $procs; do before+="${p%%:*}:$(ticks "${p#*:}") "; done
  out=$($B/tg-load --addr "$addr" --host "$host" --connections "$CONNECTIONS" --duration "$DURATION")
  for p in $procs; do after+="$(ticks "${p#*:}") "; rss+="$(hwm_kib "${p#*:}") "; done
  dl=$(download "$addr" "$host")
  log "$name: $out download=${dl}B/s"
  python3 - "$name" "$out" "$dl" "$(getconf CLK_TCK)" "$before" "$after" "$rss" <<'PY'
import json, sys
name, out, dl, hz, before, after, rss = sys.argv[1:]
r = json.loads(out)
labels = [b.split(":")[0] for b in before.split()]
t0 = [int(b.split(":")[1]) for b in before.split()]
t1 = [int(a) for a in after.split()]
n = r["requests"] or 1
per = {l: (b - a) / int(hz) * 1e6 / n for l, a, b in zip(labels, t0, t1)}
kib = [int(x) for x in rss.split()]
r.update(name=name, download_mb_s=float(dl) / 1e6,
         cpu_us_per_req=sum(per.values()) if per else None, cpu_us_per_req_by_process=per,
         peak_rss_mib=round(sum(kib) / 1024, 1) if kib else None,
         peak_rss_mib_by_process={l: round(k / 1024, 1) for l, k in zip(labels, kib)},
         entry_peak_rss_mib=round(kib[0] / 1024, 1) if kib else None)
print(json.dumps(r))
PY
}
# curve NAME ADDR HOST: open-loop latency at each rate in $RATES.
curve() {
  local pts=()
  for rate in $RATES; do
    pts+=("$($B/tg-load --addr "$2" --host "$3" --connections "$CONNECTIONS" --duration "$POINT" --rate "$rate")")
  done
  printf '%s\n' "${pts[@]}" | python3 -c '
import json, sys
rates = sys.argv[2].split()
pts = [json.loads(l) for l in sys.stdin if l.strip()]
print(json.dumps({"name": sys.argv[1], "points": [dict(p, rate=int(r)) for r, p in zip(rates, pts)]}))' "$1" "$RATES"
}

paths=("direct 127.0.0.1:$UP localhost")
paths+=("nginx-hop 127.0.0.1:$HOP localhost master:$(cat "$work/nginx-hop.pid") worker:$(pgrep -P "$(cat "$work/nginx-hop.pid")" | head -n 1)")
[ -n "$RATHOLE" ] && paths+=("rathole 127.0.0.1:$RH localhost server:$RHS client:$RHC")
paths+=("tunnelgate-local 127.0.0.1:$GW1 app.demo.localhost node1:$N1 agent:$AG")
paths+=("tunnelgate-peer-hop 127.0.0.1:$GW2 app.demo.localhost node2:$N2 node1:$N1 agent:$AG")

log "closed loop: $CONNECTIONS connections, $DURATION per path; 100 MiB download x3"
: > "$work/rows.jsonl"
for p in "${paths[@]}"; do
  set -- $p; name=$1; addr=$2; host=$3; shift 3
  row "$name" "$addr" "$host" "$*" >> "$work/rows.jsonl"
done
# The prototype rows: closed loop and download only (not in the open-loop chart).
row prototype-pipe "127.0.0.1:$PP" app.demo.localhost "gateway:$PPG agent:$PPA" >> "$work/rows.jsonl"
row prototype-pipe-actix "127.0.0.1:$PA" app.demo.localhost "gateway:$PAG agent:$PAA" >> "$work/rows.jsonl"
# The download ceiling of any two relays here: two bare relays in a row (load-tests/relay.py),
# copying and with splice(2); downloads only (ADR 0014).
log "download ceiling: two bare relays in a row, copying and splicing, 100 MiB x3 each"
: > "$work/relays.jsonl"
for mode in copy splice; do
  R1=$(free_port); R2=$(free_port)
  python3 load-tests/relay.py "$R1" "$UP" "$mode" & pids+=($!)
  python3 load-tests/relay.py "$R2" "$R1" "$mode" & pids+=($!)
  wait_port "$R1"; wait_port "$R2"
  echo "{\"name\": \"two-relays-$mode\", \"download_b_s\": $(download "127.0.0.1:$R2" localhost)}" >> "$work/relays.jsonl"
done
# HTTPS: keep-alive req/s (with CPU per request), and new TLS connections per second (one
# request per connection, a full handshake each).
log "HTTPS: Tunnelgate's TLS listener vs nginx terminating TLS, $DURATION each way"
: > "$work/tls.jsonl"
tls_row() { # name addr host "LABEL:PID ..."
  local name=$1 addr=$2 host=$3 procs=$4 p before="" after="" ka fresh
  for p in $procs; do before+="${p%%:*}:$(ticks "${p#*:}") "; done
  ka=$($B/tg-load --addr "$addr" --host "$host" --tls-ca "$work/ca.crt" --connections "$CONNECTIONS" --duration "$DURATION")
  for p in $procs; do after+="$(ticks "${p#*:}") "; done
  fresh=$($B/tg-load --addr "$addr" --host "$host" --tls-ca "$work/ca.crt" --connections 16 --duration "$DURATION" --requests-per-connection 1)
  log "$name: keep-alive $ka; new connections $fresh"
  python3 - "$name" "$ka" "$fresh" "$(getconf CLK_TCK)" "$before" "$after" <<'PY'
import json, sys
name, ka, fresh, hz, before, after = sys.argv[1:]
ka, fresh = json.loads(ka), json.loads(fresh)
t0 = [int(b.split(":")[1]) for b in before.split()]
t1 = [int(a) for a in after.split()]
cpu = sum(b - a for a, b in zip(t0, t1)) / int(hz) * 1e6 / (ka["requests"] or 1)
print(json.dumps({"name": name, "rps": ka["rps"], "p99_us": ka["p99_us"], "errors": ka["errors"] + fresh["errors"],
                  "cpu_us_per_req": cpu, "new_conns_per_s": fresh["rps"], "new_conn_p99_us": fresh["p99_us"]}))
PY
}
tls_row nginx-tls "127.0.0.1:$NTLS" localhost "master:$(cat "$work/nginx-tls.pid") worker:$(pgrep -P "$(cat "$work/nginx-tls.pid")" | head -n 1)" >> "$work/tls.jsonl"
tls_row tunnelgate-tls "127.0.0.1:$GWS" app.demo.localhost "node1:$N1 agent:$AG" >> "$work/tls.jsonl"

log "open loop: rates $RATES, $POINT each"
: > "$work/curves.jsonl"
for p in "${paths[@]}"; do
  set -- $p; curve "$1" "$2" "$3" >> "$work/curves.jsonl"
done

log "simulated agents: ${AGENTS} idle tunnels on a fresh node, then a node restart"
: > "$work/sim.jsonl"
for n in $AGENTS; do
  SIM=$(free_port)
  start_sim_node() {
    RUST_LOG=warn $B/tunnelgate-gateway --cluster sim:sim-token-0123456789abcdef0123456789 --max-tunnels-per-cluster 100000 --cluster-connect-rate 100000 --rate-limit 1000000 --rate-burst 1000000 --admin-listen 127.0.0.1:0 --listen "127.0.0.1:$SIM" --log-format text >>"$work/sim-node.log" 2>&1 &
    SN=$!; disown; pids+=($SN); wait_port "$SIM"
  }
  start_sim_node
  idle=$(rss_kib "$SN")
  $B/tg-agents --url "ws://127.0.0.1:$SIM/v1/tunnel" --cluster sim --token sim-token-0123456789abcdef0123456789 --count "$n" --storm > "$work/agents.out" 2>"$work/agents.err" & TA=$!
  for _ in $(seq 1200); do grep -q '"registered"' "$work/agents.out" && break; kill -0 $TA 2>/dev/null || break; sleep 0.1; done
  grep -q '"registered"' "$work/agents.out" || { cat "$work/agents.err" >&2; echo "simulated agents never all registered" >&2; exit 1; }
  loaded=$(rss_kib "$SN"); cpu0=$(ticks "$SN")
  kill -9 "$SN"; wait_gone "$SN"
  start_sim_node
  wait $TA || { cat "$work/agents.err" >&2; exit 1; }
  after=$(rss_kib "$SN"); cpu1=$(ticks "$SN")
  kill "$SN"; wait_gone "$SN"
  python3 - "$n" "$idle" "$loaded" "$after" "$((cpu1))" "$(getconf CLK_TCK)" "$work/agents.out" <<'PY' >> "$work/sim.jsonl"
import json, sys
n, idle, loaded, after, cpu, hz, path = sys.argv[1:]
ev = {e["phase"]: e for e in map(json.loads, open(path))}
n = int(n)
print(json.dumps({"tunnels": n, "ramp_s": ev["registered"]["secs"],
  "idle_rss_mib": int(idle) / 1024, "loaded_rss_mib": int(loaded) / 1024,
  "kib_per_tunnel": (int(loaded) - int(idle)) / n,
  "storm_settle_s": ev["settled"]["secs"], "storm_attempts": ev["settled"]["attempts"],
  "storm_failures": ev["settled"]["failures"], "storm_node_cpu_s": int(cpu) / int(hz),
  "rss_after_storm_mib": int(after) / 1024}))
PY
  log "$(tail -n 1 "$work/sim.jsonl")"
done

python3 - "$work" "$CONNECTIONS" "$DURATION" "$POINT" <<'PY'
import json, platform, subprocess, sys, datetime, os
work, conns, duration, point = sys.argv[1:]
load = lambda f: [json.loads(l) for l in open(os.path.join(work, f)) if l.strip()]
rows, curves, sim, tls = load("rows.jsonl"), load("curves.jsonl"), load("sim.jsonl"), load("tls.jsonl")
by = {r["name"]: r for r in rows}
cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next((int(l.split()[1]) // 1024 // 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
meta = {"date": datetime.date.today().isoformat(), "machine": f"{cpu} × {model}, {mem} GiB, {platform.platform()}",
        "connections": int(conns), "duration": duration, "point": point}
json.dump({"meta": meta, "rows": rows, "curves": curves, "sim": sim, "tls": tls}, open("load-tests/results.json", "w"), indent=2)

def ratio(a, b, key):
    x, y = by.get(a), by.get(b)
    return x[key] / y[key] if x and y and x[key] is not None and y[key] else None
f = lambda v, d=0: "–" if v is None else f"{v:.{d}f}"
lines = [f"# Load test results\n",
  f"Run {meta['date']} on {meta['machine']}; {conns} connections, {duration} per path, 100-byte responses; "
  "every process on this machine, sharing its cores. Only ratios within one run mean anything.\n",
  "| path | req/s | × direct | p50 ms | p99 ms | p99.9 ms | errors | proxy CPU µs/req | 100 MiB download MB/s | proxy peak RSS MiB |",
  "|---|---|---|---|---|---|---|---|---|---|"]
direct = by["direct"]["rps"] or 1
for r in rows:
    lines.append(f"| {r['name']} | {r['rps']:.0f} | {r['rps']/direct:.2f} | {r['p50_us']/1000:.2f} | {r['p99_us']/1000:.2f} | "
                 f"{r['p999_us']/1000:.2f} | {r['errors']} | {f(r['cpu_us_per_req'], 1)} | {r['download_mb_s']:.0f} | {f(r['peak_rss_mib'], 1)} |")
lines.append("\nProxy CPU and RSS count every process of the path. By process (CPU µs per request, peak RSS MiB):\n")
for r in rows:
    if r["cpu_us_per_req_by_process"]:
        lines.append(f"- {r['name']}: " + ", ".join(
            f"{k} {v:.1f} µs, {r['peak_rss_mib_by_process'][k]} MiB" for k, v in r["cpu_us_per_req_by_process"].items()))
lines.append("\n## HTTPS (the TLS issue): Tunnelgate's TLS listener and tunnel vs nginx terminating TLS, same upstream\n")
lines.append("| path | keep-alive req/s | × nginx | p99 ms | CPU µs/req | new TLS connections/s | × nginx | errors |")
lines.append("|---|---|---|---|---|---|---|---|")
tb = {t["name"]: t for t in tls}
for t in tls:
    ref = tb.get("nginx-tls") or t
    lines.append(f"| {t['name']} | {t['rps']:.0f} | {t['rps']/(ref['rps'] or 1):.2f} | {t['p99_us']/1000:.2f} | {t['cpu_us_per_req']:.1f} | "
                 f"{t['new_conns_per_s']:.0f} | {t['new_conns_per_s']/(ref['new_conns_per_s'] or 1):.2f} | {t['errors']} |")
lines.append("\nnginx forwards to the upstream directly; Tunnelgate's row also carries every request through the "
             "agent's tunnel (node and agent CPU counted), so the gap includes the tunnel's cost.\n")
lines.append("## Targets (the data-path issue), this run\n")
lines.append("| target | measured | met |\n|---|---|---|")
def target(name, value, ok):
    lines.append(f"| {name} | {value} | {'yes' if ok else 'no'} |")
def speed_targets(path, label):
    rl = ratio(path, "rathole", "rps")
    if rl is None:
        return
    target(f"{label} req/s ≥ 0.8× rathole", f"{rl:.2f}×", rl >= 0.8)
    p = ratio(path, "rathole", "p99_us")
    target(f"{label} p99 ≤ 1.3× rathole's", f"{p:.2f}×", p <= 1.3)
    cpu = ratio(path, "rathole", "cpu_us_per_req")
    if cpu is not None:
        target(f"{label} CPU/request ≤ 1.5× rathole server+client", f"{cpu:.2f}×", cpu <= 1.5)
    d = ratio(path, "rathole", "download_mb_s")
    target(f"{label} 100 MiB download ≥ 2× rathole", f"{d:.2f}×", d >= 2.0)
speed_targets("tunnelgate-local", "local tunnel")
n = ratio("tunnelgate-local", "nginx-hop", "rps")
target("stretch: local tunnel req/s ≥ nginx hop", f"{n:.2f}×", n >= 1.0)
ph = ratio("tunnelgate-peer-hop", "tunnelgate-local", "rps")
target("peer hop ≥ 0.75× local tunnel", f"{ph:.2f}×", ph >= 0.75)
relays = {r["name"]: r["download_b_s"] / 1e6 for r in load("relays.jsonl")} if os.path.exists(os.path.join(work, "relays.jsonl")) else {}
gw_rss = max(by[k]["entry_peak_rss_mib"] for k in ("tunnelgate-local", "tunnelgate-peer-hop"))
target("gateway peak RSS under load ≤ 64 MiB", f"{gw_rss:.1f} MiB", gw_rss <= 64)
for s in sim:
    target(f"{s['tunnels']} idle tunnels ≤ 20 KiB each", f"{s['kib_per_tunnel']:.1f} KiB", s["kib_per_tunnel"] <= 20)
    target(f"{s['tunnels']}-agent reconnect storm settled ≤ 30 s", f"{s['storm_settle_s']:.1f} s", s["storm_settle_s"] <= 30)
lines.append("\nThe same targets for the byte-pipe prototype of ADR 0010 (`tg-pipe`: no auth, routing "
             "or credit — the design's floor, not a product):\n")
lines.append("| target | measured | met |\n|---|---|---|")
speed_targets("prototype-pipe", "prototype, own front:")
speed_targets("prototype-pipe-actix", "prototype, actix-web front:")
if relays:
    local, rh = by["tunnelgate-local"]["download_mb_s"], by["rathole"]["download_mb_s"] if "rathole" in by else None
    lines.append("\n**Download ceiling.** Two bare relays in a row (`load-tests/relay.py`, no framing, same "
                 "upstream): " + ", ".join(f"{k.removeprefix('two-relays-')} {v:.0f} MB/s" for k, v in relays.items())
                 + f"; the local tunnel {local:.0f} MB/s" + (f", rathole {rh:.0f} MB/s" if rh else "")
                 + f"; the local tunnel at {local / max(relays.values()):.2f}× the faster pair. The relays are "
                 "Python processes, so on a slow machine their own CPU can limit them before the kernel's "
                 "copies do (ADR 0014).\n")
lines.append("\n## Simulated agents (one node, in-memory registry)\n")
lines.append("| tunnels | ramp s | node RSS idle → loaded MiB | KiB per tunnel | storm settled s | attempts | refused/failed | node CPU s (storm) |")
lines.append("|---|---|---|---|---|---|---|---|")
for s in sim:
    lines.append(f"| {s['tunnels']} | {s['ramp_s']:.1f} | {s['idle_rss_mib']:.1f} → {s['loaded_rss_mib']:.1f} | {s['kib_per_tunnel']:.1f} | "
                 f"{s['storm_settle_s']:.1f} | {s['storm_attempts']} | {s['storm_failures']} | {s['storm_node_cpu_s']:.1f} |")
lines.append("\nThe storm: every agent registered, then the node is killed (SIGKILL) and started again on the "
             "same address; agents reconnect with the agent's backoff (1 s doubling to 60 s, jittered into the "
             "upper half). Settled = from the moment all had lost their tunnel until all are registered again.\n")
lines.append("## Latency vs offered load (open loop)\n\n![latency vs load](latency.svg)\n")
lines.append("| path | " + " | ".join(f"{p['rate']}/s p50/p99 ms" for p in curves[0]["points"]) + " |")
lines.append("|---|" + "---|" * len(curves[0]["points"]))
for c in curves:
    lines.append(f"| {c['name']} | " + " | ".join(
        f"{p['p50_us']/1000:.2f}/{p['p99_us']/1000:.2f}" + (f" ({p['errors']} err)" if p["errors"] else "") for p in c["points"]) + " |")
lines.append("\nOpen loop: requests are sent on schedule whatever the answers do, and latency counts from the "
             "scheduled time, so a path past its capacity shows its queue.\n")
notes = "load-tests/NOTES.md"
if os.path.exists(notes):
    lines.append(open(notes).read())
# The last rolling-restart run (load-tests/rolling.sh), one level down.
rolling = "load-tests/ROLLING.md"
if os.path.exists(rolling):
    lines.append("\n" + "\n".join(("#" + l) if l.startswith("#") else l for l in open(rolling).read().splitlines()))
open("load-tests/RESULTS.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
$B/tg-chart --input load-tests/results.json --output load-tests/latency.svg
