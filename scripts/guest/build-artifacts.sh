#!/usr/bin/env bash
# build-artifacts.sh [OUTDIR]
#
# Builds what the guest tests boot: an uncompressed kernel (OUTDIR/vmlinux) and
# a busybox initramfs (OUTDIR/initramfs.cpio.gz) whose /init is
# scripts/guest/init.sh. OUTDIR defaults to .guest in the repository root
# (gitignored).
#
# Idempotent and cached: the kernel is downloaded and extracted once per kernel
# package; the initramfs is rebuilt only when its inputs change (the stamp
# file records a hash of them). Prints "vmlinux=PATH" and "initrd=PATH" on stdout.
#
# Environment:
#   KERNEL_PKG  exact Debian kernel package to use (default: the newest
#               linux-image-6.1.0-N-amd64 apt knows about). Once chosen it is
#               remembered in OUTDIR/kernel.pkg so cached runs need no network.
set -euo pipefail

VTEST_PROG=build-artifacts
# shellcheck source=scripts/guest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT=$(repo_root)
HERE="$ROOT/scripts/guest"
OUTDIR=${1:-$ROOT/.guest}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

# Host tools this script uses, and the packages whose binaries go into the
# guest. kmod: modinfo for module dependencies; file: ELF check of vmlinux;
# xz-utils/zstd/gzip: whichever compression the bzImage payload uses.
ensure_packages apt dpkg kmod file cpio gzip xz-utils zstd coreutils \
    busybox-static fio e2fsprogs util-linux libc-bin

# Work happens in a scratch directory inside OUTDIR (same filesystem, so the
# final mv is atomic) that is removed whatever happens.
SCRATCH=$(mktemp -d "$OUTDIR/.build.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT

###############################################################################
# 1. Kernel package: exactly one package, by exact name.
###############################################################################
pick_kernel_pkg() {
    local list
    # Only the signed, plain flavour: -unsigned/-dbg/-rt/-cloud variants do not
    # match this anchored pattern. sort -V orders the ABI number numerically
    # (-9 < -10), tail -1 keeps the newest.
    list=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}')
    if [[ -z $list ]]; then
        # A fresh machine (e.g. a container) may have no package lists yet.
        apt_update_once
        list=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}')
    fi
    [[ -n $list ]] || die "apt knows no linux-image-6.1.0-N-amd64 package"
    sort -V <<<"$list" | tail -n 1
}

if [[ -n ${KERNEL_PKG:-} ]]; then
    kpkg=$KERNEL_PKG
elif [[ -s $OUTDIR/kernel.pkg && -s $OUTDIR/vmlinux ]]; then
    kpkg=$(<"$OUTDIR/kernel.pkg")
else
    kpkg=$(pick_kernel_pkg)
fi
[[ $kpkg =~ ^linux-image-[0-9][A-Za-z0-9.+-]*$ ]] || die "unexpected kernel package name: $kpkg"
# Only the .deb (~70 MB) is kept; it is downloaded and unpacked (~2 s, into
# the scratch directory) only when something must be rebuilt, instead of
# keeping the ~400 MB unpacked tree in the cache. Fully cached runs need
# neither the network nor the .deb.
DEB=$OUTDIR/$kpkg.deb
KROOT=
unpack_kernel() { # sets KROOT, vmlinuz, KREL, MODDIR; does the work once
    [[ -n $KROOT ]] && return 0
    if [[ ! -s $DEB ]]; then
        log "downloading $kpkg"
        # apt-get download writes into the current directory; the _apt
        # sandbox user may not be able to write there: a harmless warning.
        (cd "$SCRATCH" && apt-get download -q "$kpkg" >&2)
        local debs=("$SCRATCH"/*.deb)
        ((${#debs[@]} == 1)) || die "expected exactly one .deb, got ${#debs[@]}"
        # A different kernel replaces the old one (and any older cache layout).
        rm -rf "$OUTDIR"/linux-image-*.deb "$OUTDIR"/kernel-linux-image-*
        mv "${debs[0]}" "$DEB"
    fi
    KROOT=$SCRATCH/kroot
    dpkg -x "$DEB" "$KROOT"
    vmlinuz=$(find "$KROOT/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n 1)
    [[ -n $vmlinuz ]] || die "no vmlinuz in $kpkg"
    KREL=${vmlinuz##*/vmlinuz-}
    MODDIR=$KROOT/lib/modules/$KREL
    [[ -d $MODDIR ]] || die "no modules directory for $KREL"
}

