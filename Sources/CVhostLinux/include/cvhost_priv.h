// Privilege and socket-file shims (VhostSystem/Privileges.swift, UnixSocket.swift). Only what Swift
// cannot import: O_PATH and AT_EMPTY_PATH are _GNU_SOURCE-only, and the getres*id calls are declared
// under _GNU_SOURCE too. No logic: each function is one system call.
#ifndef CVHOST_PRIV_H
#define CVHOST_PRIV_H
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

// open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC): a handle on the directory entry itself, never on what
// a symlink points to. Returns the fd or -errno.
int cvh_open_path_nofollow(const char *path);
// open(path, O_PATH | O_DIRECTORY | O_CLOEXEC): a handle to use as the dirfd of *at calls, so that a
// later unlinkat needs permission on that directory only, not search permission on its ancestors.
int cvh_open_directory_path(const char *path);
// fchownat(fd, "", uid, gid, AT_EMPTY_PATH): changes the owner of exactly the inode `fd` refers to
// (an O_PATH fd included). (uid_t)-1 / (gid_t)-1 leave that id unchanged. Returns 0 or -errno.
int cvh_fchown_fd(int fd, uid_t uid, gid_t gid);
// getresuid/getresgid: real, effective and saved ids. Return 0 or -errno.
int cvh_getresuid(uid_t *r, uid_t *e, uid_t *s);
int cvh_getresgid(gid_t *r, gid_t *e, gid_t *s);

#ifdef __cplusplus
}
#endif
#endif
