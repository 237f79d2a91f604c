#!/usr/bin/env bash
# Builds the Kubernetes test environment used by tests/k8s from the Go module proxy:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (k8s.io/kubernetes)
#   etcd                                                              (go.etcd.io/etcd/server/v3)
#   kwok                                                              (sigs.k8s.io/kwok, simulated nodes)
# at the versions pinned in versions.env, into a cache directory keyed by those versions and a
# short sha256 of what else decides the binaries (versions.env, the wrapper modules' go.mod,
# go.sum and Go sources, this script, the Go version and GOFLAGS, the target GOOS/GOARCH). When
# the cache already holds them it does nothing (a warm machine skips the build).
#
# Usage: hack/k8s-testenv/build.sh                  build what is missing; last line: the bin dir
#        hack/k8s-testenv/build.sh --print-bin-dir  print the bin dir, build nothing; never
#                                                   fetches Go (fails, saying so, without one)
#        hack/k8s-testenv/build.sh --update-modules regenerate kube/, etcd/, kwok/ go.mod + go.sum
#                                                   from versions.env (after changing a version)
#        hack/k8s-testenv/build.sh --go-version     the Go it builds with (fetched if missing)
# Environment: PILOTHOUSE_K8S_CACHE   cache root (default ${XDG_CACHE_HOME:-~/.cache}/pilothouse/k8s-testenv)
#              PILOTHOUSE_K8S_LOCK_TIMEOUT  seconds to wait for another build of the same cache
#                                           (default 3600), then fail
#              the usual Go variables (GOPROXY, GOMODCACHE, GOCACHE, GOFLAGS, GOOS, GOARCH)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
. "$HERE/versions.env"
# a machine (a CI container, a service) may run this without HOME
HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export HOME

CACHE_ROOT="${PILOTHOUSE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pilothouse/k8s-testenv}"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok)
LOCK_TIMEOUT="${PILOTHOUSE_K8S_LOCK_TIMEOUT:-3600}"
KEY="" BIN=""  # set by set_key, once the Go that builds is known

log() { echo "==> [k8s-testenv] $*" >&2; }

complete() {
  [ -f "$BIN/.complete" ] || return 1
  local b
  for b in "${BINARIES[@]}"; do [ -x "$BIN/$b" ] || return 1; done
}

go_new_enough() {  # the wrapper modules say `go 1.26.0`
  command -v go >/dev/null || return 1
  local have
  have="$(go env GOVERSION 2>/dev/null)" || return 1
  [ "$(printf '%s\n' go1.26 "$have" | sort -V | head -1)" = go1.26 ]
}

# The Go to build with: one on PATH that is new enough, else the one fetched earlier into the
# cache; with fetch=no (--print-bin-dir) it never downloads and fails when there is neither.
need_go() {
  local fetch="${1:-yes}"
  if ! go_new_enough; then
    if [ ! -x "$CACHE_ROOT/go$GO_VERSION/bin/go" ]; then
      if [ "$fetch" != yes ]; then
        echo "k8s-testenv: no Go 1.26 or newer on PATH nor go$GO_VERSION in $CACHE_ROOT," \
          "and the cache key needs \`go env GOVERSION\`; --print-bin-dir does not fetch Go:" \
          "run hack/k8s-testenv/build.sh (it fetches Go and builds)" >&2
        exit 1
      fi
      install_go
    fi
    export PATH="$CACHE_ROOT/go$GO_VERSION/bin:$PATH"
  fi
  export GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:-} -buildvcs=false" CGO_ENABLED=0
}

