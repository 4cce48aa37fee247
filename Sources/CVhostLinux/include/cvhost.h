// C shim for VhostUserBlk. Only what Swift cannot import directly: macros (CMSG_*, CPU_SET, ioctl
// request numbers), _GNU_SOURCE-only declarations, and loads/stores with an explicit memory order on
// memory shared with the guest. No logic lives here.
#ifndef CVHOST_H
#define CVHOST_H

#include <stdint.h>
#include <stddef.h>
#include <stdbool.h>
#include <sys/types.h>
#include <pthread.h>
#include <sys/uio.h>
#include <libaio.h>
#include "cvhost_blockio.h"
#include "cvhost_uring.h"
#include "cvhost_priv.h"

#ifdef __cplusplus
extern "C" {
#endif

// ---- fds -----------------------------------------------------------------------------------------
int cvh_eventfd(unsigned int initval, int nonblock);
int cvh_memfd_create(const char *name, int allow_sealing);
// memfd on hugetlbfs pages of 2^log2_page_size bytes (21 = 2 MiB, 30 = 1 GiB), as QEMU's
// memory-backend-memfd,hugetlb=on,hugetlbsize=... makes.
int cvh_memfd_create_hugetlb(const char *name, int log2_page_size);
int cvh_signalfd_term(void); // blocks SIGTERM/SIGINT/SIGHUP in the calling thread, returns a signalfd
int cvh_signalfd_read(int fd); // returns the signal number, or -errno
int cvh_block_term_signals(void); // blocks them in the calling thread (inherited by threads it creates)

// sendmsg with up to `nfds` SCM_RIGHTS fds. Returns bytes sent or -errno.
ssize_t cvh_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds);
// recvmsg collecting at most `maxfds` fds into `fds`, their count in `*nfds`. Extra fds beyond
// `maxfds` are closed here (so a hostile peer cannot leak fds into us) and `*truncated` is set.
// Returns bytes received (0 = EOF) or -errno.
ssize_t cvh_recv_with_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int *truncated);

// ---- block device ioctls -------------------------------------------------------------------------
int cvh_blk_getsize64(int fd, uint64_t *size);
int cvh_blk_sszget(int fd, int *ssz);
int cvh_blk_pbszget(int fd, unsigned int *pbsz);
int cvh_blk_discard(int fd, uint64_t offset, uint64_t len);
int cvh_blk_zeroout(int fd, uint64_t offset, uint64_t len);
int cvh_fallocate(int fd, int mode, uint64_t offset, uint64_t len);
extern const int CVH_FALLOC_FL_KEEP_SIZE;
extern const int CVH_FALLOC_FL_PUNCH_HOLE;
extern const int CVH_FALLOC_FL_ZERO_RANGE;
extern const int CVH_O_DIRECT;

// ---- threads and CPUs ----------------------------------------------------------------------------
int cvh_pin_current_thread(int cpu);   // 0 or an errno value
int cvh_set_current_thread_cpus(const int *cpus, int count); // affinity to these CPUs; 0 or an errno value
int cvh_thread_cpus(pthread_t thread, int *cpus, int max);   // a thread's affinity as CPU ids; count or -errno
int cvh_current_cpu(void);
int cvh_allowed_cpus(int *cpus, int max); // the process's affinity mask as CPU ids; count or -errno
int cvh_accept_cloexec(int sock);          // accept4(SOCK_CLOEXEC), retried on EINTR; fd or -errno
int cvh_online_cpus(void);
int cvh_set_thread_name(const char *name);
// libnuma: -1 when NUMA is unavailable. `cpus` gets up to `max` CPU ids of `node`; returns the count.
int cvh_numa_available(void);
int cvh_numa_cpus_of_node(int node, int *cpus, int max);
int cvh_numa_node_of_cpu(int cpu);          // -1 when unknown
// This thread's page allocations prefer `node` (MPOL_PREFERRED); node < 0 restores MPOL_DEFAULT.
// 0 or an errno value.
int cvh_numa_prefer_node(int node);
int cvh_numa_node_of_address(void *addr);   // node of the page at addr (faulting it in), or -1
int cvh_numa_policy_mode(void);             // this thread's MPOL_* mode, or -1

// ---- libaio helpers (io_set_eventfd is static inline but touches a union member Swift cannot name)
void cvh_aio_set_eventfd(struct iocb *cb, int efd);
void cvh_aio_set_data(struct iocb *cb, uint64_t data);
uint64_t cvh_aio_event_data(const struct io_event *ev);
int64_t cvh_aio_event_res(const struct io_event *ev);

// ---- memory ordering on shared rings (virtio 1.2 §2.7.13: the driver and device see each other's
// writes only in the order the barriers enforce) ---------------------------------------------------
static inline uint16_t cvh_load_acquire_u16(const void *p) {
    return __atomic_load_n((const uint16_t *)p, __ATOMIC_ACQUIRE);
}
static inline void cvh_store_release_u16(void *p, uint16_t v) {
    __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELEASE);
}
static inline uint16_t cvh_load_relaxed_u16(const void *p) {
    return __atomic_load_n((const uint16_t *)p, __ATOMIC_RELAXED);
}
static inline void cvh_store_relaxed_u16(void *p, uint16_t v) {
    __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELAXED);
}
static inline void cvh_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void cvh_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
static inline void cvh_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
// Cross-thread flags between the control thread and the workers (not guest memory).
static inline uint32_t cvh_load_acquire_u32(const void *p) {
    return __atomic_load_n((const uint32_t *)p, __ATOMIC_ACQUIRE);
}
static inline void cvh_store_release_u32(void *p, uint32_t v) {
    __atomic_store_n((uint32_t *)p, v, __ATOMIC_RELEASE);
}
static inline uint64_t cvh_load_acquire_u64(const void *p) {
    return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE);
}
static inline void cvh_store_release_u64(void *p, uint64_t v) {
    __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELEASE);
}
static inline uint64_t cvh_fetch_add_u64(void *p, uint64_t v) {
    return __atomic_fetch_add((uint64_t *)p, v, __ATOMIC_ACQ_REL);
}

#ifdef __cplusplus
}
#endif
#endif
