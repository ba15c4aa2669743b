#!/usr/bin/env bash
# End-to-end throughput/latency comparison: the tower-lb gateway example vs nginx vs a backend
# directly, with wrk, for round robin and for consistent hashing by a query key. See --help.
set -euo pipefail

usage() {
	cat <<'EOF'
scripts/bench-e2e.sh: the gateway example (tower-lb) vs nginx as a reverse proxy, end to end

Starts 3 loopback HTTP backends (the gateway binary's embedded backends, in one process), the
gateway in front of them (round robin, and a second one with --strategy consistent --key
query:key), and one nginx with the equivalent upstreams (round robin; hash $arg_key
consistent), all on 127.0.0.1 ports picked free. Then runs wrk against the gateway, nginx and
backend 1 directly, alternating (gateway, nginx, direct, gateway, nginx, direct, ...), and
prints the median over the rounds of requests/s, of p99 latency and of the CPU time per
request of the contender's own processes (user and system, from /proc: the proxy's, or the
backends' for the direct runs), with the ratios gateway/nginx and gateway/direct. The consistent-hash runs request /?key=k1 .. /?key=k$KEYS in
turn (a wrk Lua script); the round-robin runs request /.

Installs nginx and wrk with apt-get if missing (root, Debian), builds the gateway example in
release mode. Every process it starts is stopped by PID on exit; the temp dir is removed.

USAGE:
    scripts/bench-e2e.sh [--help]

ENVIRONMENT (defaults in brackets):
    DURATION        wrk duration of each measured run, wrk syntax (10s, 1m)          [10s]
    WARMUP          wrk duration of the warm-up run before each measured run        [2s]
    THREADS         wrk threads (-t)                                                 [2]
    CONNECTIONS     wrk connections (-c)                                             [64]
    ROUNDS          measured runs per contender, alternated; the median is shown     [3]
    WORKERS         gateway worker threads (--workers) and nginx
                    worker_processes, matched                                        [nproc]
    BACKEND_WORKERS tokio worker threads of the backends process                     [nproc]
    BACKEND_ARGS    extra gateway flags for the backends process                     [--work 0]
    KEYS            distinct keys cycled by the consistent-hash wrk script           [1000]
    SKIP_INSTALL=1  do not apt-get install (nginx and wrk must be on PATH)
    GATEWAY_BIN     use this gateway binary instead of building the example
    KEEP_TMP=1      keep the temp dir (configs, logs, wrk outputs) and print its path
    LEAN=1          also run benches/lean-proxy (a minimal HTTP/1.1 proxy over tower-lb,
                    without hyper) in the round-robin rounds, as the reference for what
                    the gateway's HTTP stack costs; built in release mode
    LEAN_MODE       its mode: raw, timer or typed (see its source)                   [typed]

Everything listens on 127.0.0.1 only. Every wrk run is bounded by `timeout`.
EOF
}

case "${1:-}" in
-h | --help) usage; exit 0 ;;
"") ;;
*) echo "error: unexpected argument ${1} (see --help)" >&2; exit 2 ;;
esac

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
ROUNDS=${ROUNDS:-3}
NPROC=$(nproc 2>/dev/null || echo 2)
WORKERS=${WORKERS:-$NPROC}
BACKEND_WORKERS=${BACKEND_WORKERS:-$NPROC}
BACKEND_ARGS=${BACKEND_ARGS:---work 0}
KEYS=${KEYS:-1000}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Seconds in a wrk duration (N, Ns, Nm, Nh), for the `timeout` bounds.
seconds() {
	local d=$1
	case "$d" in
	*[0-9]) echo "$d" ;;
	*s) echo "${d%s}" ;;
	*m) echo $((${d%m} * 60)) ;;
	*h) echo $((${d%h} * 3600)) ;;
	*) die "bad duration: $d" ;;
	esac
}
DURATION_S=$(seconds "$DURATION")
WARMUP_S=$(seconds "$WARMUP")
for v in THREADS CONNECTIONS ROUNDS WORKERS BACKEND_WORKERS KEYS DURATION_S WARMUP_S; do
	[[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
((ROUNDS >= 1 && WORKERS >= 1 && DURATION_S >= 1)) || die "ROUNDS, WORKERS and DURATION must be at least 1"

# ---------------------------------------------------------------------------------------------
# Cleanup: every process this script starts is recorded here and stopped by its PID.
PIDS=()
TMP=""
WRK_PID=""
cleanup() {
	local rc=$? pid i
	set +e
	# A wrk run in progress (its `timeout` passes the signal on to wrk).
	if [[ -n $WRK_PID ]]; then
		kill -TERM "$WRK_PID" 2>/dev/null
		wait "$WRK_PID" 2>/dev/null
	fi
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	for pid in "${PIDS[@]}"; do
		for ((i = 0; i < 50; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			# nginx workers are children of the master: kill them by PID too.
			for child in $(pgrep -P "$pid" 2>/dev/null); do kill -KILL "$child" 2>/dev/null; done
			kill -KILL "$pid" 2>/dev/null
		fi
		wait "$pid" 2>/dev/null
	done
	if [[ -n $TMP && -d $TMP ]]; then
		if [[ ${KEEP_TMP:-0} == 1 ]]; then
			log "kept $TMP"
		else
			rm -rf "$TMP"
		fi
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Tools.
if [[ ${SKIP_INSTALL:-0} != 1 ]] && ! { command -v nginx && command -v wrk; } >/dev/null 2>&1; then
	[[ $(id -u) == 0 ]] || die "nginx or wrk missing: install them (apt-get install nginx wrk) or run as root"
	log "installing nginx and wrk (apt-get)"
	# Keep the package's postinst from starting a system nginx on port 80: a policy-rc.d that
	# denies service starts, for the duration of the install only (if there is none already).
	policy=""
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		policy=/usr/sbin/policy-rc.d
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod +x "$policy"
	fi
	rc=0
	{
		DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx wrk
	} >&2 || rc=$?
	[[ -z $policy ]] || rm -f "$policy"
	((rc == 0)) || die "apt-get failed ($rc)"
fi
export PATH="$PATH:/usr/sbin:/sbin"
command -v nginx >/dev/null || die "nginx not found"
command -v wrk >/dev/null || die "wrk not found"

if [[ -n ${GATEWAY_BIN:-} ]]; then
	[[ -x $GATEWAY_BIN ]] || die "GATEWAY_BIN=$GATEWAY_BIN is not an executable"
	log "using GATEWAY_BIN=$GATEWAY_BIN (no build)"
else
	log "building the gateway example (release)"
	build_json=$(cd "$ROOT" && cargo build --release --example gateway --message-format=json-render-diagnostics) ||
		die "cargo build --release --example gateway failed"
	GATEWAY_BIN=$(grep -o '"executable":"[^"]*/gateway"' <<<"$build_json" | tail -n1 | sed 's/^"executable":"//; s/"$//')
	[[ -n $GATEWAY_BIN && -x $GATEWAY_BIN ]] || die "could not find the built gateway binary"
fi

LEAN=${LEAN:-0}
LEAN_MODE=${LEAN_MODE:-typed}
[[ $LEAN_MODE =~ ^(raw|timer|typed)$ ]] || die "LEAN_MODE must be raw, timer or typed, got '$LEAN_MODE'"
if [[ $LEAN == 1 ]]; then
	log "building benches/lean-proxy (release)"
	build_json=$(cd "$ROOT/benches/lean-proxy" && cargo build --release --message-format=json-render-diagnostics) ||
		die "cargo build --release in benches/lean-proxy failed"
	LEAN_BIN=$(grep -o '"executable":"[^"]*/tower-lb-lean-proxy"' <<<"$build_json" | tail -n1 | sed 's/^"executable":"//; s/"$//')
	[[ -n $LEAN_BIN && -x $LEAN_BIN ]] || die "could not find the built lean proxy binary"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-e2e.XXXXXX")

# ---------------------------------------------------------------------------------------------
# Helpers.

# A free TCP port on 127.0.0.1: python3 binding port 0 when available, else a random port that
# refuses connections. (nginx start-up below retries with new ports if one is taken meanwhile.)
free_port() {
	if command -v python3 >/dev/null 2>&1; then
		python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
		return
	fi
	local p i
	for ((i = 0; i < 100; i++)); do
		p=$((20000 + RANDOM % 30000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
	die "no free port found"
}

# GET http://127.0.0.1:PORT/PATH with bash's /dev/tcp (no curl needed); prints the response.
http_get() {
	local port=$1 path=$2
	timeout 5 bash -c '
		exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
		printf "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" "$1" >&3
		cat <&3' "$port" "$path" 2>/dev/null
}

# Waits (at most 30 s) until FILE has a line matching REGEX, or the process PID dies.
wait_line() {
	local file=$1 regex=$2 pid=$3 i
	for ((i = 0; i < 300; i++)); do
		grep -Eq "$regex" "$file" 2>/dev/null && return 0
		kill -0 "$pid" 2>/dev/null || { cat "$file" "$file.err" >&2 2>/dev/null; die "process $pid exited early"; }
		sleep 0.1
	done
	cat "$file" >&2
	die "timed out waiting for /$regex/ in $file"
}

# Waits (at most 15 s) until 127.0.0.1:PORT answers 200 on /.
wait_http() {
	local port=$1 i
	for ((i = 0; i < 150; i++)); do
		http_get "$port" / | head -n1 | grep -q ' 200' && return 0
		sleep 0.1
	done
	die "127.0.0.1:$port does not answer 200"
}

# Starts the gateway binary with ARGS, output in $TMP/NAME.out; sets STARTED_PID.
start_gateway() {
	local name=$1 workers=$2
	shift 2
	TOKIO_WORKER_THREADS=$workers "$GATEWAY_BIN" "$@" >"$TMP/$name.out" 2>"$TMP/$name.out.err" </dev/null &
	STARTED_PID=$!
	PIDS+=("$STARTED_PID")
}

# ---------------------------------------------------------------------------------------------
# Backends: the gateway binary's embedded backends (and an idle gateway of that process on a
# port we never use).
log "starting 3 backends"
# shellcheck disable=SC2086 # BACKEND_ARGS is a list of flags
start_gateway backends "$BACKEND_WORKERS" --backends 3 --no-demo --listen 127.0.0.1:0 $BACKEND_ARGS
wait_line "$TMP/backends.out" '^gateway listening on' "$STARTED_PID"
BACKENDS_PID=$STARTED_PID
mapfile -t BACKENDS < <(grep -Eo '^  backend-[0-9]+ +http://127\.0\.0\.1:[0-9]+' "$TMP/backends.out" | awk '{print $2}')
((${#BACKENDS[@]} == 3)) || die "expected 3 backend URLs in $TMP/backends.out"
BACKEND_PORTS=("${BACKENDS[@]##*:}")
for p in "${BACKEND_PORTS[@]}"; do wait_http "$p"; done
DIRECT_PORT=${BACKEND_PORTS[0]}

# ---------------------------------------------------------------------------------------------
# The gateways: one per strategy, both with $WORKERS worker threads.
backend_flags=()
for url in "${BACKENDS[@]}"; do backend_flags+=(--backend "$url"); done
gateway_port() { sed -nE 's|^gateway listening on http://127\.0\.0\.1:([0-9]+).*|\1|p' "$1" | head -n1; }

log "starting the gateways ($WORKERS workers each)"
start_gateway gw-rr "$WORKERS" "${backend_flags[@]}" --workers "$WORKERS" --strategy round-robin --listen 127.0.0.1:0 --no-demo
wait_line "$TMP/gw-rr.out" '^gateway listening on' "$STARTED_PID"
GW_RR_PID=$STARTED_PID
GW_RR_PORT=$(gateway_port "$TMP/gw-rr.out")
start_gateway gw-ch "$WORKERS" "${backend_flags[@]}" --workers "$WORKERS" --strategy consistent --key query:key --listen 127.0.0.1:0 --no-demo
wait_line "$TMP/gw-ch.out" '^gateway listening on' "$STARTED_PID"
GW_CH_PID=$STARTED_PID
GW_CH_PORT=$(gateway_port "$TMP/gw-ch.out")
wait_http "$GW_RR_PORT"
wait_http "$GW_CH_PORT"

# ---------------------------------------------------------------------------------------------
# nginx: one master, $WORKERS workers, two servers (round robin, consistent hash).
write_nginx_conf() {
	local rr_port=$1 ch_port=$2 servers="" url user=""
	for url in "${BACKENDS[@]}"; do servers+="        server ${url#http://};"$'\n'; done
	# As root, nginx would switch its workers to `nobody`, who cannot use the 0700 temp dir.
	[[ $(id -u) != 0 ]] || user="user root root;"
	cat >"$TMP/nginx.conf" <<EOF
$user
daemon off;
master_process on;
worker_processes $WORKERS;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx-client-body;
    proxy_temp_path $TMP/nginx-proxy;
    fastcgi_temp_path $TMP/nginx-fastcgi;
    uwsgi_temp_path $TMP/nginx-uwsgi;
    scgi_temp_path $TMP/nginx-scgi;
    # The gateway does not close client connections after N requests; nginx would after 1000.
    keepalive_requests 1000000;
    upstream rr {
$servers        keepalive 64;
        keepalive_requests 1000000;
    }
    upstream ch {
        hash \$arg_key consistent;
$servers        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$rr_port;
        location / {
            proxy_pass http://rr;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The headers the gateway adds, so that both proxies send the backends the same.
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
    server {
        listen 127.0.0.1:$ch_port;
        location / {
            proxy_pass http://ch;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The headers the gateway adds, so that both proxies send the backends the same.
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF
}

log "starting nginx ($WORKERS worker processes)"
NGINX_PID=""
for attempt in 1 2 3 4 5; do
	NGINX_RR_PORT=$(free_port)
	NGINX_CH_PORT=$(free_port)
	[[ $NGINX_RR_PORT != "$NGINX_CH_PORT" ]] || continue
	write_nginx_conf "$NGINX_RR_PORT" "$NGINX_CH_PORT"
	nginx -p "$TMP" -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" -t -q || die "bad nginx config ($TMP/nginx.conf)"
	nginx -p "$TMP" -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" >"$TMP/nginx.out" 2>&1 </dev/null &
	pid=$!
	PIDS+=("$pid")
	ok=0
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		if http_get "$NGINX_RR_PORT" / | head -n1 | grep -q ' 200' &&
			http_get "$NGINX_CH_PORT" / | head -n1 | grep -q ' 200'; then
			ok=1
			break
		fi
		sleep 0.1
	done
	if ((ok)); then
		NGINX_PID=$pid
		break
	fi
	log "nginx did not start (attempt $attempt), retrying with other ports:"
	tail -n3 "$TMP/nginx-error.log" >&2 || true
	kill -TERM "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
done
[[ -n $NGINX_PID ]] || die "nginx did not start"

LEAN_PORT=""
LEAN_PID=""
if [[ $LEAN == 1 ]]; then
	LEAN_PORT=$(free_port)
	log "starting the lean proxy ($WORKERS workers, mode $LEAN_MODE) on port $LEAN_PORT"
	"$LEAN_BIN" --mode "$LEAN_MODE" --workers "$WORKERS" --listen "127.0.0.1:$LEAN_PORT" "${BACKENDS[@]}" \
		>"$TMP/lean.out" 2>&1 </dev/null &
	LEAN_PID=$!
	PIDS+=("$LEAN_PID")
	wait_line "$TMP/lean.out" '^lean-proxy listening on' "$LEAN_PID"
	wait_http "$LEAN_PORT"
fi

# ---------------------------------------------------------------------------------------------
# Sanity: every contender answers, round robin reaches all 3 backends, and a key always goes to
# the same backend.
handled_by() { http_get "$1" "$2" | sed -nE 's/^Request handled by: (.*)$/\1/p' | tr -d '\r'; }
for port in "$GW_RR_PORT" "$NGINX_RR_PORT" ${LEAN_PORT:+"$LEAN_PORT"}; do
	seen=$(for _ in 1 2 3 4 5 6; do handled_by "$port" /; done | sort -u | wc -l)
	((seen == 3)) || die "round robin on port $port reached $seen backends, not 3"
done
for port in "$GW_CH_PORT" "$NGINX_CH_PORT"; do
	for key in k1 k2 k3; do
		seen=$(for _ in 1 2 3; do handled_by "$port" "/?key=$key"; done | sort -u | wc -l)
		((seen == 1)) || die "key $key on port $port reached $seen backends, not 1"
	done
done

cat >"$TMP/keys.lua" <<EOF
-- Cycles through /?key=k1 .. /?key=k$KEYS (each wrk thread on its own), requests prebuilt.
local requests, i, n = {}, 0, $KEYS
init = function(args)
  for k = 1, n do requests[k] = wrk.format("GET", "/?key=k" .. k) end
end
request = function()
  i = i % n + 1
  return requests[i]
end
EOF

# ---------------------------------------------------------------------------------------------
# Measurement.

# wrk_run OUT PORT SCRIPT DURATION
wrk_run() {
	local out=$1 port=$2 script=$3 dur=$4 args=()
	[[ -z $script ]] || args=(-s "$script")
	# In the background, and waited for, so that a signal to this script is handled at once
	# (cleanup stops wrk by its PID) rather than after the run.
	timeout --signal=INT --kill-after=5 $(($(seconds "$dur") + 30)) \
		wrk -t"$THREADS" -c"$CONNECTIONS" -d"$dur" --latency "${args[@]}" "http://127.0.0.1:$port/" >"$out" 2>&1 </dev/null &
	WRK_PID=$!
	wait "$WRK_PID" || { cat "$out" >&2; die "wrk failed against 127.0.0.1:$port"; }
	WRK_PID=""
}

# Requests/s, p99 in ms and errors (non-2xx/3xx + socket errors) of a wrk output.
parse_wrk() {
	awk '
		/^Requests\/sec:/ { rps = $2 }
		$1 == "99%" {
			v = $2; unit = v; sub(/^[0-9.]+/, "", unit); sub(/[a-z]+$/, "", v)
			f = (unit == "us") ? 0.001 : (unit == "ms") ? 1 : (unit == "s") ? 1000 : (unit == "m") ? 60000 : 1
			p99 = v * f
		}
		/Non-2xx or 3xx responses:/ { err += $NF }
		/Socket errors:/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) { x = $i; sub(/,/, "", x); err += x } }
		END { printf "%s %.3f %d\n", rps, p99, err }
	' "$1"
}

# CPU time used so far by the processes PID..., in clock ticks: "user system" (utime and stime
# of /proc/PID/stat, read after the command name, which may hold spaces).
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
cpu_ticks() {
	local pid u=0 s=0 a b
	for pid in "$@"; do
		read -r a b < <(sed 's/^.*) //' "/proc/$pid/stat" | awk '{ print $12, $13 }') || continue
		u=$((u + a))
		s=$((s + b))
	done
	echo "$u $s"
}

# The processes whose CPU time is a contender's: the proxy's (nginx: its workers), or the
# backends' for the direct runs.
contender_pids() {
	case $1 in
	gateway) [[ $2 == round-robin ]] && echo "$GW_RR_PID" || echo "$GW_CH_PID" ;;
	nginx) pgrep -P "$NGINX_PID" | tr '\n' ' ' ;;
	lean) echo "$LEAN_PID" ;;
	direct) echo "$BACKENDS_PID" ;;
	esac
}

# Median of the numbers on stdin (mean of the two middle ones for an even count).
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

declare -A RPS P99 ERR USR SYS
# bench LABEL: alternates gateway, nginx, direct for $ROUNDS rounds.
bench() {
	local label=$1 gw=$2 ng=$3 script=$4 lean=${5:-} r c port out pids u0 s0 u1 s1 n
	local -A ports=([gateway]=$gw [nginx]=$ng [direct]=$DIRECT_PORT [lean]=$lean)
	local contenders=(gateway nginx direct)
	[[ -z $lean ]] || contenders+=(lean)
	for ((r = 1; r <= ROUNDS; r++)); do
		for c in "${contenders[@]}"; do
			port=${ports[$c]}
			out="$TMP/wrk-$label-$c-$r.txt"
			if ((WARMUP_S > 0)); then wrk_run "$out.warmup" "$port" "$script" "$WARMUP"; fi
			pids=$(contender_pids "$c" "$label")
			# shellcheck disable=SC2086 # a list of PIDs
			read -r u0 s0 < <(cpu_ticks $pids)
			wrk_run "$out" "$port" "$script" "$DURATION"
			# shellcheck disable=SC2086
			read -r u1 s1 < <(cpu_ticks $pids)
			read -r rps p99 err < <(parse_wrk "$out")
			n=$(awk '/ requests in / { print $1 }' "$out")
			if [[ -n $n ]] && ((n > 0)); then
				USR[$label/$c]+="$(awk -v t=$((u1 - u0)) -v n="$n" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }') "
				SYS[$label/$c]+="$(awk -v t=$((s1 - s0)) -v n="$n" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }') "
			fi
			log "$label round $r/$ROUNDS: $c $rps req/s, p99 ${p99} ms, $err errors"
			RPS[$label/$c]+="$rps "
			P99[$label/$c]+="$p99 "
			ERR[$label/$c]=$((${ERR[$label/$c]:-0} + err))
		done
	done
}

log "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, warm-up $WARMUP, $ROUNDS rounds alternated"
bench round-robin "$GW_RR_PORT" "$NGINX_RR_PORT" "" "$LEAN_PORT"
bench consistent "$GW_CH_PORT" "$NGINX_CH_PORT" "$TMP/keys.lua"

med() { tr ' ' '\n' <<<"$1" | grep . | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

echo
echo "tower-lb gateway vs nginx vs direct: 3 loopback backends, wrk -t$THREADS -c$CONNECTIONS -d$DURATION"
echo "median of $ROUNDS alternated rounds (req/s and p99 each); gateway: $WORKERS worker threads,"
echo "nginx: worker_processes $WORKERS; backends: $BACKEND_WORKERS tokio workers; $NPROC CPUs shared by all"
for label in round-robin consistent; do
	echo
	case $label in
	round-robin) echo "round robin (GET /):" ;;
	consistent) echo "consistent hash by query key (GET /?key=k1..k$KEYS; gateway --key query:key, nginx hash \$arg_key consistent):" ;;
	esac
	printf '  %-10s %12s %10s %8s %12s %12s %14s %15s\n' contender 'requests/s' 'p99 ms' errors 'user us/req' 'sys us/req' 'vs nginx' 'vs direct'
	gw_rps=$(med "${RPS[$label/gateway]}")
	ng_rps=$(med "${RPS[$label/nginx]}")
	di_rps=$(med "${RPS[$label/direct]}")
	gw_p99=$(med "${P99[$label/gateway]}")
	ng_p99=$(med "${P99[$label/nginx]}")
	di_p99=$(med "${P99[$label/direct]}")
	contenders=(gateway nginx direct)
	[[ $label != round-robin || -z $LEAN_PORT ]] || contenders+=(lean)
	for c in "${contenders[@]}"; do
		rps=$(med "${RPS[$label/$c]}")
		p99=$(med "${P99[$label/$c]}")
		printf '  %-10s %12.0f %10.2f %8d %12s %12s' "$c" "$rps" "$p99" "${ERR[$label/$c]}" \
			"$(med "${USR[$label/$c]:-}")" "$(med "${SYS[$label/$c]:-}")"
		if [[ $c == gateway || $c == lean ]]; then
			# The lean proxy's row has its own ratios, to nginx and to the direct backend.
			printf ' %14s %15s' "$(ratio "$rps" "$ng_rps")" "$(ratio "$rps" "$di_rps")"
		fi
		echo
	done
	printf '  %-10s %12s %10s %8s %12s %12s %14s %15s\n' 'p99 ratio' '' '' '' '' '' "$(ratio "$gw_p99" "$ng_p99")" "$(ratio "$gw_p99" "$di_p99")"
done
