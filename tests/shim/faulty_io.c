/*
 * A disk that fails on demand, for the disk fault tests (tests/it/disk.rs), loaded into
 * the real cbgate binary with LD_PRELOAD. Only files under $CBGATE_FAULT_DIR are hit:
 * sockets, logs and everything else go through untouched.
 *
 *   $CBGATE_FAULT_CTL/enospc exists: write, pwrite, writev, pwritev, fallocate and
 *       posix_fallocate fail with ENOSPC, as on a full disk (nothing is written).
 *   $CBGATE_FAULT_CTL/eio exists: fsync, fdatasync and sync_file_range fail with EIO,
 *       as when the kernel could not write back the file's pages.
 *
 * Each failure it makes appends one line to $CBGATE_FAULT_CTL/injected.log, so a test
 * can tell a fault it caused from one it did not.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define REAL(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

static int control_exists(const char *name) {
    const char *ctl = getenv("CBGATE_FAULT_CTL");
    char path[PATH_MAX];
    if (ctl == NULL || snprintf(path, sizeof path, "%s/%s", ctl, name) >= (int)sizeof path)
        return 0;
    return access(path, F_OK) == 0;
}

/* Whether fd is a file under $CBGATE_FAULT_DIR. */
static int targeted(int fd) {
    const char *dir = getenv("CBGATE_FAULT_DIR");
    char link[64], path[PATH_MAX];
    ssize_t n;
    size_t len;
    if (dir == NULL)
        return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink(link, path, sizeof path - 1);
    if (n < 0)
        return 0;
    path[n] = '\0';
    len = strlen(dir);
    return strncmp(path, dir, len) == 0 && (path[len] == '/' || path[len] == '\0');
}

static void record(const char *fault, const char *call) {
    const char *ctl = getenv("CBGATE_FAULT_CTL");
    char path[PATH_MAX], line[128];
    int fd, n;
    if (ctl == NULL || snprintf(path, sizeof path, "%s/injected.log", ctl) >= (int)sizeof path)
        return;
    fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0)
        return;
    n = snprintf(line, sizeof line, "%s %s\n", fault, call);
    /* The real write: this file is not under the fault directory anyway. */
    REAL(write)(fd, line, (size_t)n);
    close(fd);
}

/* True when this call on fd must fail with `fault`'s error. */
static int inject(int fd, const char *fault, const char *call) {
    if (!control_exists(fault) || !targeted(fd))
        return 0;
    record(fault, call);
    return 1;
}

#define FAIL_WRITE(fd, call)                                                                   \
    if (inject(fd, "enospc", call)) {                                                          \
        errno = ENOSPC;                                                                        \
        return -1;                                                                             \
    }

#define FAIL_SYNC(fd, call)                                                                    \
    if (inject(fd, "eio", call)) {                                                             \
        errno = EIO;                                                                           \
        return -1;                                                                             \
    }

ssize_t write(int fd, const void *buf, size_t count) {
    FAIL_WRITE(fd, "write");
    return REAL(write)(fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    FAIL_WRITE(fd, "pwrite");
    return REAL(pwrite)(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset) {
    FAIL_WRITE(fd, "pwrite64");
    return REAL(pwrite64)(fd, buf, count, offset);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    FAIL_WRITE(fd, "writev");
    return REAL(writev)(fd, iov, iovcnt);
}

ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
    FAIL_WRITE(fd, "pwritev");
    return REAL(pwritev)(fd, iov, iovcnt, offset);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int iovcnt, off64_t offset) {
    FAIL_WRITE(fd, "pwritev64");
    return REAL(pwritev64)(fd, iov, iovcnt, offset);
}

int fallocate(int fd, int mode, off_t offset, off_t len) {
    FAIL_WRITE(fd, "fallocate");
    return REAL(fallocate)(fd, mode, offset, len);
}

int fallocate64(int fd, int mode, off64_t offset, off64_t len) {
    FAIL_WRITE(fd, "fallocate64");
    return REAL(fallocate64)(fd, mode, offset, len);
}

/* posix_fallocate returns the error instead of setting errno. */
int posix_fallocate(int fd, off_t offset, off_t len) {
    if (inject(fd, "enospc", "posix_fallocate"))
        return ENOSPC;
    return REAL(posix_fallocate)(fd, offset, len);
}

int posix_fallocate64(int fd, off64_t offset, off64_t len) {
    if (inject(fd, "enospc", "posix_fallocate64"))
        return ENOSPC;
    return REAL(posix_fallocate64)(fd, offset, len);
}

int fsync(int fd) {
    FAIL_SYNC(fd, "fsync");
    return REAL(fsync)(fd);
}

int fdatasync(int fd) {
    FAIL_SYNC(fd, "fdatasync");
    return REAL(fdatasync)(fd);
}

int sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags) {
    FAIL_SYNC(fd, "sync_file_range");
    return REAL(sync_file_range)(fd, offset, nbytes, flags);
}
