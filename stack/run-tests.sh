#!/usr/bin/env bash
# `make test`: venv, stack, pytest (unit + integration), then stop what this run started.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

stage_start=$(date +%s)
stage() { # name: prints the time the previous stage took
  local now; now=$(date +%s)
  printf '== %-28s (previous stage %ss)\n' "$1" "$((now - stage_start))"
  stage_start=$now
}

stage "venv + install"
make -s venv || exit 1

started_stack=0
if ! stack/stack.sh status >/dev/null 2>&1; then started_stack=1; fi
cleanup() {
  # Workers and shovels started by tests are stopped by their fixtures; stop any stray one.
  pkill -f -- "$PWD/.venv/bin/.*(trovemeter|faust)" 2>/dev/null || true
  if [ "$started_stack" = 1 ] && [ -z "${TROVEMETER_KEEP_STACK:-}" ]; then
    stage "stack down"
    stack/stack.sh down
  fi
}
trap cleanup EXIT

stage "stack up"
stack/stack.sh up || exit 1
.venv/bin/trovemeter topics || exit 1

stage "pytest unit"
.venv/bin/pytest tests/unit -q -p no:cacheprovider
unit_rc=$?
stage "pytest integration"
.venv/bin/pytest tests/integration -q -p no:cacheprovider
integration_rc=$?
stage "done"

rc=0
for r in $unit_rc $integration_rc; do
  # 5 = no tests collected: not a failure while a suite is still empty.
  if [ "$r" -ne 0 ] && [ "$r" -ne 5 ]; then rc=$r; fi
done
exit $rc
