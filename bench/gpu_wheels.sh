#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with the wheels bench/gpu_check.sh needs on the lent GPU machine ("nvidia-h200")
# and that machine's image lacks. Run it HERE, with the network, before the device run: the GPU machine
# reaches no package registry, so a missing package can only travel as a wheel inside the working tree
# (64 MiB in all, the repo included). The device command (top of bench/gpu_check.sh) installs them with
# `pip install --no-index --no-deps --target /tmp/site .whl/*.whl`.
#
#   bash bench/gpu_wheels.sh            # PYTHON=... to pick the interpreter that builds DeepSpeed's wheel
#
# The image (/work/.library/device/KINDS.md): Python 3.12, torch 2.11.0+cu130, accelerate, transformers,
# numpy, pyyaml, tqdm, matplotlib, joblib, requests, six, packaging, psutil, py-cpuinfo, msgpack, einops,
# ninja, nvidia-ml-py, tensorboard, pytest. Missing, and imported by what gpu_check.sh runs:
#   music21 (the bundled Bach chorales: aurl.data.corpus) and its missing requirements;
#   symusic (MIDI parsing: aurl.data.midi_io) and its missing requirements (imported by symusic/__init__);
#   deepspeed (step 2b) and its missing requirements: pydantic and pydantic-core's chain, hjson.
# Left out, since nothing gpu_check.sh runs imports them: pretty_midi and mido (writing MIDI: generate,
# evaluate), wandb (--tracker none), miditok (bench_peer only).
# Versions: those the project's CPU venv runs its tests with (pip list there), so the device meets no
# untested version of them. Each is fetched with --no-deps: the list IS the dependency closure, minus what
# the image holds; two versions of one name would stop the install there.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
DEST=.whl
WHEELS=(
  music21==10.5.1 chardet==7.7.0 jsonpickle==4.1.4 more-itertools==11.2.1 webcolors==25.10.0
  symusic==0.6.0 pySmartDL==1.3.4 platformdirs==4.14.9
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 hjson==3.1.0
  # pydantic-core 2.50.5 needs typing-extensions>=4.16.0; the image's version is not on record
  typing_extensions==4.16.0
)
DEEPSPEED=deepspeed==0.19.8

rm -rf "$DEST"
mkdir -p "$DEST"
# the GPU machine's CPython 3.12 on x86-64 (glibc manylinux tags up to 2_28 cover every wheel above)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${WHEELS[@]}"
# DeepSpeed publishes only an sdist. Built here without its C++/CUDA ops (DS_BUILD_OPS unset: none
# prebuilt), it is pure Python (py3-none-any) and JIT-builds an op on first use where one is needed.
# --no-build-isolation: its setup.py imports torch, and an isolated build would fetch a CUDA torch of GBs
"$PY" -m pip wheel -q --no-deps --no-build-isolation --no-cache-dir -w "$DEST" "$DEEPSPEED"

names=$(ls "$DEST" | sed 's/-.*//' | tr 'A-Z_.' 'a-z--' | sort)
dupes=$(uniq -d <<<"$names")
if [ -n "$dupes" ]; then
  echo "gpu_wheels.sh: more than one wheel of: $dupes (the device install would stop)" >&2
  exit 1
fi
if ls "$DEST" | grep -v -e '-py3-none-any\.whl$' -e '-cp312-.*manylinux.*x86_64.*\.whl$' -e '-abi3-.*manylinux.*x86_64.*\.whl$'; then
  echo "gpu_wheels.sh: the wheel(s) above are not for CPython 3.12 on manylinux x86-64" >&2
  exit 1
fi
ls -l "$DEST"
wheels_kib=$(du -sk "$DEST" | cut -f1)
tree_kib=$(git ls-files -z --cached --others --exclude-standard | du -ck --files0-from=- | tail -1 | cut -f1)
echo "gpu_wheels.sh: $(ls "$DEST" | wc -l) wheels, $((wheels_kib / 1024)) MiB in $DEST; with the working tree" \
  "($((tree_kib / 1024)) MiB) $(((wheels_kib + tree_kib) / 1024)) MiB of the 64 MiB a device run carries"
