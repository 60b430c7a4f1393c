#!/usr/bin/env bash
# MONAI's own detection tests, run twice on this install: as MONAI ships (unpatched), then with
# deepem patched in (deepem.integrations.monai.patch_monai() before collection), printing
# deepem.integrations.monai.CALLS at the end of each run. Not part of CI: it needs a copy of
# MONAI's repository and MONAI's extra test dependency `parameterized` (pip install parameterized).
#
#   scripts/monai_tests.sh MONAI_CHECKOUT [OUT.txt]
#
# MONAI_CHECKOUT: a clone of the public MONAI repository (only its tests/ folder is used, copied
# to a scratch folder, so the installed monai is the one under test). OUT.txt: also write the
# summary there. PYTHON overrides the interpreter (default .venv/bin/python).
set -euo pipefail

src=${1:?usage: scripts/monai_tests.sh MONAI_CHECKOUT [OUT.txt]}
out=${2:-}
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
[ -d "$src/tests" ] || { echo "no tests/ folder in $src" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$src/tests" "$work/tests"
cat > "$work/deepem_monai_plugin.py" <<'EOF'
"""pytest plugin: DEEPEM_PATCH=1 patches deepem into MONAI before any test module is imported."""
import os

import deepem.integrations.monai as dm


def pytest_configure(config):
    if os.environ.get("DEEPEM_PATCH") == "1":
        dm.patch_monai()


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line("deepem patched in: %s; deepem.integrations.monai.CALLS = %s"
                                % (os.environ.get("DEEPEM_PATCH") == "1", dict(sorted(dm.CALLS.items()))))
EOF

tests=(
  tests/data/test_box_utils.py
  tests/apps/detection/utils/test_detector_boxselector.py
  tests/apps/detection/utils/test_atss_box_matcher.py
  tests/apps/detection/metrics/test_detection_coco_metrics.py
  tests/apps/detection/networks/test_retinanet_detector.py
)
# tests/test_utils.py's helper test_script_save(net, *inputs), imported by the detector test,
# is collected by pytest as a test with a missing fixture (MONAI runs these with unittest): not a test.
deselect=(--deselect tests/apps/detection/networks/test_retinanet_detector.py::test_script_save)

rev=$(git -C "$src" rev-parse HEAD 2>/dev/null || echo unknown)
summary=$work/summary.txt
{
  echo "MONAI's detection tests on this install, unpatched and with deepem patched in (scripts/monai_tests.sh)"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "installed: $("$py" -c 'import monai, torch, deepem; print("monai", monai.__version__, "| torch", torch.__version__, "| deepem", deepem.__version__)')"
  echo "MONAI tests from: $src at $rev"
  echo "deepem commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "machine: $(nproc) CPU cores, $("$py" -c 'import torch; print("CUDA " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")')"
  echo "command (run from a copy of MONAI's tests/, DEEPEM_PATCH=0 then 1):"
  echo "  python -m pytest -p deepem_monai_plugin -p no:cacheprovider -q ${tests[*]} ${deselect[*]}"
} > "$summary"

status=0
for patch in 0 1; do
  log=$work/run-$patch.log
  set +e
  (cd "$work" && DEEPEM_PATCH=$patch PYTHONPATH="$work" "$py" -m pytest -p deepem_monai_plugin \
     -p no:cacheprovider -q -W ignore::FutureWarning -W ignore::DeprecationWarning \
     "${tests[@]}" "${deselect[@]}") > "$log" 2>&1
  rc=$?
  set -e
  [ $rc -eq 0 ] || status=$rc
  {
    echo
    if [ $patch = 1 ]; then echo "== with deepem patched in (exit $rc)"; else echo "== unpatched, MONAI as installed (exit $rc)"; fi
    grep -E "^(FAILED|ERROR) " "$log" || true
    grep -E "^deepem patched in:" "$log" || true
    tail -n 1 "$log"
  } >> "$summary"
done

cat "$summary"
[ -z "$out" ] || cp "$summary" "$out"
exit $status
