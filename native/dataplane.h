/* The native data plane: a libfuse low-level session served by C threads.
 *
 * Hot requests are answered in the thread that read them, without Python. Every other request
 * becomes a `tdp_request` on a queue that the Python control plane drains (woken through an
 * eventfd) and answers with the tdp_reply_* calls, from its own thread: libfuse lets a request
 * be answered from any thread, once. */
#ifndef TANDEM_DATAPLANE_H
#define TANDEM_DATAPLANE_H

#include <stddef.h>
#include <stdint.h>

/* the requests handed to Python */
enum tdp_opcode {
    TDP_LOOKUP = 1,
    TDP_FORGET,   /* forgets: `forget_count` (ino, nlookup) pairs */
    TDP_GETATTR,
    TDP_SETATTR,
    TDP_READLINK,
    TDP_MKNOD,
    TDP_MKDIR,
    TDP_UNLINK,
    TDP_RMDIR,
    TDP_SYMLINK,  /* name: the new name, name2: the target */
    TDP_RENAME,   /* ino, name -> ino2, name2; flags */
    TDP_LINK,     /* ino: the object, ino2: the new parent, name: the new name */
    TDP_OPEN,
    TDP_READ,     /* only while the native read is switched off */
    TDP_WRITE,
    TDP_RELEASE,
    TDP_FSYNC,
    TDP_OPENDIR,
    TDP_READDIRPLUS,
    TDP_RELEASEDIR,
    TDP_FSYNCDIR,
    TDP_STATFS,
    TDP_SETXATTR,
    TDP_GETXATTR,
    TDP_LISTXATTR,
    TDP_REMOVEXATTR,
    TDP_ACCESS,
    TDP_CREATE,
    TDP_FALLOCATE,       /* fh, flags: the mode, offset, size: the length */
    TDP_COPY_FILE_RANGE, /* fh, offset -> fh2, offset2; size; flags */
    TDP_OPCODES
};

/* what the kernel asked for in a SETATTR, as libfuse's FUSE_SET_ATTR_* bits */
enum tdp_setattr_bits {
    TDP_SET_MODE = 1 << 0,
    TDP_SET_UID = 1 << 1,
    TDP_SET_GID = 1 << 2,
    TDP_SET_SIZE = 1 << 3,
    TDP_SET_ATIME = 1 << 4,
    TDP_SET_MTIME = 1 << 5,
    TDP_SET_ATIME_NOW = 1 << 7,
    TDP_SET_MTIME_NOW = 1 << 8,
    TDP_SET_CTIME = 1 << 10,
};

struct tdp_request {
    void *req; /* fuse_req_t: answered exactly once with a tdp_reply_* call */
    int opcode;
    uint64_t ino;
    uint64_t ino2;
    uint64_t fh;
    int has_fh;
    uint64_t fh2;
    int64_t offset2;
    int64_t offset;
    uint64_t size;
    uint32_t mode;
    uint32_t flags; /* open, rename and xattr flags; setattr bits; datasync; access mask */
    uint64_t rdev;
    uint32_t uid, gid, pid, umask; /* the caller */
    /* setattr's values */
    uint32_t attr_mode, attr_uid, attr_gid;
    int64_t attr_size, atime_ns, mtime_ns;
    const char *name;
    size_t name_len;
    const char *name2;
    size_t name2_len;
    const char *data; /* write data, xattr value */
    size_t data_len;
    const uint64_t *forgets;
    size_t forget_count;
};

struct tdp_attr {
    uint64_t ino, generation;
    double entry_timeout, attr_timeout;
    uint32_t mode, nlink, uid, gid;
    uint64_t rdev;
    int64_t size, blksize, blocks;
    int64_t atime_ns, mtime_ns, ctime_ns;
};

struct tdp_statfs {
    uint64_t bsize, frsize, blocks, bfree, bavail, files, ffree, favail, namemax;
};

/* counters, for `tandem state` and for the tests that prove which side served a request */
struct tdp_counts {
    uint64_t native_reads, native_flushes, native_capability_answers, native_seeks;
    uint64_t handed_to_python, answered, threads;
};

struct tdp_session;

/* options: comma-separated mount options ("allow_other,fsname=..."). NULL and a message in err
 * when the session cannot be made or mounted. */
struct tdp_session *tdp_new(const char *mountpoint, const char *options, int max_threads,
                            char *err, size_t err_len);
int tdp_start(struct tdp_session *s);           /* 0, or -errno */
int tdp_wake_fd(struct tdp_session *s);         /* readable when requests wait or the loop ended */
size_t tdp_take(struct tdp_session *s, struct tdp_request **out, size_t max);
/* 1 when Python may sleep on the wake fd: nothing is queued, and a request queued from now on
 * writes to the fd */
int tdp_may_sleep(struct tdp_session *s);
/* The session's own /dev/fuse descriptor (the workers read clones of it): Python reads it too
 * when it is readable, so a request it wins needs no second thread to wake. */
int tdp_main_fd(struct tdp_session *s);
/* reads and dispatches one request from the main descriptor: 1 done, 0 none waiting, <0 ended */
int tdp_receive_main(struct tdp_session *s);
int tdp_ended(struct tdp_session *s);           /* the loop has returned (unmounted) */
int tdp_loop_result(struct tdp_session *s);
void tdp_exit(struct tdp_session *s);
int tdp_join(struct tdp_session *s, int timeout_ms); /* 0 joined, -ETIMEDOUT */
void tdp_destroy(struct tdp_session *s);
void tdp_free_request(struct tdp_request *r);
void tdp_get_counts(struct tdp_session *s, struct tdp_counts *out);
/* how many requests of each opcode were handed to Python (out: TDP_OPCODES entries) */
void tdp_get_handed(struct tdp_session *s, uint64_t *out);
/* the hot paths can be switched off one by one (the tests compare both sides) */
void tdp_set_native_reads(struct tdp_session *s, int on);
/* Python's word that an inode has no security.capability (absent=1), or may have one */
void tdp_capability_absent(struct tdp_session *s, uint64_t ino, int absent);

int tdp_reply_err(struct tdp_request *r, int err);
int tdp_reply_none(struct tdp_request *r);
int tdp_reply_entry(struct tdp_request *r, const struct tdp_attr *a);
int tdp_reply_attr(struct tdp_request *r, const struct tdp_attr *a);
int tdp_reply_create(struct tdp_request *r, const struct tdp_attr *a, uint64_t fh, int keep_cache,
                     int direct_io);
int tdp_reply_open(struct tdp_request *r, uint64_t fh, int keep_cache, int direct_io);
int tdp_reply_buf(struct tdp_request *r, const char *data, size_t len);
int tdp_reply_write(struct tdp_request *r, size_t count);  /* also copy_file_range's count */
int tdp_reply_xattr_size(struct tdp_request *r, size_t size);
int tdp_reply_statfs(struct tdp_request *r, const struct tdp_statfs *st);
/* readdirplus: entries are added to a buffer of the request's size, then sent */
int tdp_dir_add(struct tdp_request *r, char *buf, size_t room, const char *name,
                const struct tdp_attr *a, int64_t next_offset); /* bytes used, or > room */

#endif
