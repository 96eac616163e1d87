#!/usr/bin/env bash
# Sets quantc up on a fresh machine: the package with its runtime and test extras (torch pinned to the
# CPU build this machine's pip takes from disk; on a GPU host install a CUDA torch >= 2.11 first),
# and Chromium, which the tests use to render `quantc plan --html` headless.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null;
  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi
fi
python3 -m pip install -q --disable-pip-version-check torch==2.13.0 -e '.[dev,runtime]'
