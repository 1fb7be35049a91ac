#!/bin/bash
# Boot script of a Rossby node (EC2 user data, run once by cloud-init), generated
# by terraform/modules/aws-region. Its output is in /var/log/rossby-boot.log.
set -euo pipefail
exec > >(tee -a /var/log/rossby-boot.log) 2>&1

log() { echo "rossby-boot: $*"; }

# fetch URL DEST: s3:// through the instance role, https:// with curl; retried,
# because NAT and routes may still be coming up on a new deployment.
fetch() {
  local url=$1 dest=$2 attempt
  for attempt in $(seq 1 30); do
    case "$url" in
      s3://*) aws s3 cp --only-show-errors "$url" "$dest" && return 0 ;;
      https://*) curl -fsSL --retry 3 -o "$dest" "$url" && return 0 ;;
      *) log "unsupported URL $url"; return 1 ;;
    esac
    log "download of $url failed (attempt $attempt); retrying"
    sleep 10
  done
  log "cannot download $url"
  return 1
}

# install_tarball URL SHA256 DIR: downloads a .tar.gz, checks its digest when one
# is given, and unpacks it into DIR.
install_tarball() {
  local url=$1 sha=$2 dir=$3 tmp
  tmp=$(mktemp)
  fetch "$url" "$tmp"
  if [ -n "$sha" ]; then
    echo "$sha  $tmp" | sha256sum -c --quiet - || { log "checksum mismatch for $url"; return 1; }
  fi
  mkdir -p "$dir"
  tar -xzf "$tmp" -C "$dir"
  rm -f "$tmp"
}

# secret ID: the secret's current value on stdout. Waits (up to an hour) until a
# value has been stored, so instances can start before the operator fills it.
secret() {
  local id=$1 value attempt
  for attempt in $(seq 1 360); do
    if value=$(aws secretsmanager get-secret-value --region "$AWS_REGION" --secret-id "$id" \
        --query SecretString --output text 2>/dev/null) && [ -n "$value" ] && [ "$value" != "None" ]; then
      printf '%s' "$value"
      return 0
    fi
    if [ "$attempt" = 1 ]; then log "waiting for a value in secret $id"; fi
    sleep 10
  done
  log "secret $id has no value"
  return 1
}

# json_field FIELD: the string FIELD of the JSON object on stdin.
json_field() {
  python3 -c 'import json, sys; sys.stdout.write(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

# write_private FILE OWNER: stdin to FILE, readable by OWNER only.
write_private() {
  local file=$1 owner=$2
  install -m 0600 -o "$owner" -g "$owner" /dev/null "$file"
  cat > "$file"
}

# data_volume VOLUME_ID MOUNTPOINT OWNER: waits for the attached EBS volume,
# creates its file system the first time, and mounts it (also at every boot).
data_volume() {
  local serial=${1//-/} mnt=$2 owner=$3 dev="" attempt uuid
  for attempt in $(seq 1 120); do
    dev=$(readlink -f "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_$serial" 2>/dev/null || true)
    if [ -b "$dev" ]; then break; fi
    # Xen-based instance types expose the attachment's device name instead.
    if [ -b /dev/xvdf ]; then dev=/dev/xvdf; break; fi
    sleep 5
  done
  [ -b "$dev" ] || { log "data volume $1 never appeared"; return 1; }
  blkid "$dev" >/dev/null 2>&1 || mkfs.xfs -q "$dev"
  uuid=$(blkid -s UUID -o value "$dev")
  mkdir -p "$mnt"
  grep -q "UUID=$uuid " /etc/fstab || echo "UUID=$uuid $mnt xfs defaults,noatime,nofail 0 2" >> /etc/fstab
  mountpoint -q "$mnt" || mount "$mnt"
  chown "$owner" "$mnt"
}

# system_user NAME HOME: a service account without a login shell.
system_user() {
  id "$1" >/dev/null 2>&1 || useradd --system --home-dir "$2" --shell /sbin/nologin "$1"
}
