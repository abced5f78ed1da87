#!/usr/bin/env bash
# Installs what the boot tests need on Debian 12: QEMU (x86_64 and aarch64 system emulators),
# firmware (OVMF, AAVMF, iPXE ROMs), mmdebstrap for the Debian test bases (with qemu-user-static
# and binfmt_misc for the arm64 one), and the tools the tests use to make and read seed/results
# images. Idempotent and non-interactive; safe to run twice.
#
# qemu-utils may be a backport (10.x) whose package Breaks the bookworm qemu-system-common (7.2),
# so installing qemu-system-* would silently remove qemu-img. Install qemu-utils and
# qemu-block-extra at the same (bookworm) version as the emulators instead, so qemu-img stays.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

packages=(
    qemu-system-x86 qemu-system-arm ovmf qemu-efi-aarch64 ipxe-qemu
    mmdebstrap debian-archive-keyring qemu-user-static binfmt-support arch-test
    e2fsprogs dosfstools mtools gdisk fdisk xz-utils socat
)

have_all() {
    local p
    for p in "${packages[@]}" qemu-utils; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
    done
    command -v qemu-img >/dev/null && command -v qemu-system-x86_64 >/dev/null
}

# mmdebstrap --arch=arm64 runs the packages' maintainer scripts under qemu-user: binfmt_misc must
# be mounted and qemu-aarch64 registered. The package registers it only where binfmt_misc was
# already mounted at install time, and a registration does not survive a reboot.
# Only the arm64 test base needs it: a failure is reported, and the Pi tests report it again.
enable_arm64_binfmt() {
    if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
    fi
    if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
        update-binfmts --enable qemu-aarch64 || true
    fi
    arch-test arm64 || echo "install-qemu: arm64 binaries cannot run here (binfmt_misc)" >&2
}

if have_all; then
    echo "install-qemu: everything already installed"
    enable_arm64_binfmt
    exit 0
fi

apt-get update -qq

# Newest version of a package from a repository that is not a backport.
stable_version() {
    apt-cache madison "$1" | awk -F'|' '$2 !~ /bpo/ {gsub(/ /, "", $2); print $2; exit}'
}

system_version=$(stable_version qemu-system-x86)
utils_version=$(stable_version qemu-utils)
block_version=$(stable_version qemu-block-extra)
if [[ -z "$system_version" || -z "$utils_version" || -z "$block_version" ]]; then
    echo "install-qemu: cannot find qemu-system-x86/qemu-utils/qemu-block-extra in the apt sources" >&2
    exit 1
fi

apt-get install -y -qq --no-install-recommends --allow-downgrades \
    "qemu-utils=$utils_version" "qemu-block-extra=$block_version" \
    "${packages[@]}"

# qemu-img must have survived the install.
qemu-img --version | head -n1
qemu-system-x86_64 --version | head -n1
qemu-system-aarch64 --version | head -n1
mmdebstrap --version
enable_arm64_binfmt
