#!/bin/sh
# Mirror what models.config serves from s3://$MODELS_BUCKET into $MODEL_REPOSITORY (default /models),
# one whole version at a time.
#
# Only the model folders that models.config names are fetched (the bucket also holds training outputs
# and checkpoints, which must not fill the pod's volume), and of those only the versions the config's
# version policy serves: `specific` versions, the newest `latest { num_versions }` complete versions
# (default 1), every version of an `all` policy, and every labelled version. The deploy step publishes
# <model>/<version>/ with `_SUCCESS` written last; only such complete versions are moved into /models,
# each with a single rename, so TF Serving never loads a half-copied SavedModel. Order per pass: fetch
# the config, publish the versions it needs, swap the config in, then remove local copies of versions
# (and models) it no longer serves — TF Serving has unloaded them by then or does so on its next poll.
# The bucket's models.config replaces the bootstrap copy from the ConfigMap. `--once` syncs one time.
set -u
SRC="s3://${MODELS_BUCKET:-models}"
REPO="${MODEL_REPOSITORY:-/models}"
BOOTSTRAP_CONFIG="${BOOTSTRAP_CONFIG:-/bootstrap/models.config}"
STAGING="$REPO/.staging"
CONFIG_STAGING="$REPO/.config-staging"
export HOME=/tmp

is_version() { case "$1" in ''|*[!0-9]*) return 1 ;; *) return 0 ;; esac; }

# One line per model of a text ModelServerConfig: NAME|POLICY|NUM_VERSIONS|SPECIFIC...|LABELLED...
served_models() {
  tr '{}:,' '    ' <"$1" | awk '
    function flush() { if (name != "") printf "%s|%s|%d|%s|%s\n", name, policy, num, specific, labels }
    { for (i = 1; i <= NF; i++) {
        t = $i
        if (t == "config") { flush(); name = ""; policy = "latest"; num = 1; specific = ""; labels = ""; continue }
        if (t == "name" && i < NF) { v = $(i + 1); gsub(/"/, "", v); name = v; i++; continue }
        if (t == "all") { policy = "all"; continue }
        if (t == "specific") { policy = "specific"; continue }
        if (t == "num_versions" && i < NF) { num = $(i + 1) + 0; i++; continue }
        if (t == "versions" && i < NF) { specific = specific " " $(i + 1); i++; continue }
        if (t == "value" && i < NF) { labels = labels " " $(i + 1); i++; continue }
      } }
    END { flush() }'
}

# Versions of one model to keep, given its staged folder and its policy line.
wanted_versions() { # $1 staged model dir, $2 policy, $3 num, $4 specific, $5 labels
  complete=$(for m in "$1"/*/_SUCCESS; do [ -e "$m" ] && basename "$(dirname "$m")"; done | sort -n)
  case "$2" in
    all) keep="$complete" ;;
    specific) keep="$4" ;;
    *) keep=$(echo "$complete" | tail -n "$3") ;;
  esac
  for v in $keep $5; do is_version "$v" && echo "$v"; done | sort -n | uniq
}

sync_once() {
  aws s3 sync "$SRC/" "$CONFIG_STAGING/" --exclude "*" --include "models.config" --only-show-errors || return 1
  config="$REPO/models.config"
  [ -f "$CONFIG_STAGING/models.config" ] && config="$CONFIG_STAGING/models.config"
  plan=$(served_models "$config")
  mkdir -p "$STAGING"
  echo "$plan" | while IFS='|' read -r name policy num specific labels; do
    [ -n "$name" ] || continue
    aws s3 sync "$SRC/$name/" "$STAGING/$name/" --delete --exclude "*_tmp/*" --only-show-errors || exit 1
    for v in $(wanted_versions "$STAGING/$name" "$policy" "$num" "$specific" "$labels"); do
      src_dir="$STAGING/$name/$v"
      dst="$REPO/$name/$v"
      [ -e "$src_dir/_SUCCESS" ] || continue
      [ -d "$dst" ] && continue
      mkdir -p "$REPO/$name"
      rm -rf "$dst.partial"
      cp -r "$src_dir" "$dst.partial" && mv "$dst.partial" "$dst" && echo "published $name/$v"
    done
  done || return 1
  # cksum (coreutils) rather than cmp: the aws-cli image has no diffutils.
  if [ -f "$CONFIG_STAGING/models.config" ] &&
    [ "$(cksum <"$CONFIG_STAGING/models.config")" != "$(cksum <"$REPO/models.config" 2>/dev/null)" ]; then
    cp "$CONFIG_STAGING/models.config" "$REPO/models.config.partial" &&
      mv "$REPO/models.config.partial" "$REPO/models.config" && echo "updated models.config"
  fi
  remove_unserved "$plan"
}

# Local copies of models the config does not name, and of versions it does not serve, are deleted.
remove_unserved() {
  names=$(echo "$1" | cut -d'|' -f1)
  for dir in "$REPO"/* "$STAGING"/*; do
    [ -d "$dir" ] || continue
    echo "$names" | grep -qx "$(basename "$dir")" || { rm -rf "$dir" && echo "removed ${dir#"$REPO"/}"; }
  done
  echo "$1" | while IFS='|' read -r name policy num specific labels; do
    [ -n "$name" ] && [ -d "$REPO/$name" ] || continue
    keep=$(wanted_versions "$STAGING/$name" "$policy" "$num" "$specific" "$labels")
    for dst in "$REPO/$name"/*; do
      v=$(basename "$dst")
      is_version "$v" || continue
      if [ ! -e "$STAGING/$name/$v/_SUCCESS" ] || ! echo "$keep" | grep -qx "$v"; then
        rm -rf "$dst" && echo "removed $name/$v"
      fi
    done
  done
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