# No Go here (Debian's is too old for these modules): fetch the Go distribution from the
# module proxy, where it is the module golang.org/toolchain, and check its pinned hash.
install_go() {
  if [ "$(uname -s)-$(uname -m)" != Linux-x86_64 ]; then
    echo "k8s-testenv: Go $GO_VERSION or newer is needed (https://go.dev/dl/)" >&2
    exit 1
  fi
  local proxy="${GOPROXY:-https://proxy.golang.org}"
  proxy="${proxy%%,*}"
  log "no Go found: fetching go$GO_VERSION from $proxy (golang.org/toolchain)"
  python3 - "$proxy/golang.org/toolchain/@v/v0.0.1-go$GO_VERSION.linux-amd64.zip" \
    "$CACHE_ROOT/go$GO_VERSION" "$GO_TOOLCHAIN_H1_LINUX_AMD64" <<'PY'
import base64, hashlib, io, os, shutil, sys, urllib.request, zipfile

url, dest, want = sys.argv[1:]
with urllib.request.urlopen(url, timeout=600) as response:
    archive = zipfile.ZipFile(io.BytesIO(response.read()))
files = sorted(i.filename for i in archive.infolist() if not i.is_dir())
summary = "".join(f"{hashlib.sha256(archive.read(n)).hexdigest()}  {n}\n" for n in files)
got = "h1:" + base64.b64encode(hashlib.sha256(summary.encode()).digest()).decode()
if got != want:
    sys.exit(f"k8s-testenv: {url}: hash {got}, expected {want}")
tmp = dest + ".tmp"
shutil.rmtree(tmp, ignore_errors=True)
for name in files:
    path = os.path.join(tmp, name.split("/", 2)[2])  # golang.org/toolchain@VERSION/...
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as out:
        out.write(archive.read(name))
    if "/bin/" in name or "/pkg/tool/" in name:
        os.chmod(path, 0o755)
shutil.rmtree(dest, ignore_errors=True)
os.rename(tmp, dest)
PY
}

# The cache key: the versions, readable, and a short sha256 over every input of the build
# that is committed here (versions.env, the wrapper modules' go.mod, go.sum and .go files, this
# script) plus the Go version, GOFLAGS and the target platform, so that a changed go.sum, Go
# source, build flag, Go release or GOOS/GOARCH never reuses binaries built from something else.
# $1: fetch Go when there is none (yes) or fail (no).
set_key() {
  need_go "${1:-yes}"
  local digest
  digest="$(
    cd "$HERE" &&
      sha256sum versions.env kube/go.mod kube/go.sum kube/tools.go etcd/go.mod etcd/go.sum \
        etcd/main.go kwok/go.mod kwok/go.sum kwok/tools.go build.sh &&
      go env GOOS GOARCH GOVERSION GOFLAGS
  )" || { echo "k8s-testenv: cannot compute the cache key" >&2; exit 1; }
  digest="$(printf '%s\n' "$digest" | sha256sum | cut -c1-12)"
  KEY="kube-${KUBE_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_${digest}"
  BIN="$CACHE_ROOT/$KEY/bin"
}

# Scratch directories of builds that died without their EXIT trap (SIGKILL, power loss).
# Only called while holding the lock: then no build of this cache is running.
sweep_stale_builds() {
  local dir
  for dir in "$CACHE_ROOT"/*/.build.*; do
    [ -e "$dir" ] || continue
    log "removing the scratch directory of an interrupted build: $dir"
    rm -rf "$dir"
  done
}

update_modules() {
  need_go
  local minor_patch="${KUBE_VERSION#v1.}" staging
  log "regenerating kube/go.mod for k8s.io/kubernetes $KUBE_VERSION (staging modules at v0.$minor_patch)"
  (
    cd "$HERE/kube"
    rm -f go.mod go.sum
    go mod init pilothouse.dev/hack/k8s-testenv/kube >/dev/null 2>&1
    go mod edit -go=1.26.0 -require="k8s.io/kubernetes@$KUBE_VERSION"
    # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with
    # ./staging/src/...; a module that depends on it replaces each with its published v0.Y.Z.
    staging="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
      sed -n 's/.*"GoMod": "\(.*\)",*/\1/p' | xargs cat |
      sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p')"
    [ -n "$staging" ] || { echo "no staging modules found in k8s.io/kubernetes go.mod" >&2; exit 1; }
    for m in $staging; do go mod edit -replace="$m=$m@v0.$minor_patch"; done
    go mod tidy
  )
  log "regenerating etcd/go.mod for go.etcd.io/etcd/server/v3 $ETCD_VERSION"
  (
    cd "$HERE/etcd"
    rm -f go.mod go.sum
    go mod init pilothouse.dev/hack/k8s-testenv/etcd >/dev/null 2>&1
    go mod edit -go=1.26.0 -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    go mod tidy
  )
  log "regenerating kwok/go.mod for sigs.k8s.io/kwok $KWOK_VERSION"
  (
    cd "$HERE/kwok"
    rm -f go.mod go.sum
    go mod init pilothouse.dev/hack/k8s-testenv/kwok >/dev/null 2>&1
    go mod edit -go=1.26.0 -require="sigs.k8s.io/kwok@$KWOK_VERSION"
    go mod tidy
  )
}

