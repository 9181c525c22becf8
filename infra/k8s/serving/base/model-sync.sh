#!/bin/sh
# Mirror what models.config serves from s3://$MODELS_BUCKET into $MODEL_REPOSITORY (default /models),
# one whole version at a time.
#
# Only the model folders that models.config names are read (the bucket also holds training outputs
# and checkpoints, which must not fill the pod's volume), and of those only the versions the config's
# version policy serves are downloaded: `specific` versions, the newest `latest { num_versions }` complete
# versions (default 1), every version of an `all` policy. Labels load nothing (as in TF Serving: a label
# only names a version the policy serves). A version is complete once its `_SUCCESS` is in the bucket (the
# deploy step writes it last); the list of complete versions comes from one listing per model, so no
# unserved version is ever downloaded. Each version is downloaded into $REPO/.staging and moved into
# place by one rename (same volume, no second copy), so TF Serving never loads a half-copied SavedModel.
# Order per pass: fetch the config, publish the versions it needs, swap the config in, then remove local
# copies of versions (and models) it no longer serves — TF Serving has unloaded them by then or does so
# on its next poll. The bucket's models.config replaces the bootstrap copy from the ConfigMap.
# `--once` syncs one time.
set -u
BUCKET="${MODELS_BUCKET:-models}"
SRC="s3://$BUCKET"
REPO="${MODEL_REPOSITORY:-/models}"
BOOTSTRAP_CONFIG="${BOOTSTRAP_CONFIG:-/bootstrap/models.config}"
STAGING="$REPO/.staging"
CONFIG_STAGING="$REPO/.config-staging"
export HOME=/tmp

is_version() { case "$1" in ''|*[!0-9]*) return 1 ;; *) return 0 ;; esac; }

# One line per model of a text ModelServerConfig: NAME|POLICY|NUM_VERSIONS|SPECIFIC...
served_models() {
  tr '{}:,' '    ' <"$1" | awk '
    function flush() { if (name != "") printf "%s|%s|%d|%s\n", name, policy, num, specific }
    { for (i = 1; i <= NF; i++) {
        t = $i
        if (t == "config") { flush(); name = ""; policy = "latest"; num = 1; specific = ""; continue }
        if (t == "name" && i < NF) { v = $(i + 1); gsub(/"/, "", v); name = v; i++; continue }
        if (t == "all") { policy = "all"; continue }
        if (t == "specific") { policy = "specific"; continue }
        if (t == "num_versions" && i < NF) { num = $(i + 1) + 0; i++; continue }
        if (t == "versions" && i < NF) { specific = specific " " $(i + 1); i++; continue }
      } }
    END { flush() }'
}

# Complete versions of model $1 in the bucket, ascending: one listing of its `_SUCCESS` markers (list-objects-v2
# answers an empty prefix with "None" and status 0, where `aws s3 ls` would fail).
complete_versions() {
  keys=$(aws s3api list-objects-v2 --bucket "$BUCKET" --prefix "$1/" --output text \
    --query 'Contents[?ends_with(Key, `/_SUCCESS`)].Key') || return 1
  for key in $keys; do
    v=${key#"$1"/}
    v=${v%/_SUCCESS}
    is_version "$v" && echo "$v"
  done | sort -n
}

# Versions of one model to serve: $1 its complete versions, $2 policy, $3 num, $4 specific.
wanted_versions() {
  case "$2" in
    all) keep="$1" ;;
    specific) keep=$(for v in $4; do echo "$1" | grep -qx "$v" && echo "$v"; done) ;;
    *) keep=$(echo "$1" | tail -n "$3") ;;
  esac
  for v in $keep; do is_version "$v" && echo "$v"; done | sort -n | uniq
}

# Download version $2 of model $1 into staging and move it into place; a version already in place is kept.
publish_version() {
  dst="$REPO/$1/$2"
  [ -d "$dst" ] && return 0
  staged="$STAGING/$1/$2"
  aws s3 sync "$SRC/$1/$2/" "$staged/" --delete --exclude "*_tmp/*" --only-show-errors || return 1
  [ -e "$staged/_SUCCESS" ] || return 0 # deleted since the listing: not served
  mkdir -p "$REPO/$1" && mv "$staged" "$dst" && echo "published $1/$2"
}

sync_once() {
  aws s3 sync "$SRC/" "$CONFIG_STAGING/" --exclude "*" --include "models.config" --only-show-errors || return 1
  config="$REPO/models.config"
  [ -f "$CONFIG_STAGING/models.config" ] && config="$CONFIG_STAGING/models.config"
  plan=$(served_models "$config")
  mkdir -p "$STAGING"
  : >"$STAGING/.served"
  echo "$plan" | while IFS='|' read -r name policy num specific; do
    [ -n "$name" ] || continue
    complete=$(complete_versions "$name") || exit 1
    keep=$(wanted_versions "$complete" "$policy" "$num" "$specific")
    echo "$name|" $keep >>"$STAGING/.served"
    for v in $keep; do publish_version "$name" "$v" || exit 1; done
  done || return 1
  # cksum (coreutils) rather than cmp: the aws-cli image has no diffutils.
  if [ -f "$CONFIG_STAGING/models.config" ] &&
    [ "$(cksum <"$CONFIG_STAGING/models.config")" != "$(cksum <"$REPO/models.config" 2>/dev/null)" ]; then
    cp "$CONFIG_STAGING/models.config" "$REPO/models.config.partial" &&
      mv "$REPO/models.config.partial" "$REPO/models.config" && echo "updated models.config"
  fi
  remove_unserved "$STAGING/.served"
}

# Local copies (and staged leftovers) of models the config does not name, and of versions it does not
# serve, are deleted. $1: the pass's "NAME| V V ..." lines.
remove_unserved() {
  names=$(cut -d'|' -f1 <"$1")
  for dir in "$REPO"/* "$STAGING"/*; do
    [ -d "$dir" ] || continue
    echo "$names" | grep -qx "$(basename "$dir")" || { rm -rf "$dir" && echo "removed ${dir#"$REPO"/}"; }
  done
  while IFS='|' read -r name keep; do
    for dst in "$REPO/$name"/* "$STAGING/$name"/*; do
      v=$(basename "$dst")
      is_version "$v" || continue
      case " $keep " in *" $v "*) continue ;; esac
      rm -rf "$dst" && echo "removed ${dst#"$REPO"/}"
    done
  done <"$1"
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
