#!/usr/bin/env bash
# Paper scale on one GPU, in about 8 minutes: the CUDA-only tests, then bench_gpu.py (generation latency, training
# MFU and memory, tokenizer speed). Writes OUT_DIR/gpu_report.md, tables to paste into docs/benchmarks.md.
#
#   bash benchmarks/gpu_check.sh --fetch-wheels  # with PyPI at hand: the wheels a bare GPU machine lacks, into .whl/
#   bash benchmarks/gpu_check.sh                 # on the GPU machine (its python3 and torch, plus .whl/ if there)
#   bash benchmarks/gpu_check.sh --dry-run       # anywhere: the same steps at tiny sizes on the CPU
#
# Options: --out DIR (default: $OUT if set, else .bench/gpu-check), --python PATH (default: python3, or the
# project's .venv for --dry-run when there is one), --budget SECONDS for bench_gpu.py's rows (default 300).
set -euo pipefail
cd "$(dirname "$0")/.."

# What the GPU machine's image lacks among our packages' dependencies; versions come from uv.lock.
CARRIED=(xformers av webdataset braceexpand vector-quantize-pytorch einx frozendict loguru torch-einops-utils)

mode=run out_dir="${OUT:-.bench/gpu-check}" python="" budget=300
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) mode=dry-run ;;
    --fetch-wheels) mode=fetch ;;
    --out) out_dir="$2"; shift ;;
    --python) python="$2"; shift ;;
    --budget) budget="$2"; shift ;;
    *) echo "gpu_check.sh: unknown option $1 (see the header of benchmarks/gpu_check.sh)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$python" ]; then
  python=python3
  if [ "$mode" = dry-run ] && [ -x .venv/bin/python ]; then python=.venv/bin/python; fi
fi

if [ "$mode" = fetch ]; then
  # The GPU machine runs Python 3.12 on x86-64 Linux; --no-deps: every needed package is named in CARRIED.
  specs=$("$python" - "${CARRIED[@]}" <<'EOF'
import sys, tomllib
# A package locked twice (per Python version) has resolution markers: take the entry for Python 3.12.
versions = {package["name"]: package["version"] for package in tomllib.load(open("uv.lock", "rb"))["package"]
            if "python_full_version < '3.12'" not in " ".join(package.get("resolution-markers", []))}
print(" ".join(f"{name}=={versions[name]}" for name in sys.argv[1:]))
EOF
)
  rm -rf .whl
  # shellcheck disable=SC2086
  "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $specs
  ls -l .whl
  exit 0
fi

mkdir -p "$out_dir"
report="$out_dir/gpu_report.md"
log="$out_dir/gpu_check.log"
# Carried wheels are for the GPU machine's Python 3.12; a dry run uses the environment it is given.
if [ "$mode" = run ] && compgen -G ".whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/wd-site \
    .whl/*.whl
  extra_path=/tmp/wd-site
fi
# Our packages as source; benchmarks/ for the bench_* modules bench_gpu.py reuses.
PYTHONPATH="$(printf '%s:' packages/*/src)benchmarks${extra_path:+:$extra_path}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH PYTHONUNBUFFERED=1

dry=()
if [ "$mode" = dry-run ]; then dry=(--dry-run); fi
if [ "$mode" = run ]; then  # which xformers kernels load here (evidence for docs/benchmarks.md, "xformers")
  "$python" -m xformers.info >"$out_dir/xformers_info.txt" 2>&1 || true
fi
{
  echo "## GPU check ($(date -u +%Y-%m-%d), \`bash benchmarks/gpu_check.sh${dry[*]:+ ${dry[*]}}\`)"
  echo
  if command -v nvidia-smi >/dev/null && [ "$mode" = run ]; then
    echo "- $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
  fi
} >"$report"

# The CUDA-only tests (marked gpu), at most 120 s: on a CPU they all skip, so the dry run checks that they collect.
gpu_tests=$(grep -rl --include='test_*.py' 'pytest.mark.gpu' packages/*/tests tests | sort)
set +e
# shellcheck disable=SC2086
timeout 120 "$python" -m pytest -m gpu -q -p no:cacheprovider $gpu_tests >"$out_dir/pytest_gpu.txt" 2>&1
tests_status=$?
set -e
summary=$(tail -n 1 "$out_dir/pytest_gpu.txt")
echo "- CUDA-only tests (\`pytest -m gpu\` over $(echo $gpu_tests | wc -w) files): $summary" >>"$report"

"$python" benchmarks/bench_gpu.py "${dry[@]}" --budget "$budget" 2>"$log" | tee -a "$report"
echo "report: $report (stderr of the benchmark: $log; test output: $out_dir/pytest_gpu.txt)"
# 0 = tests passed (or skipped); 5 = none collected; 124 = the tests ran past 120 s.
if [ "$tests_status" -ne 0 ] && [ "$tests_status" -ne 5 ]; then exit "$tests_status"; fi
