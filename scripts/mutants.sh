#!/usr/bin/env bash
# Mutation check of the tests: a tool for people, not a CI step.
#
# Each mutant is a one-token change of a rule that really changes outputs: a kernel rule (a
# comparison, a rounding mode), or a rule that decides which numbers a reader sees (model
# selection, the demo's split wiring, the calibration's choices, the gap-closed rule). In a
# scratch copy of this working tree, the script applies one mutant at a time, rebuilds the CPU
# kernels when it changed C++ (DEEPEM_CPU_ONLY=1, MAX_JOBS=1) and runs the test files that
# should catch it, then prints which mutants the tests caught and by which test. A mutant that
# survives is a gap in the tests (or a change that cannot be observed). When only Python
# mutants are selected, the copy takes this checkout's built extension instead of building.
#
#   scripts/mutants.sh             all mutants
#   scripts/mutants.sh NAME...     some of them (scripts/mutants.sh --list names them)
#
# Environment: PYTHON (default .venv/bin/python), DEEPEM_MUTANTS_DIR (the scratch copy, default
# ${TMPDIR:-/tmp}/deepem-mutants; kept between runs so that rebuilds are incremental: the
# first run builds everything, later ones only what a mutant touches).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
DIR="${DEEPEM_MUTANTS_DIR:-${TMPDIR:-/tmp}/deepem-mutants}"

# name | file | original text (must occur exactly once) | mutated text | test files (space-separated)
MUTANTS=(
  "nms-between-chunks|csrc/ops/cpu/nms3d_kernel.cpp|kept_before > 0 && suppressed(j, 0)|kept_before < 0 && suppressed(j, 0)|tests/test_nms3d.py"
  "nms-newest-grid-entry|csrc/ops/cpu/nms3d_kernel.cpp|*it >= first_seq|*it > first_seq|tests/test_nms3d.py"
  "nms-bitmask-skips-next-box|csrc/common/nms_bitmask.h|int64_t first = row + 1 - col0;|int64_t first = row + 2 - col0;|tests/test_nms3d.py"
  "anchor-positive-at-threshold|csrc/common/anchors.h|if (iou >= pos_threshold)|if (iou > pos_threshold)|tests/test_anchors.py"
  "fallback-cell-round-half-away|csrc/common/anchors.h|return rint(x);|return round(x);|tests/test_anchors.py"
  "negative-at-threshold|csrc/common/anchors.h|return best < neg_threshold|return best <= neg_threshold|tests/test_anchors.py"
  "roi-pool-start-half-even|csrc/common/roi3d.h|round(lo * spatial_scale)|rint(lo * spatial_scale)|tests/test_roi3d.py"
  "estep-window-edge|csrc/common/estep.h|(dz <= prm.z_window)|(dz < prm.z_window)|tests/test_estep.py"
  # model selection: only validated epochs compete, never on the training loss or the test split
  "select-on-train-loss|deepem/train/trainer.py|return record.get(\"selection\") if validating else record[\"train\"][\"loss\"]|return record.get(\"selection\", record[\"train\"][\"loss\"])|tests/test_train.py"
  "em-select-on-train-loss|deepem/em/loop.py|t.save(selection_value(record, val_set is not None),|t.save(record.get(\"selection\", record[\"train\"][\"loss\"]),|tests/test_train.py"
  "val-split-test-by-name|deepem/train/config.py|if split and split == HELD_OUT:|if split and split == \"held_out\":|tests/test_train.py"
  "val-split-test-by-uid|deepem/data/splits.py|return list(uids) if isinstance(uids, list) else []|return list() if isinstance(uids, list) else []|tests/test_train.py"
  "calibrate-weak-by-uid|deepem/em/loop.py|sorted(set(calibration_uids) & set(weak_uids))|sorted(set(calibration_uids) & set())|tests/test_train.py"
  "demo-selects-on-test|deepem/demo.py|\"val_split\": \"val\"|\"val_split\": \"test\"|tests/test_demo.py"
  "demo-val-is-test|deepem/demo.py|\"val\": [held[i] for i in order[: s.n_val]]|\"val\": [held[i] for i in order[s.n_val:]]|tests/test_demo.py"
  "demo-scores-val|deepem/demo.py|test_uids = json.load(f)[\"test\"]|test_uids = json.load(f)[\"val\"]|tests/test_demo.py"
  "demo-calibrates-on-weak|deepem/demo.py|((\"calibrate\", \"val\")|((\"calibrate\", \"weak\")|tests/test_demo.py"
  "demo-calibrates-on-test|deepem/demo.py|((\"calibrate\", \"val\")|((\"calibrate\", \"test\")|tests/test_demo.py"
  "calibration-tie-rule|deepem/em/calibrate.py|if best is None or net > best[0]:|if best is None or net >= best[0]:|tests/test_em_options.py"
  "gap-noise-signed|deepem/demo.py|if not oracle_gain > abs(noise_gain):|if not oracle_gain > noise_gain:|tests/test_demo.py"
  "gap-interval-touching-zero|deepem/demo.py|oracle_ci95[0] > 0)|oracle_ci95[0] >= 0)|tests/test_demo.py"
)

field() { local IFS='|'; read -r -a f <<<"$1"; echo "${f[$2]}"; }

if [[ "${1:-}" == "--list" ]]; then
  for m in "${MUTANTS[@]}"; do printf '%-32s %s: %s -> %s\n' "$(field "$m" 0)" "$(field "$m" 1)" "$(field "$m" 2)" "$(field "$m" 3)"; done
  exit 0
