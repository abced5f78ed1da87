# imgbuild netboot: an initramfs-tools boot script (/scripts/imgbuild, chosen by boot=imgbuild on
# the kernel command line). It arrives in imgbuild.cpio, appended to the base's own initrd, and
# replaces only mountroot(): the root is the squashfs image named by imgbuild.root= (shipped in
# the same archive), checked against imgbuild.root-sha256= before anything mounts it, then
# mounted read-only at ${rootmnt}. init= (imgbuild's preinit) takes over from there, as on disk.

imgbuild_fail()
{
	echo "imgbuild: $*" >/dev/console 2>/dev/null
	echo "<2>imgbuild: $*" >/dev/kmsg 2>/dev/null
	panic "imgbuild: $*"
	# panic returns when the user leaves its shell: never go on with an unchecked root.
	while :; do sleep 60; done
}

imgbuild_arg()
{
	for x in $(cat /proc/cmdline); do
		case "$x" in
		"$1"=*) echo "${x#*=}"; return 0 ;;
		esac
	done
	return 0
}

# A module the base's initramfs may lack: its own copy first, then ours (from the base's
# /lib/modules for this kernel); built-in modules need neither.
imgbuild_module()
{
	modprobe -q "$1" 2>/dev/null && return 0
	for f in /imgbuild/modules/"$1".ko*; do
		[ -e "$f" ] && insmod "$f" 2>/dev/null && return 0
	done
	return 1
}

mountroot()
{
	img=$(imgbuild_arg imgbuild.root)
	want=$(imgbuild_arg imgbuild.root-sha256)
	[ -n "$img" ] || imgbuild_fail "no imgbuild.root= on the kernel command line; the boot stops here"
	case "$img" in
	/*) ;;
	*) imgbuild_fail "imgbuild.root=$img: the root image must be a path inside the initramfs (/imgbuild/root.squashfs, from imgbuild.cpio); the boot stops here" ;;
	esac
	[ -f "$img" ] || imgbuild_fail "root image $img is not in the initramfs (load imgbuild.cpio as the initrd after the base's); the boot stops here"
	case "$want" in
	????????????????????????????????????????????????????????????????) ;;
	*) imgbuild_fail "imgbuild.root-sha256= must be the 64 hex digits of the root image's SHA-256; the boot stops here" ;;
	esac
	echo "imgbuild: checking the SHA-256 of $img" >/dev/kmsg 2>/dev/null
	got=$(/imgbuild/bin/sha256sum "$img") || imgbuild_fail "cannot compute the SHA-256 of $img; the boot stops here"
	got=${got%% *}
	if [ "$got" != "$want" ]; then
		imgbuild_fail "root image SHA-256 mismatch: $img is $got, the kernel command line expects $want; refusing to mount it, the boot stops here"
	fi
	echo "imgbuild: root image verified (sha256 $got)" >/dev/kmsg 2>/dev/null
	imgbuild_module loop
	imgbuild_module squashfs
	dev=
	i=0
	while [ -z "$dev" ] && [ "$i" -lt 10 ]; do
		dev=$(losetup -f 2>/dev/null) || dev=
		[ -n "$dev" ] && [ -b "$dev" ] || { dev=; sleep 1; }
		i=$((i + 1))
	done
	[ -n "$dev" ] || imgbuild_fail "no free loop device for the root image; the boot stops here"
	losetup "$dev" "$img" || imgbuild_fail "cannot attach $img to $dev; the boot stops here"
	mount -t squashfs -o ro "$dev" "${rootmnt}" || imgbuild_fail "cannot mount $dev (squashfs) read-only on ${rootmnt}; the boot stops here"
	echo "imgbuild: root mounted read-only from $img" >/dev/kmsg 2>/dev/null
}
