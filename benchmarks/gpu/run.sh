#!/usr/bin/env bash
# benchmarks/gpu/run.sh [--dry] [--out DIR] [--work DIR] [--size WxH] [--models "A B"]
#                       [--wheels DIR] [--model-timeout S] [--budget S] [-- BENCH ARGS...]
#
# The whole GPU benchmark in one command (at most 8 minutes, no network needed):
#   1. makes the slide stack importable: if a module wsi-ai needs is missing, or a wheel in
#      the wheels folder (benchmarks/gpu/wheels.sh) is not the installed version, installs
#      the folder with `pip install --no-index --no-deps --target /tmp/wsi-ai-site` (kept
#      between calls on a warm machine) and puts it first on PYTHONPATH; the repository goes
#      on PYTHONPATH too (the project itself is not pip-installed);
#   2. writes env.txt: date, this command, host, CPUs, memory, nvidia-smi, Python and
#      package versions, torch's view of the GPU;
#   3. generates the benchmark slide WORK/bench-WxH.svs (benchmarks/make_slide.py, 0.25
#      µm/px, --workers $(nproc); about 19 s for 60000x45000 on 2 cores) unless present;
#   4. runs `wsi-ai bench SLIDE --model M --random-init --device cuda --read-threads
#      $(nproc)-4 --json ...` for each model (default resnet50 and vit_base_patch16_224),
#      each under a time limit (later options after `--` win, e.g. --read-threads 8);
#   5. writes into the out dir (default $OUT if set, else bench-out/gpu): run.log (all the
#      output), env.txt, bench-M.txt (the table) and bench-M.json per model, and
#      summary.json (date, device, commands, slide, seconds, each model's JSON). That is 7
#      files with two models: the device tool brings back at most 8.
# Exit status: 0 all models ran, 1 a step or a model failed, 2 usage error.
#
# GPU machine, through the device tool (fetch the wheels here first, then carry them):
#   bash benchmarks/gpu/wheels.sh
#   run(command="bash benchmarks/gpu/run.sh", carry=["benchmarks/gpu/wheels"], timeout_s=540)
# Extra bench options for every model go after `--`, e.g.
#   bash benchmarks/gpu/run.sh -- --read-threads 12 --batch-size 256
#
# --dry: the same steps on the CPU in seconds (a 3000x2000 slide, resnet18, 16 patches,
# --device cpu), with whatever python3 is first on PATH (tests/test_gpu_script.py puts the
# project venv's there); it never installs wheels.
#
# Options: --out DIR (results), --work DIR (slides; default /tmp/wsi-ai-bench), --size WxH
# (level-0 px, default 60000x45000; dry 3000x2000), --models "A B" (model cards), --wheels DIR
# (default benchmarks/gpu/wheels), --model-timeout S (per model, default 180; dry 120),
# --budget S (the whole run, default 470: each model's limit is cut to what is left of it,
# and a model with under 30 s left is skipped).
# Environment: PYTHON (default python3), OUT (default out dir).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
site=/tmp/wsi-ai-site
py=${PYTHON:-python3}
invocation=$(printf '%q ' "$0" "$@")

usage() {
    sed -n '2,3p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//; s/^benchmarks/usage: benchmarks/'
}
die_usage() {
    echo "run.sh: $1 (see --help)" >&2
    exit 2
}

dry=0
out=${OUT:-bench-out/gpu}
work=/tmp/wsi-ai-bench
size=
models=
wheels=$here/wheels
model_timeout=
budget=470
extra=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --dry) dry=1 ;;
        --out | --work | --size | --models | --wheels | --model-timeout | --budget)
            [[ $# -ge 2 && -n $2 ]] || die_usage "$1 needs a value"
            case $1 in
                --out) out=$2 ;;
                --work) work=$2 ;;
                --size) size=$2 ;;
                --models) models=$2 ;;
                --wheels) wheels=$2 ;;
                --model-timeout) model_timeout=$2 ;;
                --budget) budget=$2 ;;
            esac
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        --)
            shift
            extra=("$@")
            break
            ;;
        *) die_usage "unknown option: $1" ;;
    esac
    shift
done
if [[ $dry == 1 ]]; then
    size=${size:-3000x2000}
    models=${models:-resnet18}
    model_timeout=${model_timeout:-120}
    bench_args=(--device cpu --max-patches 16 --batch-size 8 --read-threads 2)
