#!/usr/bin/env bash
# Installs the Debian packages kubeos builds, boots and tests with. Idempotent: a second run
# installs nothing when every tool is already there.
set -euo pipefail

packages=(
  qemu-system-x86 qemu-utils ovmf grub-efi-amd64-bin grub-common
  mtools dosfstools gdisk e2fsprogs busybox-static cpio zstd
  erofs-utils squashfs-tools attr kmod curl ca-certificates mmdebstrap
)

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} Debian packages present"
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
