#!/usr/bin/env bash
# Run the test suite against the NEWEST releases that pyproject.toml allows, in a fresh virtualenv
# with no pip cache, and (with --write) make that set the tested one in constraints.txt.
#
#   bash tools/bump-constraints.sh            # try the newest set; print the failures, change nothing
#   bash tools/bump-constraints.sh --write    # ... and if the suite passes, rewrite constraints.txt
#
# Everyday installs (README, .ci/run) use `-c constraints.txt`, so a release published tomorrow
# reaches the project only through this script, when someone runs it on purpose. torch is pinned
# on the README's command line itself (that pin picks the CPU wheel); it is not in constraints.txt.
# The candidate set is kept in constraints.newest.txt either way (git-ignored), with the test log.
set -euo pipefail
cd "$(dirname "$0")/.."
write=false
case "${1:-}" in
  --write) write=true ;;
  "") ;;
  *) echo "usage: bash tools/bump-constraints.sh [--write]" >&2; exit 2 ;;
esac
torch_pin=$(grep -o 'torch==[0-9][0-9.]*' .ci/run | head -n 1)
[ -n "$torch_pin" ] || { echo "no torch==X pin found in .ci/run" >&2; exit 2; }
venv=$(mktemp -d)/venv
python3 -m venv "$venv"
echo "fresh virtualenv $venv; installing the newest releases pyproject.toml allows ($torch_pin)"
"$venv/bin/pip" install --quiet --no-cache-dir --upgrade pip
"$venv/bin/pip" install --quiet --no-cache-dir "$torch_pin" -e '.[pocket,langid,test]'
"$venv/bin/pip" freeze --exclude-editable | grep -v -i '^torch==' > constraints.newest.txt
set +e
"$venv/bin/python" -m pytest -m "not slow" -q -p no:cacheprovider 2>&1 | tee constraints.newest.log
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  echo "the suite FAILED on the newest releases (exit $status): constraints.txt unchanged;" \
       "see constraints.newest.log, fix the code or add an upper bound with its reason to pyproject.toml" >&2
  exit 1
fi
echo "the suite passed on the newest releases"
if $write; then
  { echo "# The exact versions the test suite passed with (Python $("$venv/bin/python" -c 'import sys; print(*sys.version_info[:2], sep=".")'), CPU, $(date -u +%F))."
    echo "# Used by the README's commands and .ci/run: pip install -c constraints.txt ..."
    echo "# Regenerate with: bash tools/bump-constraints.sh --write   (torch is pinned on the command line)"
    cat constraints.newest.txt; } > constraints.txt
  echo "constraints.txt rewritten: review 'git diff constraints.txt' and commit it"
else
  diff -u constraints.txt constraints.newest.txt || true
fi