else
    size=${size:-60000x45000}
    models=${models:-resnet50 vit_base_patch16_224}
    model_timeout=${model_timeout:-180}
    threads=$(($(nproc) > 5 ? $(nproc) - 4 : 1))
    bench_args=(--device cuda --read-threads "$((threads < 64 ? threads : 64))")
fi
[[ $size =~ ^[0-9]+x[0-9]+$ ]] || die_usage "--size $size: give WIDTHxHEIGHT"
[[ $model_timeout =~ ^[0-9]+$ && $budget =~ ^[0-9]+$ ]] ||
    die_usage "--model-timeout and --budget take whole seconds"
read -r -a model_list <<<"$models"
[[ ${#model_list[@]} -gt 0 ]] || die_usage "--models is empty"

mkdir -p "$out" "$work"
out=$(cd "$out" && pwd)
work=$(cd "$work" && pwd)
exec > >(tee "$out/run.log") 2>&1
export PYTHONUNBUFFERED=1 COLUMNS=${COLUMNS:-140}
echo "== wsi-ai GPU benchmark$([[ $dry == 1 ]] && echo ' (dry: CPU)'), $(date -u +%FT%TZ)"
echo "command: $invocation"

# -- 1. modules ---------------------------------------------------------------------------
modules="openslide tiffslide tifffile imagecodecs zarr numcodecs dask dask.array distributed
shapely defusedxml geojson cv2 skimage numba pandas pyarrow sklearn torch timm safetensors
click rich"
check_modules() { # prints what is missing or not at the wheel's version; fails if anything
    "$py" - "$modules" "$1" <<'EOF'
import importlib
import importlib.metadata as md
import sys
from pathlib import Path

modules, folder = sys.argv[1].split(), sys.argv[2]
bad = []
for name in modules:
    try:
        importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - a broken install counts as missing
        bad.append(f"{name} ({type(err).__name__}: {err})")
for wheel in sorted(Path(folder).glob("*.whl")) if folder else ():
    dist, version = wheel.name.split("-")[:2]
    try:
        have = md.version(dist)
    except md.PackageNotFoundError:
        have = None
    if have is None or have.replace("-", "_") != version:
        bad.append(f"{dist}=={version} (installed: {have})")
if bad:
    sys.exit("missing or another version: " + ", ".join(bad))
EOF
}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
wheel_dir=
[[ $dry == 0 ]] && compgen -G "$wheels/*.whl" >/dev/null && wheel_dir=$wheels
if check_modules "$wheel_dir" 2>/dev/null; then
    echo "modules: all importable${wheel_dir:+, at the versions of the wheels}"
elif [[ $dry == 1 ]]; then
    check_modules "" || true
    echo "run.sh: --dry uses the python3 on PATH as it is: install the project there" >&2
    exit 1
else
    export PYTHONPATH="$site:$PYTHONPATH"
    if [[ -n $wheel_dir ]] && ! check_modules "$wheel_dir" 2>/dev/null; then
        echo "modules: installing $(find "$wheel_dir" -maxdepth 1 -name '*.whl' | wc -l) wheels into $site"
        t=$SECONDS
        "$py" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
            --upgrade --target "$site" "$wheel_dir"/*.whl
        echo "modules: installed in $((SECONDS - t)) s"
    fi
    if ! check_modules "$wheel_dir"; then
        echo "run.sh: fetch the wheels here with benchmarks/gpu/wheels.sh and carry $wheels" >&2
        exit 1
    fi
    echo "modules: all importable from $site"
fi
echo "PYTHONPATH=$PYTHONPATH"

# -- 2. device and versions ---------------------------------------------------------------
{
    echo "date: $(date -u +%FT%TZ)"
    echo "command: $invocation"
    echo "repo: $repo ($(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
    echo "host: $(hostname 2>/dev/null || echo '?'), $(uname -srm), $(nproc) CPUs"
    echo "memory: $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "python: $(command -v "$py") ($("$py" -V 2>&1))"
    echo "PYTHONPATH: $PYTHONPATH"
    echo
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi || true
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit \
            --format=csv || true
    else
        echo "nvidia-smi: not found"
    fi
    echo
    "$py" - <<'EOF' || echo "(versions: the script above failed)"
import importlib.metadata as md

import torch

for dist in ("wsi-ai", "torch", "torchvision", "timm", "numpy", "opencv-python-headless",
             "openslide-python", "openslide-bin", "tifffile", "tiffslide", "imagecodecs",
             "zarr", "numcodecs", "dask", "distributed", "pillow"):
    try:
        print(f"{dist} {md.version(dist)}")
    except md.PackageNotFoundError:
        print(f"{dist} (not installed as a distribution)")
print(f"torch.cuda.is_available: {torch.cuda.is_available()}, CUDA {torch.version.cuda}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs,"
          f" capability {p.major}.{p.minor}, bf16 {torch.cuda.is_bf16_supported()}")
print(f"torch threads: {torch.get_num_threads()}")
EOF
} 2>&1 | tee "$out/env.txt"
device_name=$("$py" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")' 2>/dev/null || echo unknown)
if [[ $dry == 0 && ( $device_name == cpu || $device_name == unknown ) ]]; then
    echo "run.sh: torch sees no GPU here; use --dry for the CPU check" >&2
    exit 1
fi

# -- 3. slide -----------------------------------------------------------------------------
slide=$work/bench-$size.svs
slide_seconds=null
if [[ -f $slide ]]; then
    echo "slide: $slide is there, kept"
else
    echo "slide: generating $slide with $(nproc) workers"
    t=$SECONDS
    "$py" "$repo/benchmarks/make_slide.py" "$slide" --size "$size" --mpp 0.25 --workers "$(nproc)"
    slide_seconds=$((SECONDS - t))
    echo "slide: generated in $slide_seconds s"
fi

# -- 4. bench -----------------------------------------------------------------------------
cli='import sys; from wsi_ai.cli import main; sys.exit(main(prog_name="wsi-ai"))'
if ! "$py" -c "$cli" bench --help >/dev/null 2>&1; then
    "$py" -c "$cli" bench --help 2>&1 | tail -3 || true
    echo "run.sh: 'wsi-ai bench' is not available in this checkout" >&2
    exit 1
fi
results=()
failed=0
for model in "${model_list[@]}"; do
    left=$((budget - SECONDS))
    limit=$((model_timeout < left ? model_timeout : left))
    cmd=("$py" -c "$cli" bench "$slide" --model "$model" --random-init "${bench_args[@]}"
        --json "$out/bench-$model.json" "${extra[@]}")
    echo
    echo "== $model (limit ${limit} s)"
    echo "+ $(printf '%q ' wsi-ai "${cmd[@]:3}")"
    rm -f "$out/bench-$model.json"
    t=$SECONDS
    rc=0
    if ((left < 30)); then
        echo "run.sh: skipped $model: ${left} s left of the ${budget} s budget" >&2
        rc=124
    else
        timeout --kill-after=15 "$limit" "${cmd[@]}" 2>&1 | tee "$out/bench-$model.txt" ||
            rc=${PIPESTATUS[0]}
        ((rc == 124)) && echo "run.sh: $model stopped at its ${limit} s limit" >&2
    fi
    ((rc == 0)) || failed=1
    results+=("$model" "$rc" "$((SECONDS - t))" "$(printf '%q ' wsi-ai "${cmd[@]:3}")")
done

# -- 5. summary ---------------------------------------------------------------------------
"$py" - "$out" "$invocation" "$device_name" "$slide" "$size" "$slide_seconds" "$SECONDS" \
    "${results[@]}" <<'EOF'
import datetime
import json
import sys
from pathlib import Path

out, invocation, device, slide, size, slide_s, total_s, *rest = sys.argv[1:]
models = {}
for i in range(0, len(rest), 4):
    name, rc, seconds, command = rest[i:i + 4]
    path = Path(out) / f"bench-{name}.json"
    try:
        result = json.loads(path.read_text()) if path.exists() else None
    except ValueError as err:
        result = {"unreadable": str(err)}
    models[name] = {"command": command.strip(), "rc": int(rc), "seconds": int(seconds),
                    "result": result}
summary = {
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "device": device,
    "command": invocation.strip(),
    "slide": {"path": slide, "size": size, "mpp": 0.25,
              "generated_s": None if slide_s == "null" else int(slide_s)},
    "total_s": int(total_s),
    "models": models,
}
(Path(out) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
for name, m in models.items():
    print(f"{name}: rc {m['rc']}, {m['seconds']} s")
EOF
echo "== done in $SECONDS s; results in $out"
exit "$failed"