###############################################################################
# 2. vmlinux from the bzImage.
#
# Why: under TCG the kernel's own decompressor takes ~5 s per boot; QEMU can
# boot the ELF vmlinux directly through its PVH entry note instead.
#
# The x86 boot protocol (Documentation/x86/boot.rst) describes where the
# compressed kernel sits, so no magic-byte scanning is needed:
#   0x1f1  setup_sects     (1 byte)  real-mode setup size in 512-byte sectors
#                                    (0 means 4); the protected-mode part
#                                    starts at (setup_sects + 1) * 512
#   0x202  header          (4 bytes) "HdrS" magic
#   0x206  version         (2 bytes) payload fields need protocol >= 2.08
#   0x248  payload_offset  (4 bytes) offset of the payload from the
#                                    protected-mode start
#   0x24c  payload_length  (4 bytes) payload length
# The payload's own magic tells the compression. For everything but gzip the
# kernel build appends the uncompressed size as 4 little-endian bytes, which
# decompressors would see as trailing garbage, so those are cut off (and used
# to check the result's size).
###############################################################################
le_uint() { # le_uint FILE OFFSET NBYTES: little-endian unsigned integer
    local v=0 i
    local -a b
    read -r -a b < <(od -An -v -t u1 -j "$2" -N "$3" "$1")
    ((${#b[@]} == $3)) || die "short read at $2 in $1"
    for ((i = $3 - 1; i >= 0; i--)); do v=$(((v << 8) | b[i])); done
    echo "$v"
}

hex_at() { od -An -v -t x1 -j "$2" -N "$3" "$1" | tr -d ' \n'; }

extract_vmlinux() { # extract_vmlinux BZIMAGE OUT
    local bz=$1 out=$2 setup_sects version pm_start poff plen start magic comp
    [[ $(hex_at "$bz" $((0x202)) 4) == 48647253 ]] || die "$bz: no HdrS boot header"
    version=$(le_uint "$bz" $((0x206)) 2)
    ((version >= 0x208)) || die "$bz: boot protocol $version has no payload fields"
    setup_sects=$(le_uint "$bz" $((0x1f1)) 1)
    ((setup_sects == 0)) && setup_sects=4
    pm_start=$(((setup_sects + 1) * 512))
    poff=$(le_uint "$bz" $((0x248)) 4)
    plen=$(le_uint "$bz" $((0x24c)) 4)
    start=$((pm_start + poff))
    magic=$(hex_at "$bz" "$start" 6)
    case $magic in
        fd377a585a00) comp=xz ;;   # xz stream header
        28b52ffd*) comp=zstd ;;    # zstd frame magic 0xFD2FB528 (LE)
        1f8b*) comp=gzip ;;        # gzip ID1 ID2
        *) die "$bz: unknown payload magic $magic" ;;
    esac
    log "bzImage payload: $comp, $plen bytes at offset $start"
    local body=$plen expect=
    if [[ $comp != gzip ]]; then
        body=$((plen - 4))
        expect=$(le_uint "$bz" $((start + plen - 4)) 4)
    fi
    dd if="$bz" bs=64K iflag=skip_bytes,count_bytes skip="$start" count="$body" status=none |
        case $comp in
            xz) xz -dc ;;
            zstd) zstd -dcq ;;
            gzip) gzip -dc ;;
        esac >"$out.tmp"
    # ELF magic: 0x7f 'E' 'L' 'F'.
    [[ $(hex_at "$out.tmp" 0 4) == 7f454c46 ]] || die "decompressed kernel is not ELF"
    if [[ -n $expect ]] && (($(stat -c %s "$out.tmp") != expect)); then
        die "decompressed kernel size differs from the size recorded in the bzImage"
    fi
    file -b "$out.tmp" | grep -q '^ELF 64-bit' || die "file(1) does not see a 64-bit ELF"
    mv "$out.tmp" "$out"
    echo "$comp" >"$OUTDIR/kernel.compression"
}

if [[ ! -s $OUTDIR/vmlinux || ! -s $OUTDIR/kernel.release || ! -s $OUTDIR/kernel.pkg ||
    $(<"$OUTDIR/kernel.pkg") != "$kpkg" ]]; then
    unpack_kernel
    extract_vmlinux "$vmlinuz" "$SCRATCH/vmlinux"
    mv "$SCRATCH/vmlinux" "$OUTDIR/vmlinux"
    echo "$KREL" >"$OUTDIR/kernel.release"
    echo "$kpkg" >"$OUTDIR/kernel.pkg"
    # The kernel changed, so the initramfs (its modules) is stale.
    rm -f "$OUTDIR/initramfs.stamp"
else
    log "cached: vmlinux from $kpkg"
fi
KREL=$(<"$OUTDIR/kernel.release")

###############################################################################
# 3. initramfs.
###############################################################################
# The modules /init loads; their dependencies are added in load order below.
# virtio_pci: the PCI transport; virtio_blk: the disk; ext4 for the filesystem
# test; crc32c_generic because ext4/jbd2 need the "crc32c" crypto algorithm but
# only name it as a soft dependency (modinfo depends= does not list it).
WANT_MODULES=(virtio_pci virtio_blk crc32c_generic ext4)

# Host binaries copied in with their libraries. Busybox provides the rest
# (including sha256sum); its blkdiscard lacks -z and its mke2fs cannot make
# ext4, hence util-linux's and e2fsprogs' versions.
HOST_BINS=(fio mke2fs e2fsck blkdiscard)

