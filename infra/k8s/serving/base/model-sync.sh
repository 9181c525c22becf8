#!/bin/sh
# Mirror the TF Serving model repository s3://$MODELS_BUCKET into $MODEL_REPOSITORY (default /models),
# one whole version at a time.
#
# The deploy step publishes <model>/<version>/ with `_SUCCESS` written last; only such complete
# versions are moved into /models, each with a single rename, so TF Serving never loads a half-copied
# SavedModel. Versions removed from the bucket (a failed canary) are removed here too. The bucket's
# models.config replaces the bootstrap copy from the ConfigMap. `--once` syncs one time (init container).
set -u
SRC="s3://${MODELS_BUCKET:-models}"
REPO="${MODEL_REPOSITORY:-/models}"
BOOTSTRAP_CONFIG="${BOOTSTRAP_CONFIG:-/bootstrap/models.config}"
STAGING="$REPO/.staging"
export HOME=/tmp

is_version() { case "$1" in ''|*[!0-9]*) return 1 ;; *) return 0 ;; esac; }

sync_once() {
  aws s3 sync "$SRC/" "$STAGING/" --delete --exclude "*_tmp/*" --only-show-errors || return 1
  for marker in "$STAGING"/*/*/_SUCCESS; do
    [ -e "$marker" ] || continue
    src_dir=$(dirname "$marker")
    rel=${src_dir#"$STAGING"/}
    is_version "${rel##*/}" || continue
    dst="$REPO/$rel"
    [ -d "$dst" ] && continue
    mkdir -p "$(dirname "$dst")"
    rm -rf "$dst.partial"
    cp -r "$src_dir" "$dst.partial" && mv "$dst.partial" "$dst" && echo "published $rel"
  done
  for dst in "$REPO"/*/*; do
    [ -d "$dst" ] || continue
    rel=${dst#"$REPO"/}
    case "$rel" in .staging/*) continue ;; esac
    is_version "${rel##*/}" || continue
    [ -e "$STAGING/$rel/_SUCCESS" ] || { rm -rf "$dst" && echo "removed $rel"; }
  done
  # cksum (coreutils) rather than cmp: the aws-cli image has no diffutils.
  if [ -f "$STAGING/models.config" ] &&
    [ "$(cksum <"$STAGING/models.config")" != "$(cksum <"$REPO/models.config" 2>/dev/null)" ]; then
    cp "$STAGING/models.config" "$REPO/models.config.partial" &&
      mv "$REPO/models.config.partial" "$REPO/models.config" && echo "updated models.config"
  fi
}

[ -f "$REPO/models.config" ] || cp "$BOOTSTRAP_CONFIG" "$REPO/models.config"
if [ "${1:-}" = "--once" ]; then
  sync_once
  exit $?
fi
while true; do
  sync_once || echo "model sync failed; retrying in ${SYNC_INTERVAL_SECONDS:-10}s"
  sleep "${SYNC_INTERVAL_SECONDS:-10}"
done