fi
selected=()
for m in "${MUTANTS[@]}"; do
  name="$(field "$m" 0)"
  if [[ $# -eq 0 ]] || printf '%s\n' "$@" | grep -qx "$name"; then selected+=("$m"); fi
done
[[ ${#selected[@]} -gt 0 ]] || { echo "no mutant named $*; see --list" >&2; exit 2; }

mkdir -p "$DIR"
LOG="$DIR/mutants.log"
: >"$LOG"
# A run stopped while a mutant was applied left that file changed: the copy below restores it
# with its old time stamp, so touch it afterwards to make ninja rebuild what it went into.
stale="$(cat "$DIR/.mutant-applied" 2>/dev/null || true)"
# Tracked and untracked (not ignored) files, with their time stamps (unchanged files do not
# rebuild).
(cd "$ROOT" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) | tar -xpf - -C "$DIR"
[[ -n "$stale" ]] && touch "$DIR/$stale"
rm -f "$DIR/.mutant-applied"

# Replace text $2 by $3 in file $1 exactly once (a fresh time stamp, so ninja rebuilds).
replace() {
  "$PY" - "$DIR/$1" "$2" "$3" <<'EOF'
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
if text.count(old) != 1:
    sys.exit("%s: %r occurs %d times, not once (the code changed: update scripts/mutants.sh)"
             % (path, old, text.count(old)))
open(path, "w").write(text.replace(old, new))
EOF
}

build() {
  (cd "$DIR" && DEEPEM_CPU_ONLY=1 MAX_JOBS=1 "$PY" setup.py -q build_ext --inplace) >>"$LOG" 2>&1
}

# Runs test files ($1, space-separated), stopping at the first failure or error; prints the
# failing test ("" if none).
first_failure() {
  local out
  # shellcheck disable=SC2086  # $1 is a list of test files
  out="$(cd "$DIR" && timeout 1800 "$PY" -m pytest -x -q -rfE -p no:cacheprovider $1 2>&1)" || true
  echo "$out" >>"$LOG"
  if echo "$out" | grep -Eq "^(FAILED|ERROR) "; then
    echo "$out" | grep -E -m1 "^(FAILED|ERROR) " | sed -E 's/^(FAILED|ERROR) //; s/ - .*//'
  elif echo "$out" | grep -Eq "[0-9]+ passed"; then
    echo ""
  else
    echo "error: $(echo "$out" | tail -1)"
  fi
}

# Python mutants need no rebuild: with only those selected, the copy takes this checkout's
# built extension (deepem/_C*.so, built from the same sources by scripts/setup.sh).
cpp=0
for m in "${selected[@]}"; do [[ "$(field "$m" 1)" == *.py ]] || cpp=1; done
# Every mutant must apply and undo cleanly: its text once in its file, its mutated text nowhere.
for m in "${selected[@]}"; do
  "$PY" - "$DIR/$(field "$m" 1)" "$(field "$m" 2)" "$(field "$m" 3)" "$(field "$m" 0)" <<'EOF' || exit 2
import sys
path, old, new, name = sys.argv[1:]
text = open(path).read()
if text.count(old) != 1 or new in text:
    sys.exit("mutant %s: %r occurs %d times in %s (must be once) and its mutated text %d times (must be "
             "none): update scripts/mutants.sh" % (name, old, text.count(old), path, text.count(new)))
EOF
done
echo "scratch copy: $DIR (log: $LOG)"
if (( cpp )); then
  echo "building the unmutated copy..."
  build || { echo "the unmutated copy does not build; see $LOG" >&2; exit 1; }
else
  ls "$ROOT"/deepem/_C*.so >/dev/null 2>&1 || { echo "no built extension in $ROOT/deepem: run scripts/setup.sh" >&2; exit 1; }
  cp -p "$ROOT"/deepem/_C*.so "$DIR/deepem/"
fi
tests=$(for m in "${selected[@]}"; do field "$m" 4; done | sort -u)
for t in $tests; do
  failed="$(first_failure "$t")"
  [[ -z "$failed" ]] || { echo "unmutated: $t fails ($failed); fix that first" >&2; exit 1; }
done

printf '\n%-32s %-9s %s\n' "mutant" "result" "caught by"
survived=0
for m in "${selected[@]}"; do
  name="$(field "$m" 0)" file="$(field "$m" 1)" old="$(field "$m" 2)" new="$(field "$m" 3)" test="$(field "$m" 4)"
  echo "== $name: $file: $old -> $new" >>"$LOG"
  replace "$file" "$old" "$new"
  echo "$file" >"$DIR/.mutant-applied"
  if [[ "$file" == *.py ]] || build; then
    failed="$(first_failure "$test")"
  else
    failed="error: does not build"
  fi
  replace "$file" "$new" "$old"
  rm -f "$DIR/.mutant-applied"
  if [[ -z "$failed" ]]; then
    survived=$((survived + 1))
    printf '%-32s %-9s %s\n' "$name" "SURVIVED" "- (all of $test passed)"
  else
    printf '%-32s %-9s %s\n' "$name" "caught" "$failed"
  fi
done
(( cpp == 0 )) || build  # leave the copy unmutated
echo
echo "$(( ${#selected[@]} - survived )) of ${#selected[@]} mutants caught"
