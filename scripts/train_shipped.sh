#!/usr/bin/env bash
# Reproduces the transforms shipped in src/veil/faceboxes/transforms (27-75 CPU-minutes each on 2 cores, plus tail tuning).
# Default configuration: split after inception3; the head's last block (inception3), the per-channel
# noise and the tail are trained together against an online reconstruction attacker
# (--train-head --privacy adversarial), label-free on LFW mosaics plus the *train* half of the street
# scenes (their boxes unused), so that the *test* half, the FDDB sample and the WIDER sample are never
# seen in training.
# Reference-design compatible: split after RDCL (the reference's 1x128x32x32 interface, same wire shape),
# noise and tail only, sigma capped at 0.3x the activations' std and suppression off: it keeps the
# reference's accuracy (above its 94.7 %) and is not private -- no RDCL release measured is (README).
# Training draws its noise from OS entropy, so a rerun gives a transform of the same quality, not the
# same bytes (two runs of one recipe differ by 1-2 AP points).
set -euo pipefail
SHARED=${VEIL_SHARED:-../shared}
W=$SHARED/weights/faceboxes/FaceBoxes.pth
OUT=${1:-src/veil/faceboxes/transforms}
DEVICE=${VEIL_DEVICE:-cpu}  # VEIL_DEVICE=cuda: every run on the GPU (minutes instead of hours)
common=(--weights "$W" --images "$SHARED/data/lfw/train" --labels "$SHARED/data/mask-scenes" --labels-part train
        --scene-fraction 0.75 --steps 1600 --samples 256 --size 1024 --seed 0 --device "$DEVICE" --quiet)
default=(--split inception3 --granularity channel --train-tail --train-head --lr-tail 1e-4
         --privacy adversarial --adversary-weight 3 --adversary-steps 2 --distill-weights uniform)
# (alpha 0.2, 0.5 and 0.8 were trained before --distill-weights existed, i.e. with its default `score`)
# Each release is then fixed and its tail trained further against it (`veil tune-tail`, step 2 below):
# what leaves the client -- and so the privacy audit -- is bit for bit the same (release_sha256).
tune=(--weights "$W" --steps 2400 --samples 1024 --scene-fraction 0.5 --device "$DEVICE" --quiet)
release() { echo "$OUT/.release-$1"; }
# 1. the releases. The default alpha 0.12 trains its online attacker at the size clients send
#    (--adversary-size 1024) with four decoder updates per step: the full-budget audit found the
#    half-size attacker too kind (docs/privacy.md, "The full budget changes the answer"). About 75 minutes.
[ -f "$OUT/faceboxes-inception3-alpha0.12/transform.json" ] ||
veil train "${common[@]}" "${default[@]}" --adversary-size 1024 --adversary-steps 4 \
  --alpha 0.12 --out "$(release 0.12)"
for a in 0.2 0.5 0.8; do
  [ -f "$OUT/faceboxes-inception3-alpha$a/transform.json" ] && continue  # already trained
  veil train "${common[@]}" "${default[@]}" --alpha "$a" --out "$(release $a)"
done
# (the file it replaced used the default cap, 8x, and suppression: 80 % of channels suppressed, 88.9 /
# 103.3 / 87.4 % of street / FDDB / WIDER AP after four tail passes, and still far from private)
[ -f "$OUT/faceboxes-rdcl-alpha0.8/transform.json" ] ||
veil train "${common[@]}" --alpha 0.8 --split rdcl --train-tail --granularity channel --smax-factor 0.3 \
  --suppress-factor 2 --lr-tail 1e-4 --distill-weights uniform --out "$(release rdcl)"
# 2. the tails, against the frozen releases (12-25 minutes a pass on 2 cores). alpha 0.12, 0.5, 0.8 and
#    RDCL add a two-block server-side adapter (--adapter 2); alpha 0.12 then takes a second pass on twice
#    the samples (retune), and a third with more street-scene crops (--scene-fraction 0.75): together +1
#    street-scene point; then street crops tiled as crowds (--scene-grids): +1 street point. RDCL takes one
#    pass, on street crops and their crowds (README, "What this says").
tuned() {  # release-dir out-dir [options]
  [ -d "$1" ] || return 0
  veil tune-tail "${tune[@]}" -t "$1" --out "$2" "${@:3}" && rm -rf "$1"
}
retune() {  # transform-dir [options]: train its tail again, in place
  veil tune-tail "${tune[@]}" -t "$1" --out "$1.next" "${@:2}" && rm -rf "$1" && mv "$1.next" "$1"
}
second=(--samples 2048 --seed 2)
if [ -d "$(release 0.12)" ]; then
  tuned "$(release 0.12)" "$OUT/faceboxes-inception3-alpha0.12" --adapter 2
  retune "$OUT/faceboxes-inception3-alpha0.12" "${second[@]}" --lr-tail 5e-5
  retune "$OUT/faceboxes-inception3-alpha0.12" --samples 2048 --seed 3 --lr-tail 5e-5 --scene-fraction 0.75
  # 4th and 5th: more small faces (finer photo mosaics, then street crops tiled 2x2 to 4x4 as crowds)
  retune "$OUT/faceboxes-inception3-alpha0.12" --samples 2048 --seed 4 --lr-tail 5e-5 --scene-fraction 0.6 \
    --mosaic-grids 6,8,12,16
  retune "$OUT/faceboxes-inception3-alpha0.12" --samples 2048 --seed 5 --lr-tail 5e-5 --scene-fraction 0.75 \
    --scene-grids 1,2,3,4 --mosaic-grids 1,2,3,4,6,8,12,16
fi
tuned "$(release 0.2)" "$OUT/faceboxes-inception3-alpha0.2"
tuned "$(release 0.5)" "$OUT/faceboxes-inception3-alpha0.5" --adapter 2 "${second[@]}"
tuned "$(release 0.8)" "$OUT/faceboxes-inception3-alpha0.8" --adapter 2
tuned "$(release rdcl)" "$OUT/faceboxes-rdcl-alpha0.8" --adapter 2 --scene-fraction 0.75 --scene-grids 1,2,3,4
# mark the default configuration (what `--alpha A` and `veil demo` use)
python3 - "$OUT" <<'PY'
import json, sys, pathlib
for meta in pathlib.Path(sys.argv[1]).glob("*/transform.json"):
    d = json.loads(meta.read_text())
    d["default"] = d["split"] == "inception3"
    meta.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
PY
