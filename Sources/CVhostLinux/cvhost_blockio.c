// See include/cvhost_blockio.h: wrappers for macros and _GNU_SOURCE APIs used by BlockIO.
#include "cvhost.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>

unsigned int cvh_dev_major(uint64_t dev) { return major((dev_t)dev); }
unsigned int cvh_dev_minor(uint64_t dev) { return minor((dev_t)dev); }

int cvh_dio_alignment(int fd, uint32_t *mem_align, uint32_t *offset_align) {
#ifdef STATX_DIOALIGN
    struct statx stx;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) < 0) return -errno;
    // The filesystem leaves the bit clear (or the fields 0) when it cannot say, or does not do
    // direct I/O on this file.
    if (!(stx.stx_mask & STATX_DIOALIGN) || stx.stx_dio_offset_align == 0) return -EOPNOTSUPP;
    *mem_align = stx.stx_dio_mem_align;
    *offset_align = stx.stx_dio_offset_align;
    return 0;
#else
    (void)fd;
    (void)mem_align;
    (void)offset_align;
    return -EOPNOTSUPP;
#endif
}

int64_t cvh_fs_magic(int fd) {
    struct statfs fs;
    if (fstatfs(fd, &fs) < 0) return -errno;
    // f_type is a signed word; the magic numbers are 32-bit patterns.
    return (int64_t)(uint32_t)fs.f_type;
}
