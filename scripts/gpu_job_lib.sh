# Shared by scripts/gpu_task_job.sh and scripts/gpu_job.sh (sourced, not run): the parts of a
# time-boxed GPU job.
#
# step NAME CAP_S CMD...   runs CMD under a time cap (SIGTERM first: irae stops as on Ctrl-C and
#                          `irae train` saves), prints
#                          one "== step" line before and one after with rc and seconds, records it,
#                          and never stops the script: one failed step must not cost the rest.
# need NAME PATH...        a step's inputs: returns 1 (and the step is skipped, said once) when a
#                          path is missing.
# publish                  packs $WORK into $OUT in a few files (pack_results.py; its RESULTS_MAX_*
#                          environment variables set how many and how large).
# plan_line NAME CAP_S     adds a step to the time plan; plan_check prints the sum and refuses to
#                          start when it exceeds JOB_LIMIT_S (default 600: a job runner that kills a
#                          job after 10 minutes).

PY=${PY:-python3}
command -v "$PY" >/dev/null 2>&1 || PY=python
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
JOB_LIMIT_S=${JOB_LIMIT_S:-600}
STEPS_DONE=()
PLAN=()
PLAN_S=0

plan_line() {
  PLAN+=("$(printf '%-28s <= %4d s' "$1" "$2")")
  PLAN_S=$((PLAN_S + $2))
}

plan_check() {
  echo "== plan (each step capped; the sum bounds the run):"
  printf '   %s\n' "${PLAN[@]}"
  printf '   %-28s <= %4d s = %d.%d min (limit %d s)\n' "total" "$PLAN_S" $((PLAN_S / 60)) $((PLAN_S % 60 * 10 / 60)) \
    "$JOB_LIMIT_S"
  if [ "$PLAN_S" -gt "$JOB_LIMIT_S" ]; then
    echo "== refusing to start: the plan exceeds JOB_LIMIT_S=$JOB_LIMIT_S s; lower MINUTES or the caps" >&2
    exit 2
  fi
}

need() {
  local what=$1 p
  shift
  for p in "$@"; do
    if [ ! -e "$p" ]; then
      echo "== skip $what: $p is missing (not carried, or an earlier step did not make it)"
      STEPS_DONE+=("$what: skipped ($p missing)")
      return 1
    fi
  done
  return 0
}

step() {
  local name=$1 cap=$2 t0=$SECONDS rc
  shift 2
  echo "== step $name (cap ${cap} s) $(date -u +%T)"
  timeout -s TERM -k 20 "$cap" "$@"
  rc=$?
  [ "$rc" -eq 124 ] && echo "== step $name: stopped at its ${cap} s cap"
  echo "== step $name: rc $rc in $((SECONDS - t0)) s"
  STEPS_DONE+=("$name: rc $rc, $((SECONDS - t0)) s")
  return 0
}

publish() {
  timeout 60 "$PY" scripts/pack_results.py pack "$WORK" "$OUT" --name "$NAME" --log "$NAME.log" \
    || echo "== publish failed (rc $?); the previous pack stays"
}

preflight() {  # preflight PATH...: name every missing input once, up front
  local missing=0 p
  for p in "$@"; do
    if [ -e "$p" ]; then
      echo "== preflight: $p: $(du -sh "$p" 2>/dev/null | cut -f1)"
    else
      echo "== preflight: MISSING $p (git-ignored: copy it to the job's machine with the checkout)"
      missing=1
    fi
  done
  [ "$missing" -eq 0 ] || echo "== preflight: steps that need a missing input are skipped; the rest run"
}

summary() {
  echo "== summary $(date -u +%FT%TZ), $SECONDS s in all:"
  printf '   %s\n' "${STEPS_DONE[@]}"
}
