#!/usr/bin/env bash
# The whole pipeline on a GPU: `oilwater reproduce` of Tables 1-2 on the smoke preset (every JTT/GEORGE cell path,
# attacks included), then Table 1 on the cpu preset for seed 0, timed; the rendered tables go to $OUT.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false OILWATER_CACHE=/tmp/ow_cache
OUT=${OUT:-/tmp/gpu_pipeline}; mkdir -p "$OUT"
python3 -c "import jax; print(jax.devices())"
for preset in smoke cpu; do
  seeds=$([ $preset = smoke ] && echo "0" || echo "0")
  tables=$([ $preset = smoke ] && echo "table1 table2" || echo "table1")
  start=$(date +%s)
  timeout 300 python3 -m oilwater_jax.cli reproduce $tables --preset $preset --seeds $seeds --results /tmp/gpu_results --no-progress \
    > "$OUT/reproduce_$preset.md" 2>&1
  echo "$preset: exit $? in $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu_pipeline_times.txt"
done
python3 - <<'PY' | tee "$OUT/cells_summary.txt"
import json, glob
for p in sorted(glob.glob("/tmp/gpu_results/cells/*/*/*.json")):
    r = json.load(open(p)); m = r["metrics"]
    print(r["preset"], r["config"]["row"]["method"], r["config"]["row"]["data"], r["config"]["row"]["attack"], r["config"]["row"].get("case"),
          r["seed"], r["status"], r["provenance"]["device"], round(r["provenance"]["wall_seconds"], 1),
          {k: round(m[k], 1) for k in ("wga", "asr", "idnf_poisons", "idnf_lrg1") if isinstance(m.get(k), (int, float))})
PY