check_module_versions() {
  grep -q "k8s.io/kubernetes $KUBE_VERSION\$" "$HERE/kube/go.mod" &&
    grep -q "go.etcd.io/etcd/server/v3 $ETCD_VERSION\$" "$HERE/etcd/go.mod" &&
    grep -q "sigs.k8s.io/kwok $KWOK_VERSION\$" "$HERE/kwok/go.mod" || {
    echo "k8s-testenv: kube/, etcd/ or kwok/go.mod do not match versions.env;" \
      "run hack/k8s-testenv/build.sh --update-modules" >&2
    exit 1
  }
}

build() {
  need_go
  check_module_versions
  local start=$SECONDS
  out="$CACHE_ROOT/$KEY/.build.$$"  # global: the EXIT trap removes it if the build fails
  rm -rf "$out" && mkdir -p "$out"
  trap 'rm -rf "$out"' EXIT

  local minor_patch="${KUBE_VERSION#v1.}" date ldflags p
  date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  ldflags="-s -w"
  # What kubernetes' hack/lib/version.sh sets, so `kubectl version` reports the release.
  for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldflags+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=${minor_patch%%.*}"
    ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done

  log "building kube-apiserver kube-controller-manager kube-scheduler kubectl $KUBE_VERSION"
  (cd "$HERE/kube" && go build -trimpath -ldflags "$ldflags" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
  log "building etcd $ETCD_VERSION"
  (cd "$HERE/etcd" && go build -trimpath -ldflags "-s -w" -o "$out/etcd" .)
  log "building kwok $KWOK_VERSION"
  (cd "$HERE/kwok" && go build -trimpath -o "$out/kwok" \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok)

  touch "$out/.complete"
  rm -rf "$BIN" && mv "$out" "$BIN"
  trap - EXIT
  log "built into $BIN in $((SECONDS - start)) s"
}

main() {
  case "${1:-}" in
    --print-bin-dir) set_key no && echo "$BIN" ;;
    --go-version) need_go && go version ;;
    --update-modules) update_modules ;;
    "")
      set_key
      if complete; then
        log "cached: $BIN"
      else
        mkdir -p "$CACHE_ROOT"
        # one build at a time per cache; whoever waited finds it built
        if ! command -v flock >/dev/null; then
          echo "k8s-testenv: flock (util-linux) is needed to build" >&2
          exit 1
        fi
        exec 9>"$CACHE_ROOT/.lock"
        if ! flock -w "$LOCK_TIMEOUT" 9; then
          echo "k8s-testenv: waited ${LOCK_TIMEOUT} s for $CACHE_ROOT/.lock, held by another" \
            "build.sh (see: fuser -v $CACHE_ROOT/.lock); giving up." \
            "PILOTHOUSE_K8S_LOCK_TIMEOUT sets how long to wait" >&2
          exit 1
        fi
        sweep_stale_builds
        complete || build
      fi
      echo "$BIN"
      ;;
    *) echo "usage: $0 [--print-bin-dir|--update-modules|--go-version]" >&2; exit 2 ;;
  esac
}

# parsed whole before it runs: editing this file during a build cannot derail it
main "$@"; exit $?
