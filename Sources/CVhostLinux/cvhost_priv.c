// See include/cvhost_priv.h: wrappers for _GNU_SOURCE APIs used by the privilege code.
#include "cvhost.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

int cvh_open_path_nofollow(const char *path) {
    int fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int cvh_open_directory_path(const char *path) {
    int fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int cvh_fchown_fd(int fd, uid_t uid, gid_t gid) {
    return fchownat(fd, "", uid, gid, AT_EMPTY_PATH) < 0 ? -errno : 0;
}

int cvh_getresuid(uid_t *r, uid_t *e, uid_t *s) { return getresuid(r, e, s) < 0 ? -errno : 0; }
int cvh_getresgid(gid_t *r, gid_t *e, gid_t *s) { return getresgid(r, e, s) < 0 ? -errno : 0; }
