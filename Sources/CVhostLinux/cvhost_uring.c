// See include/cvhost_uring.h: the io_uring engine's steps over liburing, one function each.
#include "cvhost.h"

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>

// The backing store's index in the ring's registered-file table (its only entry).
#define STORE_INDEX 0

struct io_uring *cvh_uring_create(unsigned entries, int sqpoll, unsigned idle_ms, int sq_cpu, int *error) {
    struct io_uring *ring = calloc(1, sizeof *ring);
    if (!ring) {
        *error = -ENOMEM;
        return NULL;
    }
    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    if (sqpoll) {
        params.flags |= IORING_SETUP_SQPOLL;
        params.sq_thread_idle = idle_ms;
        if (sq_cpu >= 0) {
            params.flags |= IORING_SETUP_SQ_AFF;
            params.sq_thread_cpu = (unsigned)sq_cpu;
        }
    }
    int r = io_uring_queue_init_params(entries, ring, &params);
    if (r < 0) {
        free(ring);
        *error = r;
        return NULL;
    }
    return ring;
}

int cvh_uring_register(struct io_uring *ring, int fd, int efd, int *step) {
    *step = 1;
    int r = io_uring_register_files(ring, &fd, 1);
    if (r < 0) return r;
    *step = 2;
    return io_uring_register_eventfd(ring, efd);
}

void cvh_uring_destroy(struct io_uring *ring) {
    io_uring_queue_exit(ring);
    free(ring);
}

int cvh_uring_prep_rw(struct io_uring *ring, int is_write, const struct iovec *iov, unsigned iovcnt,
                      uint64_t offset, int rw_flags, uint64_t data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    if (is_write) {
        io_uring_prep_writev(sqe, STORE_INDEX, iov, iovcnt, offset);
    } else {
        io_uring_prep_readv(sqe, STORE_INDEX, iov, iovcnt, offset);
    }
    sqe->flags |= IOSQE_FIXED_FILE;
    sqe->rw_flags = rw_flags;
    io_uring_sqe_set_data64(sqe, data);
    return 0;
}

int cvh_uring_prep_fdatasync(struct io_uring *ring, uint64_t data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_fsync(sqe, STORE_INDEX, IORING_FSYNC_DATASYNC);
    sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, data);
    return 0;
}

int cvh_uring_prep_fallocate(struct io_uring *ring, int mode, uint64_t offset, uint64_t len, uint64_t data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    // liburing 2.3 takes the length as an off_t, 64 bits here: no range is lost.
    io_uring_prep_fallocate(sqe, STORE_INDEX, mode, (off_t)offset, (off_t)len);
    sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, data);
    return 0;
}

int cvh_uring_submit(struct io_uring *ring) { return io_uring_submit(ring); }

unsigned cvh_uring_reap(struct io_uring *ring, uint64_t *data, int32_t *res, unsigned max) {
    unsigned head = *ring->cq.khead;
    unsigned ready = io_uring_smp_load_acquire(ring->cq.ktail) - head;
    unsigned n = ready < max ? ready : max;
    // The ring is made without IORING_SETUP_CQE32, so entries are the 16-byte kind: index = head & mask.
    for (unsigned i = 0; i < n; i++) {
        const struct io_uring_cqe *cqe = &ring->cq.cqes[(head + i) & ring->cq.ring_mask];
        data[i] = cqe->user_data;
        res[i] = cqe->res;
    }
    io_uring_cq_advance(ring, n);
    return n;
}

unsigned cvh_uring_unconsumed(struct io_uring *ring, uint64_t *data, unsigned max) {
    unsigned head = io_uring_smp_load_acquire(ring->sq.khead);
    unsigned pending = ring->sq.sqe_tail - head;
    unsigned n = pending < max ? pending : max;
    for (unsigned i = 0; i < n; i++) data[i] = ring->sq.sqes[(head + i) & ring->sq.ring_mask].user_data;
    return n;
}

int cvh_uring_missing_operations(struct io_uring *ring) {
    struct io_uring_probe *probe = io_uring_get_probe_ring(ring);
    // liburing returns NULL without saying why: the allocation or the register call failed.
    if (!probe) return -EOPNOTSUPP;
    int missing = 0;
    if (!io_uring_opcode_supported(probe, IORING_OP_READV)) missing |= CVH_URING_OP_READV;
    if (!io_uring_opcode_supported(probe, IORING_OP_WRITEV)) missing |= CVH_URING_OP_WRITEV;
    if (!io_uring_opcode_supported(probe, IORING_OP_FSYNC)) missing |= CVH_URING_OP_FSYNC;
    if (!io_uring_opcode_supported(probe, IORING_OP_FALLOCATE)) missing |= CVH_URING_OP_FALLOCATE;
    io_uring_free_probe(probe);
    return missing;
}

int cvh_uring_nop_roundtrip(struct io_uring *ring) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, 0);
    int r = io_uring_submit(ring);
    if (r < 0) return r;
    if (r != 1) return -EIO;
    return cvh_uring_wait_one(ring);
}

int cvh_uring_wait_one(struct io_uring *ring) {
    struct io_uring_cqe *cqe = NULL;
    int r;
    do {
        r = io_uring_wait_cqe(ring, &cqe);
    } while (r == -EINTR);
    if (r < 0) return r;
    io_uring_cqe_seen(ring, cqe);
    return 0;
}
