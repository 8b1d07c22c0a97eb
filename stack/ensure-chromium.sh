#!/usr/bin/env bash
# Headless browser for the dashboard test and `make screenshot`: Debian's chromium and
# chromium-driver (apt-get, when missing) and the selenium Python bindings in .venv (pip, when
# missing). Idempotent and quiet when everything is there; prints the chromium version.
# Exit 1 with one clear line when something cannot be installed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK_DIR=${STACK_DIR:-$ROOT/.stack}
SELENIUM_VERSION=${TROVEMETER_SELENIUM_VERSION:-4.51.0}
PYTHON=${TROVEMETER_PYTHON:-$ROOT/.venv/bin/python}

say() { printf 'ensure-chromium: %s\n' "$*"; }
die() { printf 'ensure-chromium: error: %s\n' "$*" >&2; exit 1; }

mkdir -p "$STACK_DIR"
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  [ -z "$sudo" ] || command -v sudo >/dev/null \
    || die "chromium is not installed and installing it needs root: apt-get install chromium chromium-driver"
  say "installing Debian's chromium and chromium-driver with apt-get (once; ~2 min)"
  { $sudo apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
         chromium chromium-driver fonts-dejavu-core; } >"$STACK_DIR/apt-chromium.log" 2>&1 \
    || die "apt-get install chromium chromium-driver failed; see $STACK_DIR/apt-chromium.log"
fi

[ -x "$PYTHON" ] || die "$PYTHON is missing: run 'make venv' first"
if ! "$PYTHON" -c 'import selenium' 2>/dev/null; then
  say "installing selenium $SELENIUM_VERSION into $(dirname "$(dirname "$PYTHON")")"
  "$PYTHON" -m pip install -q "selenium==$SELENIUM_VERSION" >"$STACK_DIR/pip-selenium.log" 2>&1 \
    || die "pip install selenium==$SELENIUM_VERSION failed; see $STACK_DIR/pip-selenium.log"
fi
say "$(chromium --version 2>/dev/null | head -1), $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2)"
