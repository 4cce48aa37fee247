// See include/cvhost.h: wrappers for macros and _GNU_SOURCE APIs only.
#include "cvhost.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/memfd.h>
#include <numa.h>
#include <numaif.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

const int CVH_FALLOC_FL_KEEP_SIZE = FALLOC_FL_KEEP_SIZE;
const int CVH_FALLOC_FL_PUNCH_HOLE = FALLOC_FL_PUNCH_HOLE;
const int CVH_FALLOC_FL_ZERO_RANGE = FALLOC_FL_ZERO_RANGE;
const int CVH_O_DIRECT = O_DIRECT;

int cvh_eventfd(unsigned int initval, int nonblock) {
    return eventfd(initval, EFD_CLOEXEC | (nonblock ? EFD_NONBLOCK : 0));
}

int cvh_memfd_create(const char *name, int allow_sealing) {
    return memfd_create(name, MFD_CLOEXEC | (allow_sealing ? MFD_ALLOW_SEALING : 0));
}

int cvh_memfd_create_hugetlb(const char *name, int log2_page_size) {
    return memfd_create(name, MFD_CLOEXEC | MFD_HUGETLB | ((unsigned)log2_page_size << MFD_HUGE_SHIFT));
}

static void term_set(sigset_t *set) {
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
}

int cvh_block_term_signals(void) {
    sigset_t set;
    term_set(&set);
    // SIGPIPE: a frontend that vanishes mid-reply must produce EPIPE, not kill the daemon.
    sigaddset(&set, SIGPIPE);
    return pthread_sigmask(SIG_BLOCK, &set, NULL);
}

int cvh_signalfd_term(void) {
    sigset_t set;
    term_set(&set);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0) return -1;
    return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

int cvh_signalfd_read(int fd) {
    struct signalfd_siginfo info;
    ssize_t n = read(fd, &info, sizeof info);
    if (n < 0) return -errno;
    if (n != sizeof info) return -EIO;
    return (int)info.ssi_signo;
}

ssize_t cvh_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    // Room for the most fds a vhost-user message carries (SET_MEM_TABLE: 8).
    char control[CMSG_SPACE(sizeof(int) * 8)];
    if (nfds > 8) return -EINVAL;
    if (nfds > 0) {
        memset(control, 0, sizeof control);
        msg.msg_control = control;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t n;
    do {
        n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

ssize_t cvh_recv_with_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int *truncated) {
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    // Large enough for a hostile sender's extra fds so that we see (and close) them all: the kernel
    // caps SCM_RIGHTS at 253 fds per message (SCM_MAX_FD).
    char control[CMSG_SPACE(sizeof(int) * 253)];
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    *nfds = 0;
    *truncated = 0;
    ssize_t n;
    do {
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return -errno;
    if (msg.msg_flags & MSG_CTRUNC) *truncated = 1;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm != NULL; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *in = (int *)CMSG_DATA(cm);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, &in[i], sizeof fd);
            if (*nfds < maxfds) {
                fds[(*nfds)++] = fd;
            } else {
                close(fd);
                *truncated = 1;
            }
        }
    }
    return n;
}

int cvh_blk_getsize64(int fd, uint64_t *size) { return ioctl(fd, BLKGETSIZE64, size) < 0 ? -errno : 0; }
int cvh_blk_sszget(int fd, int *ssz) { return ioctl(fd, BLKSSZGET, ssz) < 0 ? -errno : 0; }
int cvh_blk_pbszget(int fd, unsigned int *pbsz) { return ioctl(fd, BLKPBSZGET, pbsz) < 0 ? -errno : 0; }
int cvh_blk_discard(int fd, uint64_t offset, uint64_t len) {
    uint64_t range[2] = {offset, len};
    return ioctl(fd, BLKDISCARD, range) < 0 ? -errno : 0;
}
int cvh_blk_zeroout(int fd, uint64_t offset, uint64_t len) {
    uint64_t range[2] = {offset, len};
    return ioctl(fd, BLKZEROOUT, range) < 0 ? -errno : 0;
}
int cvh_fallocate(int fd, int mode, uint64_t offset, uint64_t len) {
    int r;
    do {
        r = fallocate(fd, mode, (off_t)offset, (off_t)len);
    } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : 0;
}

