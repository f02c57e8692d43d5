#!/usr/bin/env bash
# deploy/ci.sh: the packaging checks (issue 13), run by .ci/run from the repository root or
# by hand (bash deploy/ci.sh). Idempotent; what it installs goes to the Go module cache, the
# npm cache and $RELAY_DEPLOY_CACHE (default ~/.cache/relay-deploy). A check whose tool cannot
# be installed is skipped with a SKIPPED line (listed again at the end); any other failure
# fails the script.
#
#  1. container: the static binary deploy/container/Containerfile builds (CGO_ENABLED=0,
#     -trimpath, -s -w) is static and runs `relay version`; the Containerfile's module layer
#     works from the files it copies; the Containerfile lints (dockerfile-utils, npm); its
#     ports and volume are the ones deploy/k8s uses. (No image is built: that needs an engine.)
#  2. systemd: systemd-analyze verify (any message fails) and security (exposure at most
#     $SYSTEMD_MAX_EXPOSURE tenths); systemd-sysusers --dry-run of the sysusers file.
#  3. k8s: kubeconform -strict against schemas made from the OpenAPI document of Kubernetes
#     releases (k8s.io/kubernetes modules from the Go module proxy: no GitHub needed), for each
#     of $K8S_VERSIONS; deploy/k8s/validate refs (cross-references, relay.toml against the pod);
#     `relay check` of the ConfigMap's relay.toml; and proof that both reject a broken copy.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
start=$SECONDS

K8S_VERSIONS=${K8S_VERSIONS:-"v1.35.4 v1.37.2"} # oldest and newest of the supported releases
KUBECONFORM_VERSION=v0.7.0
DOCKERFILE_UTILS_VERSION=0.16.3
SYSTEMD_MAX_EXPOSURE=${SYSTEMD_MAX_EXPOSURE:-15} # systemd-analyze's 0-100 scale: 15 is "1.5"
cache=${RELAY_DEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/relay-deploy}
mkdir -p "$cache"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
skipped=()

