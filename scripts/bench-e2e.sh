#!/usr/bin/env bash
# End-to-end comparison of the gateway example with tower-lb against the same gateway with
# tower's p2c balancer behind tower's Buffer, with one backend directly and nginx as references,
# and the balancer's share of the gateway's CPU (perf). See --help.
set -euo pipefail

usage() {
	cat <<'EOF'
scripts/bench-e2e.sh: the gateway example with tower-lb vs the same gateway with tower's p2c
balancer behind tower's Buffer, end to end; one backend directly and nginx as references

Starts 3 loopback HTTP backends (the gateway binary's embedded backends, in one process) and,
in front of them, with the same flags but the balancer:
  rr      the gateway, tower-lb round robin
  ch      the gateway, tower-lb consistent hashing on the `key` query parameter
  p2c     the gateway with --balancer tower-p2c: tower::balance::p2c::Balance over
          pending-request load, behind tower::buffer::Buffer
  nginx   nginx with the same upstreams, round robin (a reference: it measures HTTP engines)
  direct  backend 1 without a proxy
all on 127.0.0.1 ports picked free. Then runs wrk against each in turn, round after round
(rr, ch, p2c, nginx, direct, rr, ...; every contender gets /?key=k1 .. /?key=k$KEYS from a wrk
Lua script), and prints the medians over the rounds of requests/s, p99 latency and CPU time per
request of the contender's own processes (user + system, from /proc), with the bars' ratios:
rr / p2c and ch / p2c in requests/s (>= 1: tower-lb's gateway serves more), p2c / rr and
p2c / ch in CPU per request (>= 1: tower-lb's gateway spends less), and gateway / nginx as a
reference.

Last, unless PERF=0, one more rr run under `perf record -e cpu-clock` gives the balancer's
share of the gateway's CPU: the samples in tower-lb's functions (symbols under tower_lb::) over
all of the gateway's samples. tower-lb code inlined into another crate's function counts as
that function's, so the share is a lower bound; the top symbols are listed with it.

Installs nginx, wrk and perf (linux-perf) with apt-get if missing (root, Debian), builds the
gateway example in release mode. Every process it starts is stopped by PID on exit; the temp
dir is removed.

USAGE:
    scripts/bench-e2e.sh [--help]

ENVIRONMENT (defaults in brackets):
    DURATION        wrk duration of each measured run, wrk syntax (10s, 1m)          [10s]
    WARMUP          wrk duration of the warm-up run before each measured run        [2s]
    THREADS         wrk threads (-t)                                                 [2]
    CONNECTIONS     wrk connections (-c)                                             [64]
    ROUNDS          measured runs per contender, alternated; the median is shown     [5]
    WORKERS         gateway tokio worker threads (--workers) and nginx
                    worker_processes, matched                                        [nproc]
    BACKEND_WORKERS tokio worker threads of the backends process                     [nproc]
    BACKEND_ARGS    extra gateway flags for the backends process                     [--work 0]
    KEYS            distinct keys cycled by the wrk script                           [1000]
    PERF=0          skip the perf run
    SKIP_INSTALL=1  do not apt-get install (nginx, wrk and perf must be on PATH)
    GATEWAY_BIN     use this gateway binary instead of building the example
    KEEP_TMP=1      keep the temp dir (configs, logs, wrk and perf outputs) and print its path

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
ROUNDS=${ROUNDS:-5}
NPROC=$(nproc 2>/dev/null || echo 2)
WORKERS=${WORKERS:-$NPROC}
BACKEND_WORKERS=${BACKEND_WORKERS:-$NPROC}
BACKEND_ARGS=${BACKEND_ARGS:---work 0}
KEYS=${KEYS:-1000}
PERF=${PERF:-1}

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
export PATH="$PATH:/usr/sbin:/sbin"
packages=()
command -v nginx >/dev/null 2>&1 || packages+=(nginx)
command -v wrk >/dev/null 2>&1 || packages+=(wrk)
[[ $PERF == 0 ]] || command -v perf >/dev/null 2>&1 || packages+=(linux-perf)
if [[ ${SKIP_INSTALL:-0} != 1 && ${#packages[@]} -gt 0 ]]; then
	[[ $(id -u) == 0 ]] || die "${packages[*]} missing: install them (apt-get install ${packages[*]}) or run as root"
	log "installing ${packages[*]} (apt-get)"
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
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"
	} >&2 || rc=$?
	[[ -z $policy ]] || rm -f "$policy"
	((rc == 0)) || die "apt-get failed ($rc)"
fi
command -v nginx >/dev/null || die "nginx not found"
command -v wrk >/dev/null || die "wrk not found"
[[ $PERF == 0 ]] || command -v perf >/dev/null || die "perf not found (PERF=0 skips the perf run)"

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

# ---------------------------------------------------------------------------------------------
# The gateways: the same binary and flags, $WORKERS worker threads each; only the balancer
# differs.
backend_flags=()
for url in "${BACKENDS[@]}"; do backend_flags+=(--backend "$url"); done
gateway_port() { sed -nE 's|^gateway listening on http://127\.0\.0\.1:([0-9]+).*|\1|p' "$1" | head -n1; }
declare -A PORT PID
start_contender() {
	local name=$1
	shift
	start_gateway "$name" "$WORKERS" "${backend_flags[@]}" --workers "$WORKERS" --listen 127.0.0.1:0 --no-demo "$@"
	wait_line "$TMP/$name.out" '^gateway listening on' "$STARTED_PID"
	PID[$name]=$STARTED_PID
	PORT[$name]=$(gateway_port "$TMP/$name.out")
	wait_http "${PORT[$name]}"
}
log "starting the gateways ($WORKERS workers each)"
start_contender rr --strategy round-robin
start_contender ch --strategy consistent --key query:key
start_contender p2c --balancer tower-p2c
PORT[direct]=${BACKEND_PORTS[0]}
PID[direct]=$BACKENDS_PID

# ---------------------------------------------------------------------------------------------
# nginx: one master, $WORKERS workers, round robin over the same backends, keep-alive to them.
write_nginx_conf() {
	local port=$1 servers="" url user=""
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
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://rr;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The headers the gateway sets, so that both proxies send the backends the same.
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
	port=$(free_port)
	write_nginx_conf "$port"
	nginx -p "$TMP" -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" -t -q || die "bad nginx config ($TMP/nginx.conf)"
	nginx -p "$TMP" -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" >"$TMP/nginx.out" 2>&1 </dev/null &
	pid=$!
	PIDS+=("$pid")
	ok=0
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		if http_get "$port" / | head -n1 | grep -q ' 200'; then
			ok=1
			break
		fi
		sleep 0.1
	done
	if ((ok)); then
		NGINX_PID=$pid
		PORT[nginx]=$port
		break
	fi
	log "nginx did not start (attempt $attempt), retrying with another port:"
	tail -n3 "$TMP/nginx-error.log" >&2 || true
	kill -TERM "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
done
[[ -n $NGINX_PID ]] || die "nginx did not start"

# ---------------------------------------------------------------------------------------------
# Sanity: round robin reaches all 3 backends, and a key always goes to the same backend.
handled_by() { http_get "$1" "$2" | sed -nE 's/^Request handled by: (.*)$/\1/p' | tr -d '\r'; }
for c in rr nginx; do
	seen=$(for _ in 1 2 3 4 5 6; do handled_by "${PORT[$c]}" /; done | sort -u | wc -l)
	((seen == 3)) || die "round robin of $c reached $seen backends, not 3"
done
for key in k1 k2 k3; do
	seen=$(for _ in 1 2 3; do handled_by "${PORT[ch]}" "/?key=$key"; done | sort -u | wc -l)
	((seen == 1)) || die "key $key reached $seen backends through ch, not 1"
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

# wrk_run OUT PORT DURATION
wrk_run() {
	local out=$1 port=$2 dur=$3
	# In the background, and waited for, so that a signal to this script is handled at once
	# (cleanup stops wrk by its PID) rather than after the run.
	timeout --signal=INT --kill-after=5 $(($(seconds "$dur") + 30)) \
		wrk -t"$THREADS" -c"$CONNECTIONS" -d"$dur" --latency -s "$TMP/keys.lua" "http://127.0.0.1:$port/" >"$out" 2>&1 </dev/null &
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

# CPU time used so far by the processes PID..., in clock ticks (utime + stime of
# /proc/PID/stat, read after the command name, which may hold spaces).
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
cpu_ticks() {
	local pid t=0 a b
	for pid in "$@"; do
		read -r a b < <(sed 's/^.*) //' "/proc/$pid/stat" | awk '{ print $12, $13 }') || continue
		t=$((t + a + b))
	done
	echo "$t"
}

# The processes whose CPU time is a contender's: the gateway's, nginx's workers, or the
# backends' for the direct runs.
contender_pids() {
	case $1 in
	nginx) pgrep -P "$NGINX_PID" | tr '\n' ' ' ;;
	*) echo "${PID[$1]}" ;;
	esac
}

# Median of the numbers on stdin (mean of the two middle ones for an even count).
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

CONTENDERS=(rr ch p2c nginx direct)
declare -A RPS P99 ERR CPU
log "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, warm-up $WARMUP, $ROUNDS rounds alternated"
for ((r = 1; r <= ROUNDS; r++)); do
	for c in "${CONTENDERS[@]}"; do
		port=${PORT[$c]}
		out="$TMP/wrk-$c-$r.txt"
		if ((WARMUP_S > 0)); then wrk_run "$out.warmup" "$port" "$WARMUP"; fi
		pids=$(contender_pids "$c")
		# shellcheck disable=SC2086 # a list of PIDs
		t0=$(cpu_ticks $pids)
		wrk_run "$out" "$port" "$DURATION"
		# shellcheck disable=SC2086
		t1=$(cpu_ticks $pids)
		if ! grep -q '^Requests/sec:' "$out"; then
			# A run that reported nothing (seen once on a loaded machine): run it again.
			log "round $r/$ROUNDS: $c reported no result ($(wc -c <"$out") bytes of output); running it again"
			# shellcheck disable=SC2086
			t0=$(cpu_ticks $pids)
			wrk_run "$out" "$port" "$DURATION"
			# shellcheck disable=SC2086
			t1=$(cpu_ticks $pids)
			grep -q '^Requests/sec:' "$out" || die "wrk reported no result against $c twice ($out)"
		fi
		read -r rps p99 err < <(parse_wrk "$out")
		n=$(awk '/ requests in / { print $1 }' "$out")
		if [[ -n $n ]] && ((n > 0)); then
			CPU[$c]+="$(awk -v t=$((t1 - t0)) -v n="$n" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }') "
		fi
		log "round $r/$ROUNDS: $c $rps req/s, p99 $p99 ms, $err errors"
		RPS[$c]+="$rps "
		P99[$c]+="$p99 "
		ERR[$c]=$((${ERR[$c]:-0} + err))
	done
done

# ---------------------------------------------------------------------------------------------
# The balancer's share of the gateway's CPU, from one more round-robin run under perf.
PERF_LINE=""
if [[ $PERF != 0 ]]; then
	log "perf record -e cpu-clock on the rr gateway during one more $DURATION run"
	perf record -e cpu-clock -F 1999 -p "${PID[rr]}" -o "$TMP/perf.data" -- sleep "$DURATION_S" \
		>"$TMP/perf-record.out" 2>&1 &
	perf_pid=$!
	PIDS+=("$perf_pid")
	wrk_run "$TMP/wrk-perf.txt" "${PORT[rr]}" "$DURATION"
	wait "$perf_pid" || { cat "$TMP/perf-record.out" >&2; die "perf record failed"; }
	perf report -i "$TMP/perf.data" --no-children --sort symbol --stdio -q 2>/dev/null |
		awk 'NF >= 3 && $1 ~ /%$/ { p = $1; sub(/%$/, "", p); $1 = ""; $2 = ""; print p "\t" substr($0, 3) }' \
			>"$TMP/perf-symbols.tsv"
	# tower-lb's own functions: its items, its types' impls and their drops; not the functions
	# of other crates that merely take a tower-lb type as a parameter.
	awk -F'\t' '$2 ~ /^(<|core::ptr::drop_in_place<)?tower_lb::/' "$TMP/perf-symbols.tsv" >"$TMP/perf-tower-lb.tsv"
	share=$(awk -F'\t' '{ s += $1 } END { printf "%.2f", s }' "$TMP/perf-tower-lb.tsv")
	PERF_LINE="tower-lb's share of the rr gateway's CPU (perf -e cpu-clock, self time of tower-lb's functions): $share%"
fi

med() { tr ' ' '\n' <<<"$1" | grep . | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "-" }'; }

echo
echo "gateway example, tower-lb vs tower p2c + Buffer: 3 loopback backends, wrk -t$THREADS -c$CONNECTIONS -d$DURATION, GET /?key=k1..k$KEYS"
echo "median of $ROUNDS alternated rounds; gateways: $WORKERS tokio workers; nginx: worker_processes $WORKERS;"
echo "backends: $BACKEND_WORKERS tokio workers; $NPROC CPUs shared by all; load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
printf '  %-8s %12s %10s %8s %14s\n' contender 'requests/s' 'p99 ms' errors 'CPU us/req'
for c in "${CONTENDERS[@]}"; do
	printf '  %-8s %12.0f %10.2f %8d %14s\n' "$c" "$(med "${RPS[$c]}")" "$(med "${P99[$c]}")" "${ERR[$c]}" "$(med "${CPU[$c]:-}")"
done
echo
echo "bars (>= 1.00 passes):"
for c in rr ch; do
	echo "  $c / p2c requests/s: $(ratio "$(med "${RPS[$c]}")" "$(med "${RPS[p2c]}")")    p2c / $c CPU per request: $(ratio "$(med "${CPU[p2c]}")" "$(med "${CPU[$c]}")")"
done
echo "reference (not a bar):"
echo "  rr / nginx requests/s: $(ratio "$(med "${RPS[rr]}")" "$(med "${RPS[nginx]}")")    nginx / rr CPU per request: $(ratio "$(med "${CPU[nginx]}")" "$(med "${CPU[rr]}")")"
echo "  rr / direct requests/s: $(ratio "$(med "${RPS[rr]}")" "$(med "${RPS[direct]}")")"
if [[ -n $PERF_LINE ]]; then
	echo
	echo "$PERF_LINE"
	echo "  its symbols:"
	awk 'NR <= 8 { print "    " substr($0, 1, 160) }' "$TMP/perf-tower-lb.tsv"
	echo "  the gateway's top symbols:"
	awk 'NR <= 8 { print "    " substr($0, 1, 160) }' "$TMP/perf-symbols.tsv"
fi
