// The io_uring engine's shim over liburing: one C function per step the engine takes. liburing's
// request helpers (io_uring_get_sqe, io_uring_prep_*) and its completion iteration
// (io_uring_for_each_cqe, a macro) are static inline code in its header, touching anonymous unions
// and C11 atomics, which Swift cannot name or use directly.
//
// liburing's header stays out of this one, inside cvhost_uring.c: it carries its own copy of the
// kernel's <linux/io_uring.h>, and a Swift program that also imports a module including the
// system's copy (swift-system does) fails to build when both definitions of the same structs meet.
// So the ring is an opaque pointer here, and the per-request steps are plain calls: one direct call
// per request, next to an io_uring_enter per batch.
//
// Every request names the backing store as registered file 0 (IOSQE_FIXED_FILE): the kernel then
// skips the fd-table lookup and reference count per request.
#ifndef CVHOST_URING_H
#define CVHOST_URING_H
#include <stdint.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

struct io_uring;

// A ring with room for `entries` requests in flight (io_uring_queue_init_params; the kernel rounds
// the submission ring up to a power of two and makes the completion ring twice that). With
// `sqpoll`, a kernel thread polls the submission ring and sleeps after `idle_ms` without work; it is
// pinned to `sq_cpu` unless that is -1. Returns the ring, or NULL with -errno in `*error`.
struct io_uring *cvh_uring_create(unsigned entries, int sqpoll, unsigned idle_ms, int sq_cpu, int *error);

// Registers `fd` as fixed file 0 and `efd` as the eventfd signalled for every completion. 0, or
// -errno with `*step` set to 1 (the file) or 2 (the eventfd).
int cvh_uring_register(struct io_uring *ring, int fd, int efd, int *step);

// Closes the ring and frees it. Requests still in flight must have been waited for.
void cvh_uring_destroy(struct io_uring *ring);

// A vectored read or write of the store with per-request RWF_* flags (`rw_flags`: 0, or
// CVH_RWF_DSYNC for a write durable on completion); `data` comes back in its completion. 0, or
// -EBUSY when the submission ring is full.
int cvh_uring_prep_rw(struct io_uring *ring, int is_write, const struct iovec *iov, unsigned iovcnt,
                      uint64_t offset, int rw_flags, uint64_t data);

// fdatasync of the store (IORING_FSYNC_DATASYNC), asynchronously. 0 or -EBUSY.
int cvh_uring_prep_fdatasync(struct io_uring *ring, uint64_t data);

// fallocate(mode, offset, len) on the store, asynchronously (the kernel runs it in a worker thread
// of its own). 0 or -EBUSY.
int cvh_uring_prep_fallocate(struct io_uring *ring, int mode, uint64_t offset, uint64_t len, uint64_t data);

// io_uring_submit: hands the entries prepared since the last call to the kernel (under SQ polling,
// wakes its thread only if it sleeps). The number taken, or -errno.
int cvh_uring_submit(struct io_uring *ring);

// Copies up to `max` completions (user data and result) out of the completion ring and hands their
// entries back to the kernel; returns how many. Never enters the kernel.
unsigned cvh_uring_reap(struct io_uring *ring, uint64_t *data, int32_t *res, unsigned max);

// The user data of entries written to the submission ring that the kernel has not consumed, oldest
// first, up to `max`; returns how many. Only for failing them after the ring stopped working.
unsigned cvh_uring_unconsumed(struct io_uring *ring, uint64_t *data, unsigned max);

// Operations the engine submits; cvh_uring_missing_operations reports those the kernel lacks
// (IORING_REGISTER_PROBE, Linux 5.6) as these bits. -errno when the probe itself failed.
#define CVH_URING_OP_READV 1
#define CVH_URING_OP_WRITEV 2
#define CVH_URING_OP_FSYNC 4
#define CVH_URING_OP_FALLOCATE 8
int cvh_uring_missing_operations(struct io_uring *ring);

// Submits one no-op and waits for its completion: proves the ring really works (a seccomp filter
// may allow io_uring_setup and refuse io_uring_enter). 0 or -errno.
int cvh_uring_nop_roundtrip(struct io_uring *ring);

// Waits for one completion and discards it (teardown only). 0 or -errno.
int cvh_uring_wait_one(struct io_uring *ring);

#ifdef __cplusplus
}
#endif
#endif
