#!/usr/bin/env bash
# Periodic retrain-and-push (run by dawnchorus-retrain.service; see README.md here).
#
# 1. train on the current labelled data          python -m trainer train
# 2. evaluate the new bundle on the held-out set  python -m trainer evaluate
# 3. evaluate the deployed bundle on the same set python -m trainer evaluate
# 4. push only if the new one is at least as good python -m trainer push
#
# Settings come from the environment (EnvironmentFile= in the unit):
#   DATA          labelled recordings to train on (folder-per-class or metadata.csv)    required
#   HOLDOUT       held-out recordings, never trained on, for the comparison             required
#   KEY           the team's Ed25519 private key (signing.key)                          required
#   PUBLIC_KEY    its public key (signing.pub)                                          required
#   PUSH_CONFIG   YAML with the mqtt section (broker, TLS, user) for the push          required
#   TRAIN_CONFIG  trainer options YAML                                                  optional
#   CHANNEL       update channel to push to (default: stable)
#   METRICS       comma-separated metrics that must not get worse
#                 (default: macro_roc_auc,recording_top1_accuracy)
#   MIN_GAIN      required improvement on each metric (default 0: "at least as good")
#   WORK          state folder (default: $STATE_DIRECTORY or /var/lib/dawnchorus-trainer)
#   PYTHON        interpreter with dawnchorus[trainer] installed (default: python3)
#   KEEP_RUNS     how many run folders to keep (default 10)
set -euo pipefail

: "${DATA:?set DATA}" "${HOLDOUT:?set HOLDOUT}" "${KEY:?set KEY}" "${PUBLIC_KEY:?set PUBLIC_KEY}"
: "${PUSH_CONFIG:?set PUSH_CONFIG}"
CHANNEL=${CHANNEL:-stable}
METRICS=${METRICS:-macro_roc_auc,recording_top1_accuracy}
MIN_GAIN=${MIN_GAIN:-0}
WORK=${WORK:-${STATE_DIRECTORY:-/var/lib/dawnchorus-trainer}}
PYTHON=${PYTHON:-python3}
KEEP_RUNS=${KEEP_RUNS:-10}
HERE=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$WORK/runs"
exec 9>"$WORK/.lock"
flock -n 9 || { echo "another retrain is running; skipping"; exit 0; }

RUN=$(mktemp -d "$WORK/runs/$(date -u +%Y%m%dT%H%M%SZ)-XXXX")
echo "retrain run $RUN"

train_args=(--data "$DATA" --out "$RUN/train" --key "$KEY" --cache-dir "$WORK/cache" --quiet)
[[ -n "${TRAIN_CONFIG:-}" ]] && train_args+=(--config "$TRAIN_CONFIG")
"$PYTHON" -m trainer train "${train_args[@]}"

shopt -s nullglob
bundles=("$RUN"/train/*.bundle)
(( ${#bundles[@]} == 1 )) || { echo "expected one bundle in $RUN/train, found ${#bundles[@]}" >&2; exit 1; }
NEW=${bundles[0]}

"$PYTHON" -m trainer evaluate --bundle "$NEW" --data "$HOLDOUT" --out "$RUN/eval-new" \
    --public-key "$PUBLIC_KEY" --cache-dir "$WORK/cache" --quiet

DEPLOYED="$WORK/deployed.bundle"
deployed_metrics=()
if [[ -f "$DEPLOYED" ]]; then
    # the deployed model is evaluated again: the held-out set may have grown since
    "$PYTHON" -m trainer evaluate --bundle "$DEPLOYED" --data "$HOLDOUT" --out "$RUN/eval-deployed" \
        --public-key "$PUBLIC_KEY" --cache-dir "$WORK/cache" --quiet
    deployed_metrics=("$RUN/eval-deployed/metrics.json")
else
    echo "nothing deployed yet (no $DEPLOYED): the new model is pushed"
fi

set +e
"$PYTHON" "$HERE/compare_metrics.py" "$RUN/eval-new/metrics.json" "${deployed_metrics[@]}" \
    --metrics "$METRICS" --min-gain "$MIN_GAIN" | tee "$RUN/decision.txt"
decision=${PIPESTATUS[0]}
set -e

case $decision in
0)
    "$PYTHON" -m trainer push "$NEW" --config "$PUSH_CONFIG" --channel "$CHANNEL" --public-key "$PUBLIC_KEY"
    cp "$NEW" "$DEPLOYED.tmp" && sync "$DEPLOYED.tmp" && mv -f "$DEPLOYED.tmp" "$DEPLOYED"
    echo "pushed $(basename "$NEW") to channel $CHANNEL"
    ;;
1)
    echo "kept the deployed model; the new one is in $RUN"
    ;;
*)
    echo "cannot compare the models" >&2
    exit 1
    ;;
esac

# keep the last KEEP_RUNS runs
ls -1d "$WORK"/runs/*/ | head -n -"$KEEP_RUNS" | xargs -r rm -rf --
