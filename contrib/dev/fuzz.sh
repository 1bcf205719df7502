#!/usr/bin/env bash
# Runs every fuzz target of the repository for a while (default 60s each):
#   contrib/dev/fuzz.sh [duration]        e.g. contrib/dev/fuzz.sh 5m
# Crashers land in the package's testdata/fuzz/<Target>/ and fail `go test`
# from then on, until fixed.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=$PATH:/usr/local/go/bin
time=${1:-60s}
status=0
for pkg in $(go list ./... | grep -v /vendor/); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
		echo "== $pkg $target ($time)"
		if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$time" -fuzzminimizetime 3s -parallel 2 "$pkg"; then
			status=1
		fi
	done
done
exit $status
