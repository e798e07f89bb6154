#!/usr/bin/env bash
# Installs the Debian packages kubeos builds, boots and tests with. Idempotent: a second run
# installs nothing when every tool is already there.
set -euo pipefail

packages=(
  qemu-system-x86 qemu-utils ovmf grub-efi-amd64-bin grub-common
  mtools dosfstools gdisk e2fsprogs busybox-static cpio zstd
  erofs-utils squashfs-tools attr kmod curl ca-certificates mmdebstrap
  openssl skopeo umoci
  # npm run bench only, not the tests: casync (the delta row) and RAUC as peers (with squashfs-tools, openssl, and a private
  # D-Bus for `rauc service`); busybox-static above also serves the bench's files (busybox httpd)
  rauc dbus-daemon casync
)

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done

install_kubernetes() {
  # the real control plane the operator tests run against, built from the Go module proxy
  bash "$(dirname "$0")/install-kubernetes.sh" >/dev/null
}

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} Debian packages present"
  install_kubernetes
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: need root to install: ${missing[*]}" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
install_kubernetes
