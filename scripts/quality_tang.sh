#!/usr/bin/env bash
# tang_poems at scale (issue 16): the large-corpus preset's 1x512, --softmax full against
# --softmax adaptive, 20 minutes of training each, both at once with one thread each (so they
# share the machine alike); then the whole held-out part scored by `charlstm eval`; then the
# adaptive run resumed to 30 minutes in all and scored again (the quality table in
# docs/quality.md). About an hour of wall time on 2 cores.
#
#   bash scripts/quality_tang.sh [WORKDIR]          # default WORKDIR: /tmp/quality_tang
set -euo pipefail
corpus="$(cd "$(dirname "$0")/.." && pwd)/../shared/data/tang_poems.txt.zip"
work="${1:-/tmp/quality_tang}"
mkdir -p "$work" && cd "$work"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
[ -f tang/meta.json ] || charlstm prepare "$corpus" --out tang
common=(--preset large-corpus --time-limit 20 --eval-every 50 --eval-chars 20000 --patience 0
        --sample-every 0 --device cpu)
/usr/bin/time -v charlstm train tang "${common[@]}" --softmax adaptive --run-dir ad > ad.log 2>&1 &
/usr/bin/time -v charlstm train tang "${common[@]}" --softmax full --run-dir fu > fu.log 2>&1 &
wait
charlstm eval tang --checkpoint ad --device cpu > eval_ad.log &
charlstm eval tang --checkpoint fu --device cpu > eval_fu.log &
wait
cp -r ad ad30
charlstm train --resume ad30 --time-limit 30 > ad30.log 2>&1
charlstm eval tang --checkpoint ad30 --device cpu > eval_ad30.log
tail -n 1 eval_ad.log eval_fu.log eval_ad30.log
