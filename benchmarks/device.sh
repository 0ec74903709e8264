#!/usr/bin/env bash
# The benchmark on an accelerator, in one go: `bash benchmarks/device.sh [OUT.json]`.
#
# Installs the project with the JAX build for the machine's accelerator (CUDA 12 when
# nvidia-smi answers, TPU when a TPU is visible, the CPU build otherwise) into .venv-device, then
# runs `benchmarks/run.py` at the smoke size and the full sweep, exact-curve, routing and k-means
# cases, and writes one JSON (default benchmarks/results/bench_device.json) holding both runs and
# the device list. The NumPy / scikit-learn baselines run on the host CPU as in every run.
# About 5 minutes on one GPU, most of it the install and the first compiles.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/bench_device.json}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then extra=cuda12
elif [ -e /dev/accel0 ] || [ -n "${TPU_NAME:-}" ]; then extra=tpu
else extra=""; fi
python3 -m venv .venv-device
.venv-device/bin/pip install -q -e ".[test${extra:+,$extra}]"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
.venv-device/bin/python -c "import jax; print('devices:', jax.devices())"
.venv-device/bin/python benchmarks/run.py --size smoke --only sweep,exact,routing,kmeans --out "$tmp/smoke.json"
.venv-device/bin/python benchmarks/run.py --size full --only sweep,exact,routing,kmeans --out "$tmp/full.json"
.venv-device/bin/python - "$tmp" "$out" <<'PY'
import json, sys
from pathlib import Path
tmp, out = Path(sys.argv[1]), Path(sys.argv[2])
merged = {size: json.loads((tmp / f"{size}.json").read_text()) for size in ("smoke", "full")}
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(merged, indent=1))
print(f"wrote {out}")
PY