step() { printf '\n== deploy: %s\n' "$*"; }
skip() {
  echo "SKIPPED: $*"
  skipped+=("$*")
}
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# apt_need CMD:PACKAGE...: install the Debian packages of the commands that are missing.
apt_need() {
  local missing=() spec
  for spec in "$@"; do
    command -v "${spec%%:*}" >/dev/null 2>&1 || missing+=("${spec#*:}")
  done
  ((${#missing[@]})) || return 0
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >/dev/null ||
      echo "apt-get could not install ${missing[*]}"
  fi
}
apt_need file:file ldd:libc-bin systemd-analyze:systemd

# ---------------------------------------------------------------------------------------
step "container: the static binary of deploy/container/Containerfile"
bin=$work/relay
CGO_ENABLED=0 go build -trimpath -buildvcs=auto -ldflags "-s -w" -o "$bin" ./cmd/relay
info=$(file -b "$bin")
echo "file: $info"
case $info in *"statically linked"*) ;; *) fail "the binary is not statically linked" ;; esac
if ldd_out=$(ldd "$bin" 2>&1); then
  fail "ldd lists libraries: $ldd_out"
fi
echo "ldd: $(echo "$ldd_out" | tr -d '\t')"
"$bin" version

# The Containerfile downloads the modules from go.mod, go.sum and third_party/ alone.
mkdir -p "$work/modlayer"
cp go.mod go.sum "$work/modlayer/"
cp -r third_party "$work/modlayer/"
(cd "$work/modlayer" && go mod download) || fail "go mod download fails with only the files the Containerfile copies first"
echo "module layer: go mod download works from go.mod, go.sum and third_party/ alone"

cf=deploy/container/Containerfile
grep -q '^EXPOSE 2525 8025$' "$cf" || fail "$cf: EXPOSE is not 2525 8025"
grep -q '^VOLUME \["/var/spool/relay"\]$' "$cf" || fail "$cf: VOLUME is not /var/spool/relay"
grep -q '^ENTRYPOINT \["/usr/local/bin/relay", "serve"\]$' "$cf" || fail "$cf: ENTRYPOINT is not relay serve"
for p in 'containerPort: 2525' 'containerPort: 8025' 'mountPath: /var/spool/relay'; do
  grep -q "$p" deploy/k8s/statefulset.yaml || fail "deploy/k8s/statefulset.yaml lacks '$p' (the Containerfile's)"
done
echo "ports 2525/8025 and the spool volume agree with deploy/k8s"

dfu=$cache/npm-dockerfile-utils-$DOCKERFILE_UTILS_VERSION/node_modules/.bin/dockerfile-utils
if [ ! -x "$dfu" ] && command -v npm >/dev/null 2>&1; then
  npm install --silent --no-audit --no-fund --prefix "${dfu%/node_modules/.bin/dockerfile-utils}" \
    "dockerfile-utils@$DOCKERFILE_UTILS_VERSION" >/dev/null 2>&1 || true
fi
if [ -x "$dfu" ] && command -v node >/dev/null 2>&1; then
  "$dfu" lint "$cf" || fail "$cf: dockerfile-utils lint"
  echo "dockerfile-utils lint $cf: no problems"
else
  skip "Containerfile lint: npm could not install dockerfile-utils@$DOCKERFILE_UTILS_VERSION"
fi

# ---------------------------------------------------------------------------------------
step "systemd: deploy/systemd/relay.service"
if command -v systemd-analyze >/dev/null 2>&1; then
  # verify checks that ExecStart's binary exists: point it at the one just built.
  mkdir -p "$work/systemd"
  sed "s#^ExecStart=/usr/local/bin/relay #ExecStart=$bin #" deploy/systemd/relay.service >"$work/systemd/relay.service"
  # verify exits 0 on unknown keys and bad values, printing them: any output is a failure.
  out=$(systemd-analyze verify "$work/systemd/relay.service" 2>&1) || fail "systemd-analyze verify: $out"
  [ -z "$out" ] || fail "systemd-analyze verify: $out"
  echo "systemd-analyze verify: no problems"
  # ... and it does print them: a misspelt directive must show.
  sed 's/^ProtectSystem=strict$/ProtectSytem=strict/' "$work/systemd/relay.service" >"$work/systemd/bad.service"
  systemd-analyze verify "$work/systemd/bad.service" 2>&1 | grep -q "Unknown key 'ProtectSytem'" ||
    fail "systemd-analyze verify did not report a misspelt directive"
  echo "systemd-analyze verify reports a misspelt directive, as it must"
  out=$(systemd-analyze security --offline=true --threshold="$SYSTEMD_MAX_EXPOSURE" "$work/systemd/relay.service" 2>&1) ||
    fail "systemd-analyze security: exposure above $SYSTEMD_MAX_EXPOSURE/100: $(echo "$out" | grep -E '✗|Overall')"
  echo "$out" | grep 'Overall exposure'
  if command -v systemd-sysusers >/dev/null 2>&1; then
    mkdir -p "$work/sysroot"
    out=$(systemd-sysusers --dry-run --root="$work/sysroot" "$PWD/deploy/systemd/relay.sysusers" 2>&1) ||
      fail "systemd-sysusers --dry-run deploy/systemd/relay.sysusers: $out"
    echo "$out" | grep -q "Creating user 'relay'" || fail "systemd-sysusers --dry-run creates no user relay: $out"
    echo "systemd-sysusers --dry-run deploy/systemd/relay.sysusers: ok"
  fi
else
  skip "systemd unit checks: systemd-analyze is not installed and apt-get could not install systemd"
fi

# ---------------------------------------------------------------------------------------
step "k8s: deploy/k8s"
manifests=(deploy/k8s/*.yaml deploy/k8s/drain/*.yaml)
# The Secret template is not *.yaml (so kubectl apply -f deploy/k8s/ leaves it out): check a copy.
cp deploy/k8s/secret.yaml.template "$work/secret.yaml"
manifests+=("$work/secret.yaml")

gofmt_out=$(gofmt -l deploy/k8s/validate)
[ -z "$gofmt_out" ] || fail "gofmt needed: $gofmt_out"
go -C deploy/k8s/validate vet ./...
go -C deploy/k8s/validate build -o "$work/validate" .
validate=$work/validate

kc=$cache/kubeconform-$KUBECONFORM_VERSION/kubeconform
if [ ! -x "$kc" ]; then
  GOBIN=$(dirname "$kc") go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION" ||
    rm -f "$kc"
fi
schema_ok=0
if [ -x "$kc" ]; then
  for v in $K8S_VERSIONS; do
    schemas=$cache/schemas-$v
    if [ ! -s "$schemas/statefulset-apps-v1.json" ]; then
      dl=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$v") || dl=""
      dir=$(echo "$dl" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')
      if [ -z "$dir" ] || [ ! -s "$dir/api/openapi-spec/swagger.json" ]; then
        skip "kubeconform for Kubernetes $v: the Go module proxy did not serve k8s.io/kubernetes@$v"
        continue
      fi
      rm -rf "$schemas.tmp"
      "$validate" schemas -swagger "$dir/api/openapi-spec/swagger.json" -out "$schemas.tmp"
      rm -rf "$schemas" && mv "$schemas.tmp" "$schemas"
    fi
    echo "kubeconform $KUBECONFORM_VERSION -strict, Kubernetes $v:"
    "$kc" -strict -summary -schema-location "$schemas/{{.ResourceKind}}{{.KindSuffix}}.json" "${manifests[@]}" ||
      fail "kubeconform (Kubernetes $v)"
    schema_ok=1
    last_schemas=$schemas
  done
else
  skip "kubeconform: go install github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION failed"
fi

"$validate" refs -toml-out "$work/relay-k8s.toml" "${manifests[@]}"

# relay check on the ConfigMap's relay.toml, its pod paths moved under a scratch directory,
# with a fresh key where the Secret's would be and the password variable set.
chk=$work/check
mkdir -p "$chk/etc/keys" "$chk/spool"
"$bin" keygen -out "$chk/etc/keys/default.pem" >/dev/null 2>&1
sed -e "s#\"/etc/relay/#\"$chk/etc/#g" -e "s#\"/var/spool/relay\"#\"$chk/spool\"#g" "$work/relay-k8s.toml" >"$chk/etc/relay.toml"
if ! out=$(RELAY_UPSTREAM_PASSWORD=ci-placeholder "$bin" check -config "$chk/etc/relay.toml" 2>&1); then
  echo "$out"
  fail "relay check of deploy/k8s/configmap.yaml's relay.toml"
fi
echo "relay check of deploy/k8s/configmap.yaml's relay.toml: $(echo "$out" | head -1 | sed "s#$chk/etc/##")"

# The checks must reject mistakes: a misspelt field (kubeconform) and a misspelt port name
# and a spool off the volume (refs).
bad=$work/bad
mkdir -p "$bad"
sed 's/terminationGracePeriodSeconds: 30/terminationGracePeriodSecond: 30/' deploy/k8s/statefulset.yaml >"$bad/statefulset.yaml"
if [ "$schema_ok" = 1 ]; then
  if out=$("$kc" -strict -schema-location "$last_schemas/{{.ResourceKind}}{{.KindSuffix}}.json" "$bad/statefulset.yaml" 2>&1); then
    fail "kubeconform accepted a misspelt field: $out"
  fi
  echo "$out" | grep -q "additional properties 'terminationGracePeriodSecond' not allowed" ||
    fail "kubeconform failed, but not on the misspelt field: $out"
  echo "kubeconform rejects a misspelt field, as it must: $(echo "$out" | grep -o "at '/spec/template/spec': additional properties '[a-zA-Z]*' not allowed")"
fi
sed 's/targetPort: smtp/targetPort: smpt/' deploy/k8s/service.yaml >"$bad/service.yaml"
sed 's#dir = "/var/spool/relay"#dir = "/var/lib/relay"#' deploy/k8s/configmap.yaml >"$bad/configmap.yaml"
if out=$("$validate" refs "$bad/configmap.yaml" deploy/k8s/statefulset.yaml "$bad/service.yaml" "$work/secret.yaml" 2>&1); then
  fail "validate refs accepted a broken copy: $out"
fi
for want in 'target port smpt is not a port' 'queue.dir /var/lib/relay is on no volume'; do
  echo "$out" | grep -q "$want" || fail "validate refs did not report '$want': $out"
done
echo "validate refs rejects a misspelt port name and a spool off the volume, as it must"

# ---------------------------------------------------------------------------------------
echo
if ((${#skipped[@]})); then
  printf 'deploy/ci.sh: SKIPPED %d check(s):\n' "${#skipped[@]}"
  printf '  - %s\n' "${skipped[@]}"
fi
echo "deploy/ci.sh: passed in $((SECONDS - start)) s"
