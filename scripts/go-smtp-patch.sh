#!/usr/bin/env bash
# third_party/go-smtp is go-smtp v0.25.1 with third_party/go-smtp.patch applied (see the
# README, "Dependencies"). This script checks that the two agree: it fetches the pristine
# module, applies the patch and compares the result with the tree. With -update it writes
# the patch anew from the tree instead.
set -euo pipefail
cd "$(dirname "$0")/.."
version=v0.25.1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && go mod init tmp >/dev/null 2>&1 && GOFLAGS=-mod=mod go mod download -json "github.com/emersion/go-smtp@$version" >info.json)
orig=$(sed -n 's/.*"Dir": "\(.*\)".*/\1/p' "$tmp/info.json")
cp -r "$orig" "$tmp/a" && chmod -R u+w "$tmp/a"
if [ "${1:-}" = -update ]; then
	(cd "$tmp" && cp -r "$OLDPWD/third_party/go-smtp" b && diff -ruN a b | grep -v '^diff -ruN' | sed -E 's#^(---|\+\+\+) ([ab]/[^\t]*)\t.*#\1 \2#' >"$OLDPWD/third_party/go-smtp.patch") || true
	echo "wrote third_party/go-smtp.patch"
	exit 0
fi
(cd "$tmp/a" && patch -s -p1 <"$OLDPWD/third_party/go-smtp.patch")
diff -r "$tmp/a" third_party/go-smtp && echo "third_party/go-smtp = go-smtp $version + third_party/go-smtp.patch"
