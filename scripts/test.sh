#!/usr/bin/env bash
# The whole test suite, from a clean clone on Debian with Rust: installs the external tools the
# end-to-end tests drive (curl, openssl, nginx) when they are missing, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/ensure-tools.sh
ensure_tools curl openssl nginx

# One build of the binary the end-to-end suite starts, then every test in the workspace.
cargo test --workspace --all-targets "$@"
# The end-to-end suite again with one worker (every connection on the accepting thread instead
# of handed to the other). The same test binary, run directly: `cargo test -p egret` would
# resolve features for one package instead of the workspace and rebuild the dependency graph
# (a second copy of target/ that once filled the CI machine's disk).
it_bin=$(cargo test --workspace --all-targets --no-run --message-format=json "$@" 2>/dev/null |
  grep '"name":"it"' | grep -o '"executable":"[^"]*"' | cut -d'"' -f4)
if [ -z "$it_bin" ]; then
  echo "scripts/test.sh: could not find the end-to-end test binary" >&2
  exit 1
fi
# This pass also releases idle HTTP/1.1 connections' buffers after every response (the
# default waits 100 ms), so every end-to-end test goes through that path too.
EGRET_IT_WORKERS=1 EGRET_IT_RELEASE_DELAY=0s "$it_bin"
