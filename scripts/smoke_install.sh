#!/usr/bin/env bash
# The production install path, smoke-tested: wheels of the client and of keysvc, built from a
# clean copy of the source tree and installed (not editable) into a fresh virtualenv, then
# scripts/smoke_installed.py run with that virtualenv's python, outside the source tree.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
PYTHON=${PYTHON:-python3}

work=$(mktemp -d "${TMPDIR:-/tmp}/keysvc-smoke.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Tracked and new files only: no .venv, no build/ or egg-info left over from an earlier build;
# and not a tracked file deleted in the working tree (its deletion is not committed yet).
mkdir "$work/src" "$work/run"
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' file; do [[ -e $file ]] && printf '%s\0' "$file"; done \
  | tar --null --files-from - --create --file - \
  | tar --extract --file - --directory "$work/src"

"$PYTHON" -m venv "$work/venv"
(cd "$work/src" && "$work/venv/bin/pip" wheel --quiet --no-deps --wheel-dir "$work/wheels" \
  ./clients/python .)
"$work/venv/bin/pip" install --quiet "$work"/wheels/*.whl

# -I: the installed packages only, never the source tree or the user's site-packages.
(cd "$work/run" && "$work/venv/bin/python" -I "$repo/scripts/smoke_installed.py" \
  --workdir "$work/run" --make-run "$work/src")