BUSYBOX=/bin/busybox
# Inputs whose change must rebuild the initramfs.
stamp=$(
    {
        echo "$KREL"
        printf '%s\n' "${WANT_MODULES[@]}" "${HOST_BINS[@]}"
        # Contents only (not names): the same script invoked by another path
        # must not look like a change.
        for f in "$HERE/init.sh" "$HERE/build-artifacts.sh" "$HERE/lib.sh" "$BUSYBOX"; do
            sha256sum <"$f"
        done
        for b in "${HOST_BINS[@]}"; do sha256sum <"$(command -v "$b")"; done
    } | sha256sum | cut -d' ' -f1
)

if [[ -s $OUTDIR/initramfs.cpio.gz && -s $OUTDIR/initramfs.stamp &&
    $(<"$OUTDIR/initramfs.stamp") == "$stamp" ]]; then
    log "cached: initramfs"
    echo "vmlinux=$OUTDIR/vmlinux"
    echo "initrd=$OUTDIR/initramfs.cpio.gz"
    exit 0
fi

unpack_kernel
IRD=$SCRATCH/initramfs
mkdir -p "$IRD"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,mnt,run,lib/modules}

# --- busybox and its applet links -------------------------------------------
cp "$BUSYBOX" "$IRD/bin/busybox"
# Applets that the host binaries replace are not linked, so there is no doubt
# which one the guest runs.
for a in $("$BUSYBOX" --list); do
    case $a in busybox | blkdiscard | mke2fs | mkfs.ext2 | mkfs.ext4 | e2fsck | fsck) continue ;; esac
    ln -sf busybox "$IRD/bin/$a"
done

# --- host binaries and their shared libraries -------------------------------
copy_with_libs() { # copy_with_libs BINARY DEST_IN_INITRAMFS
    local bin=$1 dest=$2 lib
    install -D -m 0755 "$bin" "$IRD$dest"
    # ldd prints "name => /path (addr)" for libraries and "/path (addr)" for
    # the dynamic loader; both kinds of absolute paths are copied, following
    # symlinks (cp -L) so the guest gets real files under the sonames.
    while read -r lib; do
        [[ -e $IRD$lib ]] && continue
        install -D -m 0755 "$(readlink -f "$lib")" "$IRD$lib"
    done < <(ldd "$bin" | grep -o '/[^ ]*' | sort -u)
}
for b in "${HOST_BINS[@]}"; do
    p=$(command -v "$b") || die "$b not found on the host"
    copy_with_libs "$p" "/usr/sbin/$b"
done
ln -sf mke2fs "$IRD/usr/sbin/mkfs.ext4"
# mke2fs has a built-in default profile, but the host's file is what the
# host's mkfs.ext4 would use, so the guest gets the same ext4 feature set.
[[ -f /etc/mke2fs.conf ]] && cp /etc/mke2fs.conf "$IRD/etc/"

# --- kernel modules, dependencies first -------------------------------------
declare -A KO=()    # module name (with _) -> path of its .ko
while IFS= read -r -d '' f; do
    n=${f##*/}
    n=${n%%.ko*}
    KO[${n//-/_}]=$f
done < <(find "$MODDIR/kernel" -name '*.ko*' -print0)

declare -A SEEN=()
ORDER=()
add_module() { # depth-first: dependencies are appended before the module
    local m=${1//-/_} d deps
    [[ -n ${SEEN[$m]:-} ]] && return 0
    SEEN[$m]=1
    [[ -n ${KO[$m]:-} ]] || die "module $m not found in $kpkg (built in?)"
    deps=$(modinfo -F depends "${KO[$m]}")
    for d in ${deps//,/ }; do add_module "$d"; done
    ORDER+=("$m")
}
for m in "${WANT_MODULES[@]}"; do add_module "$m"; done
for m in "${ORDER[@]}"; do
    f=${KO[$m]}
    case $f in
        # busybox insmod wants plain ELF objects.
        *.ko.xz) xz -dc "$f" >"$IRD/lib/modules/$m.ko" ;;
        *.ko.zst) zstd -dcq "$f" >"$IRD/lib/modules/$m.ko" ;;
        *.ko) cp "$f" "$IRD/lib/modules/$m.ko" ;;
        *) die "unknown module file $f" ;;
    esac
done
printf '%s\n' "${ORDER[@]}" >"$IRD/etc/vtest-modules"
log "modules (load order): ${ORDER[*]}"

# --- /init ------------------------------------------------------------------
install -m 0755 "$HERE/init.sh" "$IRD/init"

# --- archive ----------------------------------------------------------------
# newc is the cpio format the kernel unpacks; --owner root so file ownership
# does not depend on who builds; sorted names make the archive reproducible.
(cd "$IRD" && find . -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --owner=0:0 --quiet) |
    gzip -6 -n >"$SCRATCH/initramfs.cpio.gz"
mv "$SCRATCH/initramfs.cpio.gz" "$OUTDIR/initramfs.cpio.gz"
echo "$stamp" >"$OUTDIR/initramfs.stamp"
log "initramfs: $(stat -c %s "$OUTDIR/initramfs.cpio.gz") bytes"

echo "vmlinux=$OUTDIR/vmlinux"
echo "initrd=$OUTDIR/initramfs.cpio.gz"
