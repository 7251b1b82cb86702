#!/usr/bin/env bash
# Runs every fuzz target in the repository, one after the other, for
# FUZZTIME each (a duration, or Nx for N executions; default 5m), and
# prints each target's executions at the end (docs/fuzzing.md records a
# full run). FUZZTIME_<Target> overrides FUZZTIME for one target
# (FUZZTIME_FuzzRoute=2m); FUZZ_TARGETS (a regexp) picks targets;
# FUZZFLAGS go to go test (e.g. -parallel=1 on a shared machine).
# A failure stops the run: go test has written the input under the
# package's testdata/fuzz/, to be committed with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-5m}
FUZZ_TARGETS=${FUZZ_TARGETS:-.}
FUZZ_PKGS=${FUZZ_PKGS:-.}
summary=()
while read -r file target; do
	pkg=./$(dirname "$file")
	[[ $target =~ $FUZZ_TARGETS && ${pkg#./} =~ $FUZZ_PKGS ]] || continue
	var="FUZZTIME_$target"
	t=${!var:-$FUZZTIME}
	echo "=== $target ($pkg, fuzztime $t)"
	log=$(mktemp)
	# shellcheck disable=SC2086 # FUZZFLAGS are words
	if ! $GO test "$pkg" -run '^$' -fuzz "^${target}\$" -fuzztime "$t" ${FUZZFLAGS:-} 2>&1 | tee "$log"; then
		echo "fuzz: $target failed; the input is under $pkg/testdata/fuzz/$target" >&2
		rm -f "$log"
		exit 1
	fi
	last=$(grep -E '^fuzz: elapsed: .*execs: ' "$log" | tail -n 1 || true)
	rm -f "$log"
	execs=$(sed -E 's/.*execs: ([0-9]+) .*/\1/' <<<"$last")
	elapsed=$(sed -E 's/^fuzz: elapsed: ([^,]+),.*/\1/' <<<"$last")
	summary+=("$(printf '%-32s %-22s %12s  %s' "$target" "$pkg" "$execs" "$elapsed")")
done < <(grep -rE --include='*_test.go' --exclude-dir=node_modules -o '^func Fuzz[A-Za-z0-9_]*' . |
	sed -E 's#^\./##; s#:func # #' | sort -k2)
echo
printf '%-32s %-22s %12s  %s\n' target package execs elapsed
printf '%s\n' "${summary[@]}"
