#!/usr/bin/env bash
# Mutation testing with mutmut, outside CI (minutes per module; docs/testing.md).
#   tests/mutants/mutmut.sh src/s2s/data/noising.py tests/test_noising.py [more test files]
# Copies the repository (without .git, .venv, outputs) to $MUTMUT_DIR (default: a new temp
# directory), writes mutmut's setup.cfg there (mutate MODULE only, run the given test files
# without the slow ones) and runs `mutmut run`; this working tree is never touched. Then:
#   cd <that directory> && mutmut results        # the surviving mutants
#   cd <that directory> && mutmut show NAME      # one mutant's diff
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 MODULE TEST_FILE [TEST_FILE ...]" >&2; exit 2; }
module=$1
shift
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${MUTMUT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/s2s-mutmut-XXXXXX")}
tar -C "$repo" --exclude=./.venv --exclude=./.git --exclude=./outputs --exclude=__pycache__ \
  --exclude=./.pytest_cache --exclude=./.ruff_cache --exclude=./mutants -cf - . | tar -xf - -C "$work"
{
  echo "[mutmut]"
  echo "source_paths=src/"
  echo "only_mutate=$module"
  echo "pytest_add_cli_args_test_selection="
  printf '    %s\n' "$@"
  printf 'pytest_add_cli_args=\n    -p\n    no:cacheprovider\n    -m\n    not slow\n'
  # a mutant whose tests run this many times longer than unmutated counts as a timeout; the
  # generation tests slow down under load, so raise it when equivalent mutants time out
  echo "timeout_multiplier=${MUTMUT_TIMEOUT_MULTIPLIER:-15}"
  # workers forked from a process that never ran torch: forking after torch's thread pools
  # started hangs some workers (mutmut's docs: "not fork-safe (gevent, grpc, torch)")
  echo "process_isolation=forkserver"
  # mutmut runs the tests in mutants/, a copy of src/ and tests/ only: the configs and data
  # the Hydra-composing tests read come too
  printf 'also_copy=\n    conf\n    datasets\n    benchmarks\n    train.py\n    generate.py\n'
} > "$work/setup.cfg"
cd "$work"
echo "mutmut in $work"
mutmut run --max-children "${MUTMUT_JOBS:-2}"
echo "survivors: cd $work && mutmut results"
