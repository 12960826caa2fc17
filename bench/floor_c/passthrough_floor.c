/* The floor the benchmarks measure Tandem against: a minimal multi-threaded C passthrough
 * (libfuse's high-level API) with no replication, no journal and, like Tandem, no writeback
 * cache. It mirrors SOURCE at MOUNTPOINT:
 *
 *     passthrough_floor SOURCE MOUNTPOINT [-o options]
 *
 * Built by bench/floor.py with the system compiler; not part of the product. */
#define FUSE_USE_VERSION 312
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <unistd.h>

static int source_fd = -1;

/* "/a/b" -> "a/b" relative to the source directory ("." for the root) */
static const char *rel(const char *path) {
    while (*path == '/')
        path++;
    return *path ? path : ".";
}

static int fail(void) { return -errno; }

static void *floor_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
    (void)conn;
    cfg->use_ino = 1;
    cfg->kernel_cache = 1;
    cfg->entry_timeout = cfg->attr_timeout = 1.0;
    cfg->negative_timeout = 1.0;
    return NULL;
}

static int floor_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    int rc = fi ? fstat((int)fi->fh, st) : fstatat(source_fd, rel(path), st, AT_SYMLINK_NOFOLLOW);
    return rc < 0 ? fail() : 0;
}

static int floor_readlink(const char *path, char *buf, size_t size) {
    ssize_t n = readlinkat(source_fd, rel(path), buf, size - 1);
    if (n < 0)
        return fail();
    buf[n] = 0;
    return 0;
}

static int floor_mknod(const char *path, mode_t mode, dev_t rdev) {
    return mknodat(source_fd, rel(path), mode, rdev) < 0 ? fail() : 0;
}

static int floor_mkdir(const char *path, mode_t mode) {
    return mkdirat(source_fd, rel(path), mode) < 0 ? fail() : 0;
}

static int floor_unlink(const char *path) {
    return unlinkat(source_fd, rel(path), 0) < 0 ? fail() : 0;
}

static int floor_rmdir(const char *path) {
    return unlinkat(source_fd, rel(path), AT_REMOVEDIR) < 0 ? fail() : 0;
}

static int floor_symlink(const char *target, const char *path) {
    return symlinkat(target, source_fd, rel(path)) < 0 ? fail() : 0;
}

static int floor_rename(const char *from, const char *to, unsigned int flags) {
    return renameat2(source_fd, rel(from), source_fd, rel(to), flags) < 0 ? fail() : 0;
}

static int floor_link(const char *from, const char *to) {
    return linkat(source_fd, rel(from), source_fd, rel(to), 0) < 0 ? fail() : 0;
}

static int floor_chmod(const char *path, mode_t mode, struct fuse_file_info *fi) {
    int rc = fi ? fchmod((int)fi->fh, mode) : fchmodat(source_fd, rel(path), mode, 0);
    return rc < 0 ? fail() : 0;
}

static int floor_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi) {
    int rc = fi ? fchown((int)fi->fh, uid, gid)
                : fchownat(source_fd, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW);
    return rc < 0 ? fail() : 0;
}

static int floor_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
    if (fi)
        return ftruncate((int)fi->fh, size) < 0 ? fail() : 0;
    int fd = openat(source_fd, rel(path), O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return fail();
    int rc = ftruncate(fd, size) < 0 ? fail() : 0;
    close(fd);
    return rc;
}

static int floor_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi) {
    int rc = fi ? futimens((int)fi->fh, tv) : utimensat(source_fd, rel(path), tv, AT_SYMLINK_NOFOLLOW);
    return rc < 0 ? fail() : 0;
}

static int floor_open(const char *path, struct fuse_file_info *fi) {
    int fd = openat(source_fd, rel(path), (fi->flags & ~O_NOFOLLOW) | O_CLOEXEC);
    if (fd < 0)
        return fail();
    fi->fh = (uint64_t)fd;
    return 0;
}

static int floor_create(const char *path, mode_t mode, struct fuse_file_info *fi) {
    int fd = openat(source_fd, rel(path), fi->flags | O_CREAT | O_CLOEXEC, mode);
    if (fd < 0)
        return fail();
    fi->fh = (uint64_t)fd;
    return 0;
}

static int floor_read(const char *path, char *buf, size_t size, off_t off,
                      struct fuse_file_info *fi) {
    (void)path;
    ssize_t n = pread((int)fi->fh, buf, size, off);
    return n < 0 ? fail() : (int)n;
}

static int floor_write(const char *path, const char *buf, size_t size, off_t off,
                       struct fuse_file_info *fi) {
    (void)path;
    ssize_t n = pwrite((int)fi->fh, buf, size, off);
    return n < 0 ? fail() : (int)n;
}

static int floor_statfs(const char *path, struct statvfs *st) {
    (void)path;
    return fstatvfs(source_fd, st) < 0 ? fail() : 0;
}

static int floor_release(const char *path, struct fuse_file_info *fi) {
    (void)path;
    close((int)fi->fh);
    return 0;
}

static int floor_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
    (void)path;
    int rc = datasync ? fdatasync((int)fi->fh) : fsync((int)fi->fh);
    return rc < 0 ? fail() : 0;
}

static int floor_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                         struct fuse_file_info *fi, enum fuse_readdir_flags flags) {
    (void)off;
    (void)fi;
    (void)flags;
    int fd = openat(source_fd, rel(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return fail();
    DIR *dir = fdopendir(fd);
    if (dir == NULL) {
        close(fd);
        return fail();
    }
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        struct stat st = {.st_ino = entry->d_ino, .st_mode = (mode_t)entry->d_type << 12};
        if (fill(buf, entry->d_name, &st, 0, 0))
            break;
    }
    closedir(dir);
    return 0;
}

static const struct fuse_operations operations = {
    .init = floor_init,
    .getattr = floor_getattr,
    .readlink = floor_readlink,
    .mknod = floor_mknod,
    .mkdir = floor_mkdir,
    .unlink = floor_unlink,
    .rmdir = floor_rmdir,
    .symlink = floor_symlink,
    .rename = floor_rename,
    .link = floor_link,
    .chmod = floor_chmod,
    .chown = floor_chown,
    .truncate = floor_truncate,
    .utimens = floor_utimens,
    .open = floor_open,
    .create = floor_create,
    .read = floor_read,
    .write = floor_write,
    .statfs = floor_statfs,
    .release = floor_release,
    .fsync = floor_fsync,
    .readdir = floor_readdir,
};

int main(int argc, char *argv[]) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s SOURCE MOUNTPOINT [fuse options]\n", argv[0]);
        return 2;
    }
    source_fd = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (source_fd < 0) {
        perror(argv[1]);
        return 1;
    }
    umask(0);
    /* argv without SOURCE: fuse_main sees "prog MOUNTPOINT options..." */
    argv[1] = argv[0];
    return fuse_main(argc - 1, argv + 1, &operations, NULL);
}
