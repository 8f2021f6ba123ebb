#!/bin/sh
# collect.sh RUN DEST: copies what `warp report` and a reader need from the `warp run` folder RUN
# into DEST — plan.json, the evaluation (eval.csv, eval.json, eval-samples.csv gzip-compressed),
# the merges' angle reports and every RL run's metrics.jsonl and run.json — but no checkpoint.
set -eu
run=$1
dest=$2
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
cp "$run/plan.json" "$run/eval.csv" "$run/eval.json" "$dest/"
[ -f "$run/front.svg" ] && cp "$run/front.svg" "$dest/"
gzip -9n < "$run/eval-samples.csv" > "$dest/eval-samples.csv.gz"
cd "$run"
for f in iter-*/slerp-angles.json iter-*/run-*/metrics.jsonl iter-*/run-*/run.json \
    init-anchor/run-*/metrics.jsonl init-anchor/run-*/run.json; do
    [ -f "$f" ] || continue
    mkdir -p "$dest/$(dirname "$f")"
    cp "$f" "$dest/$f"
done
