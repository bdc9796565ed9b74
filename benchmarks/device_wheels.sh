#!/usr/bin/env bash
# Wheels the lent H200 machine lacks (its python3 already has torch, torchvision, opencv, numpy, pyyaml, tqdm):
# PyAV (SynthDrive writes its videos with it) and webdataset (poodle prepare). Run here, once, in the repo root;
# .whl/ is git-ignored and travels with `carry: [".whl"]`. Versions: the ones pyproject's ranges resolve to here.
set -euo pipefail
mkdir -p .whl
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
    -d .whl av==18.1.0 webdataset==1.0.2 braceexpand==0.1.7
ls -la .whl