int cvh_pin_current_thread(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}
int cvh_set_current_thread_cpus(const int *cpus, int count) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < count; i++) {
        if (cpus[i] < 0 || cpus[i] >= CPU_SETSIZE) return EINVAL;
        CPU_SET(cpus[i], &set);
    }
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}
// The CPU ids in `set`, ascending, at most `max` of them; their count.
static int cpu_ids(const cpu_set_t *set, int *cpus, int max) {
    int count = 0;
    for (int i = 0; i < CPU_SETSIZE && count < max; i++) {
        if (CPU_ISSET(i, set)) cpus[count++] = i;
    }
    return count;
}
int cvh_thread_cpus(pthread_t thread, int *cpus, int max) {
    cpu_set_t set;
    CPU_ZERO(&set);
    int r = pthread_getaffinity_np(thread, sizeof set, &set);
    if (r != 0) return -r;
    return cpu_ids(&set, cpus, max);
}
int cvh_current_cpu(void) { return sched_getcpu(); }
int cvh_allowed_cpus(int *cpus, int max) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) < 0) return -errno;
    return cpu_ids(&set, cpus, max);
}
int cvh_accept_cloexec(int sock) {
    int fd;
    do {
        fd = accept4(sock, NULL, NULL, SOCK_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}
int cvh_online_cpus(void) { return (int)sysconf(_SC_NPROCESSORS_ONLN); }
int cvh_set_thread_name(const char *name) {
    char short_name[16]; // the kernel's TASK_COMM_LEN, including the NUL
    strncpy(short_name, name, sizeof short_name - 1);
    short_name[sizeof short_name - 1] = 0;
    return pthread_setname_np(pthread_self(), short_name);
}

int cvh_numa_available(void) { return numa_available(); }
int cvh_numa_cpus_of_node(int node, int *cpus, int max) {
    if (numa_available() < 0) return -1;
    struct bitmask *mask = numa_allocate_cpumask();
    if (!mask) return -1;
    if (numa_node_to_cpus(node, mask) < 0) {
        numa_free_cpumask(mask);
        return -1;
    }
    int count = 0;
    for (unsigned int i = 0; i < mask->size && count < max; i++) {
        if (numa_bitmask_isbitset(mask, i)) cpus[count++] = (int)i;
    }
    numa_free_cpumask(mask);
    return count;
}

int cvh_numa_node_of_cpu(int cpu) {
    if (numa_available() < 0) return -1;
    return numa_node_of_cpu(cpu);
}

int cvh_numa_prefer_node(int node) {
    if (node < 0) return set_mempolicy(MPOL_DEFAULT, NULL, 0) == 0 ? 0 : errno;
    if (node >= (int)(8 * sizeof(unsigned long))) return EINVAL; // one word of node mask is plenty here
    unsigned long mask = 1UL << node;
    // maxnode counts bits the kernel may read from the mask; one more than the highest node given.
    return set_mempolicy(MPOL_PREFERRED, &mask, (unsigned long)node + 2) == 0 ? 0 : errno;
}

int cvh_numa_node_of_address(void *addr) {
    int node = -1;
    if (get_mempolicy(&node, NULL, 0, addr, MPOL_F_NODE | MPOL_F_ADDR) != 0) return -1;
    return node;
}

int cvh_numa_policy_mode(void) {
    int mode = -1;
    if (get_mempolicy(&mode, NULL, 0, NULL, 0) != 0) return -1;
    return mode;
}

void cvh_aio_set_eventfd(struct iocb *cb, int efd) { io_set_eventfd(cb, efd); }
void cvh_aio_set_data(struct iocb *cb, uint64_t data) { cb->data = (void *)(uintptr_t)data; }
uint64_t cvh_aio_event_data(const struct io_event *ev) { return (uint64_t)(uintptr_t)ev->data; }
int64_t cvh_aio_event_res(const struct io_event *ev) { return (int64_t)(long)ev->res; }
