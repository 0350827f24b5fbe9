# ensure_node: puts a Node.js that still receives security fixes first on PATH (22.22+ or 24+;
# see package.json "engines"). When the machine's node is older (these machines ship Node 20),
# it installs the pinned Node 24 from the npm registry (the node-linux-<arch> package holds the
# official binary) into $OUTBOXD_CACHE/node-v<version>, once. Sourced, never run.

node_supported() { # VERSION like v24.1.0
  local v="${1#v}" major minor
  major="${v%%.*}"
  minor="${v#*.}"
  minor="${minor%%.*}"
  [[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]] || return 1
  ((major == 22 && minor >= 22)) || ((major == 24)) || ((major >= 26))
}

ensure_node() {
  local current
  current="$(node --version 2>/dev/null || true)"
  if node_supported "$current"; then return 0; fi
  local version arch dir
  version="$(pinned node)"
  dir="$OUTBOXD_CACHE/node-v$version"
  if [ ! -x "$dir/bin/node" ]; then
    case "$(uname -s)/$(uname -m)" in
      Linux/x86_64) arch=x64 ;;
      Linux/aarch64) arch=arm64 ;;
      *) die "Node.js ${current:-(none)} is too old and no Node $version package exists for $(uname -s)/$(uname -m): install Node.js 24 (https://nodejs.org) and put it first on PATH" ;;
    esac
    command -v npm >/dev/null || die "Node.js ${current:-(none)} is too old and npm is missing to fetch Node $version: install Node.js 24 and put it first on PATH"
    note "Node.js ${current:-(none)} is past end of life; installing Node $version into $dir"
    local tmp
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "node-linux-$arch@$version" >/dev/null) ||
      { rm -rf "$tmp"; die "fetching node-linux-$arch@$version from the npm registry failed: install Node.js 24 by hand and put it first on PATH"; }
    mkdir -p "$tmp/x" && tar -xzf "$tmp"/node-linux-*.tgz -C "$tmp/x"
    mkdir -p "$OUTBOXD_CACHE"
    rm -rf "$dir" && mv "$tmp/x/package" "$dir"
    rm -rf "$tmp"
  fi
  "$dir/bin/node" --version >/dev/null || die "$dir/bin/node does not run on this machine: install Node.js 24 by hand and put it first on PATH"
  # npm reads its global config from <node's prefix>/etc/npmrc: give this Node the machine's
  # (registry, proxy, CA file), or npm run with it would not reach the registry the same way.
  if [ ! -f "$dir/etc/npmrc" ]; then
    local globalrc
    globalrc="$(npm config get globalconfig 2>/dev/null || true)"
    if [ -n "$globalrc" ] && [ -f "$globalrc" ]; then mkdir -p "$dir/etc" && cp "$globalrc" "$dir/etc/npmrc"; fi
  fi
  export PATH="$dir/bin:$PATH"
}
