// BlockIO's shim declarations (device numbers, direct-I/O alignment, libaio request preparation).
// Implementations of the out-of-line ones in cvhost_blockio.c. No logic: each function is one call
// Swift cannot make itself.
#ifndef CVHOST_BLOCKIO_H
#define CVHOST_BLOCKIO_H
#include <stdint.h>
#include <sys/uio.h>
#include <libaio.h>

#ifdef __cplusplus
extern "C" {
#endif

// major()/minor() are macros in <sys/sysmacros.h>, which Swift cannot import.
unsigned int cvh_dev_major(uint64_t dev);
unsigned int cvh_dev_minor(uint64_t dev);

// statx(STATX_DIOALIGN): the memory and file-offset alignment O_DIRECT needs on `fd`. Returns 0 and
// fills both when the kernel and filesystem report them, -EOPNOTSUPP when they do not, or -errno.
int cvh_dio_alignment(int fd, uint32_t *mem_align, uint32_t *offset_align);

// fstatfs's f_type (the filesystem's magic number), or -errno. <sys/vfs.h> is not in Swift's Glibc.
int64_t cvh_fs_magic(int fd);

// One libaio vectored read or write, with the completion eventfd attached and `data` handed back in
// the io_event. static inline so that the Swift enqueue path compiles it in place (no call per
// request); the union member behind io_set_eventfd is not nameable from Swift.
static inline void cvh_bio_prep_rw(struct iocb *cb, int is_write, int fd, const struct iovec *iov,
                                   int iovcnt, uint64_t offset, int efd, uint64_t data) {
    if (is_write) {
        io_prep_pwritev(cb, fd, iov, iovcnt, (long long)offset);
    } else {
        io_prep_preadv(cb, fd, iov, iovcnt, (long long)offset);
    }
    if (efd >= 0) io_set_eventfd(cb, efd);
    cb->data = (void *)(uintptr_t)data;
}

// Per-request RWF_* flags (kernel ≥ 4.13 honours them for libaio). Set after cvh_bio_prep_rw, which
// clears the iocb. RWF_DSYNC makes one write durable on completion without an fdatasync of the file.
// RWF_DSYNC's value from the kernel's uapi <linux/fs.h> (a stable ABI since Linux 4.7); glibc only
// defines it under _GNU_SOURCE, which the Swift importer does not set.
#define CVH_RWF_DSYNC 0x00000002
static inline void cvh_bio_set_dsync(struct iocb *cb) { cb->aio_rw_flags = CVH_RWF_DSYNC; }

// Inline twins of cvh_aio_event_data/res (cvhost.h), for the per-completion reap loop.
static inline uint64_t cvh_bio_event_data(const struct io_event *ev) {
    return (uint64_t)(uintptr_t)ev->data;
}
// `res` is an unsigned long carrying either a byte count or a negative errno.
static inline int64_t cvh_bio_event_res(const struct io_event *ev) { return (int64_t)(long)ev->res; }

#ifdef __cplusplus
}
#endif
#endif
