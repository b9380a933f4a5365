# Sourced by the scripts that drive external tools: `ensure_tools TOOL[:PACKAGE] ...` installs
# with apt-get the packages of the tools that are missing (a tool counts as present on the
# PATH or in /usr/sbin, where Debian puts nginx).
ensure_tools() {
  local missing=() spec tool
  for spec in "$@"; do
    tool=${spec%%:*}
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("${spec#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}
