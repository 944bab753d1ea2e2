#!/usr/bin/env bash
# benchmarks/gpu/wheels.sh [DIR]
#
# Run HERE (a machine with pip and network, after `make install`), never on the GPU machine.
# Fetches into DIR (default benchmarks/gpu/wheels, git-ignored) the cp312 manylinux x86-64
# wheels of exactly the packages wsi-ai needs (pyproject.toml's dependencies, transitively)
# that the GPU machine's image (python3 = Python 3.12 with torch, timm, numpy, OpenCV, ...;
# /work/.library/device/KINDS.md) lacks, plus tifffile, which tiffslide pins to a range the
# image's copy may miss. One version each, pinned to the version installed in .venv.
#   - idempotent: a wheel already in DIR at the pinned version is not fetched again; other
#     versions of the same package, and wheels of packages not in the list, are deleted
#     (two versions of one package stop `pip install --no-deps` there);
#   - checks that every requirement of every wheel (for Python 3.12 on Linux), and every
#     dependency in pyproject.toml, is met by DIR or by the image; fails if not;
#   - prints the total size and fails over 56 MiB (all that travels to the machine, the
#     working tree included, must stay under 64 MiB).
#
# Then run the benchmark there through the device tool, carrying the folder:
#   run(command="bash benchmarks/gpu/run.sh", carry=["benchmarks/gpu/wheels"], timeout_s=540)
# (benchmarks/gpu/run.sh installs them with pip --no-index --target; see its header.)
#
# Environment: PYTHON (default .venv/bin/python) is the interpreter whose pip downloads and
# whose installed versions are the pins.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${1:-$here/wheels}
py=${PYTHON:-$repo/.venv/bin/python}
limit_mib=56

if [[ $# -gt 1 || ${1:-} == -* ]]; then
    echo "usage: benchmarks/gpu/wheels.sh [DIR]" >&2
    exit 2
fi
if [[ ! -x $py ]]; then
    echo "wheels.sh: $py not found: run 'make install' first (or set PYTHON)" >&2
    exit 1
fi

# What the GPU image lacks, of wsi-ai's dependency closure (computed against KINDS.md's
# package list, 2026-11-17): the slide stack, Zarr, dask/distributed and geometry.
packages=(
    openslide-bin openslide-python tiffslide tifffile imagecodecs
    zarr numcodecs donfig google-crc32c
    dask partd locket distributed tblib tornado zict
    shapely defusedxml geojson
)
# What the image has that the closure needs (KINDS.md, "Python packages already there").
image_has="numpy numba llvmlite opencv-python-headless scikit-image pillow pandas pyarrow
torch torchvision timm safetensors huggingface-hub scikit-learn click rich markdown-it-py
mdurl pygments fsspec packaging typing-extensions pyyaml cloudpickle toolz jinja2 markupsafe
msgpack psutil sortedcontainers urllib3 scipy tqdm filelock networkx sympy"

mkdir -p "$dir"

# name==version pins from the venv, and the wheel-file prefix of each (PEP 427 names).
mapfile -t pins < <("$py" - "${packages[@]}" <<'EOF'
import importlib.metadata as md
import re
import sys

for name in sys.argv[1:]:
    try:
        version = md.version(name)
    except md.PackageNotFoundError:
        sys.exit(f"wheels.sh: {name} is not installed in {sys.executable}: run 'make install'")
    print(f"{name}=={version} {re.sub(r'[-_.]+', '_', name).lower()}-{version}-")
EOF
)

want=()
keep=()
for line in "${pins[@]}"; do
    spec=${line% *}
    prefix=${line#* }
    keep+=("$prefix")
    stem=${prefix%%-*}
    for f in "$dir/$stem"-*.whl; do
        [[ -e $f && $(basename "$f") != "$prefix"* ]] || continue
        echo "removing other version: $(basename "$f")"
        rm -f -- "$f"
    done
    if compgen -G "$dir/$prefix*.whl" >/dev/null; then
        echo "have      $spec"
    else
        echo "fetch     $spec"
        want+=("$spec")
    fi
done
for f in "$dir"/*.whl; do
    [[ -e $f ]] || continue
    ok=0
    for prefix in "${keep[@]}"; do
        [[ $(basename "$f") == "$prefix"* ]] && ok=1
    done
    if [[ $ok == 0 ]]; then
        echo "removing, not in the list: $(basename "$f")"
        rm -f -- "$f"
    fi
done

if [[ ${#want[@]} -gt 0 ]]; then
    platforms=()
    for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 \
        manylinux_2_5 manylinux1; do
        platforms+=(--platform "${p}_x86_64")
    done
    "$py" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --no-deps \
        --python-version 3.12 --implementation cp "${platforms[@]}" --platform any \
        --dest "$dir" "${want[@]}"
fi

# Every wheel present once, and the closure complete.
"$py" - "$dir" "$repo/pyproject.toml" "$image_has" "${pins[@]}" <<'EOF'
import re
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

folder, pyproject, image_has, *pins = sys.argv[1:]
def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()

env = default_environment() | {
    "python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
    "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
}
have = {norm(n) for n in image_has.split()}
wheels, problems = {}, []
for pin in pins:
    prefix = pin.split()[1]
    found = sorted(Path(folder).glob(prefix + "*.whl"))
    if len(found) != 1:
        problems.append(f"{pin.split()[0]}: {len(found)} wheels in {folder}")
        continue
    wheels[norm(pin.split("==")[0])] = found[0]
supplied = have | set(wheels)
needs = []
for path in wheels.values():
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = Parser().parsestr(z.read(meta).decode())
    needs += [(path.name, r) for r in msg.get_all("Requires-Dist") or []]
deps = tomllib.loads(Path(pyproject).read_text())["project"]["dependencies"]
needs += [("pyproject.toml", r) for r in deps]
for origin, text in needs:
    req = Requirement(text)
    if req.marker and not req.marker.evaluate(env | {"extra": ""}):
        continue
    if norm(req.name) not in supplied:
        problems.append(f"{origin} needs {text}: neither in {folder} nor on the GPU image")
if problems:
    sys.exit("wheels.sh: " + "\n  ".join(["incomplete:", *problems]))
print(f"closure complete: {len(wheels)} wheels + the image's packages")
EOF

total=$(cat "$dir"/*.whl | wc -c)
mib=$(awk -v b="$total" 'BEGIN { printf "%.1f", b / 1048576 }')
count=$(find "$dir" -maxdepth 1 -name '*.whl' | wc -l)
echo "$count wheels in $dir: $mib MiB (limit $limit_mib MiB)"
if ((total > limit_mib * 1048576)); then
    echo "wheels.sh: $mib MiB is over $limit_mib MiB: the device tool carries 64 MiB in all" >&2
    exit 1
fi
