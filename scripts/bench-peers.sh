#!/usr/bin/env bash
# Backend selection of tower-lb against pingora-load-balancing: installs what the peer bench
# package needs to build, then runs it. See --help.
set -euo pipefail

usage() {
	cat <<'EOF'
scripts/bench-peers.sh: tower-lb's selection against pingora-load-balancing's, one criterion run

Runs the criterion bench of the separate package benches/peers (benches/peers/benches/selection.rs):
round robin, random, consistent hash (ketama) and hash-mod-N selection over N = 3, 100 and 1000
loopback backends (in memory, no network traffic), tower-lb and pingora-load-balancing side by
side, and prints the ratios tower-lb / pingora of the run per N.

pingora-load-balancing builds pingora-core, whose flate2 uses the zlib-ng backend (libz-ng-sys,
built with cmake) and whose zstd-sys compiles C. If cmake or a C compiler is missing, it is
installed with apt-get (root, Debian). The package has a workspace and a target directory of its
own (benches/peers/target), so the main package's builds never include pingora.

USAGE:
    scripts/bench-peers.sh [--help] [-- CRITERION_OPTIONS...]

Options after `--` go to criterion, e.g. a quicker run or one group only:
    scripts/bench-peers.sh -- --warm-up-time 1 --measurement-time 2
    scripts/bench-peers.sh -- 'N=1000'

ENVIRONMENT:
    SKIP_INSTALL=1  do not apt-get install (cmake and cc must be on PATH)
EOF
}

case "${1:-}" in
-h | --help) usage; exit 0 ;;
--) shift ;;
"") ;;
*) echo "error: unexpected argument ${1} (see --help)" >&2; exit 2 ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Debian packages for the commands that are missing.
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)

if ((${#missing[@]})); then
	[[ ${SKIP_INSTALL:-0} == 1 ]] && die "missing ${missing[*]} and SKIP_INSTALL=1"
	command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]}, and no apt-get to install them"
	[[ $(id -u) == 0 ]] || die "missing ${missing[*]}: run as root to install them, or install them"
	log "installing ${missing[*]} with apt-get"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

command -v cargo >/dev/null 2>&1 || die "cargo is not on PATH"

log "cargo bench --manifest-path benches/peers/Cargo.toml -- $*"
cd "$ROOT"
exec cargo bench --manifest-path benches/peers/Cargo.toml -- "$@"
