/* The native data plane (see dataplane.h). libfuse's multi-threaded loop reads the requests,
 * each worker thread on its own clone of /dev/fuse; the callbacks below either answer at once
 * (hot requests) or queue the request for the Python control plane. */
#define FUSE_USE_VERSION 312
#define _GNU_SOURCE
#include "dataplane.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define CAPABILITY_XATTR "security.capability"

/* a set of inode numbers: open addressing, linear probing, 0 is the empty slot (inode 0 does
 * not exist in FUSE) */
struct ino_set {
    uint64_t *slots;
    size_t capacity; /* a power of two */
    size_t used;
};

struct queued {
    struct tdp_request request; /* first: a request's address is its node's */
    struct queued *next;
    char payload[];
};

struct tdp_session {
    struct fuse_session *se;
    pthread_t loop_thread;
    int loop_started;
    atomic_int ended;
    int loop_result;
    int wake_fd;
    atomic_int python_sleeping;
    pthread_mutex_t queue_lock;
    struct queued *head, *tail;
    pthread_mutex_t join_lock;
    pthread_cond_t join_cond;
    int max_threads;
    atomic_int native_reads;
    pthread_mutex_t capability_lock;
    struct ino_set no_capability;
    _Atomic uint64_t count_reads, count_flushes, count_capability, count_seeks;
    _Atomic uint64_t count_handed, count_answered;
    _Atomic uint64_t handed_by_opcode[TDP_OPCODES];
    struct fuse_buf main_buf;
};

/* -- the inode set ------------------------------------------------------------------------ */

static size_t slot_of(uint64_t ino, size_t capacity) {
    ino *= 0x9E3779B97F4A7C15ULL; /* Fibonacci hashing spreads consecutive numbers */
    return (size_t)(ino >> 17) & (capacity - 1);
}

static int set_grow(struct ino_set *set) {
    size_t capacity = set->capacity ? set->capacity * 2 : 1024;
    uint64_t *slots = calloc(capacity, sizeof *slots);
    if (slots == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < set->capacity; i++) {
        uint64_t ino = set->slots[i];
        if (ino == 0)
            continue;
        size_t j = slot_of(ino, capacity);
        while (slots[j] != 0)
            j = (j + 1) & (capacity - 1);
        slots[j] = ino;
    }
    free(set->slots);
    set->slots = slots;
    set->capacity = capacity;
    return 0;
}

static int set_contains(const struct ino_set *set, uint64_t ino) {
    if (set->capacity == 0)
        return 0;
    for (size_t i = slot_of(ino, set->capacity);; i = (i + 1) & (set->capacity - 1)) {
        if (set->slots[i] == ino)
            return 1;
        if (set->slots[i] == 0)
            return 0;
    }
}

static void set_add(struct ino_set *set, uint64_t ino) {
    if (set_contains(set, ino))
        return;
    if ((set->used + 1) * 2 > set->capacity && set_grow(set) != 0)
        return; /* out of memory: the inode is simply not remembered, Python answers */
    size_t i = slot_of(ino, set->capacity);
    while (set->slots[i] != 0)
        i = (i + 1) & (set->capacity - 1);
    set->slots[i] = ino;
    set->used++;
}

static void set_remove(struct ino_set *set, uint64_t ino) {
    if (set->capacity == 0)
        return;
    size_t mask = set->capacity - 1, i = slot_of(ino, set->capacity);
    while (set->slots[i] != ino) {
        if (set->slots[i] == 0)
            return;
        i = (i + 1) & mask;
    }
    /* backward-shift deletion keeps every probe chain unbroken without tombstones */
    size_t hole = i;
    for (size_t j = (hole + 1) & mask; set->slots[j] != 0; j = (j + 1) & mask) {
        size_t home = slot_of(set->slots[j], set->capacity);
        int movable = hole <= j ? (home <= hole || home > j) : (home <= hole && home > j);
        if (movable) {
            set->slots[hole] = set->slots[j];
            hole = j;
        }
    }
    set->slots[hole] = 0;
    set->used--;
}

/* -- the queue to Python ------------------------------------------------------------------ */

static struct tdp_session *session_of(fuse_req_t req) { return fuse_req_userdata(req); }

static void wake_python(struct tdp_session *s) {
    uint64_t one = 1;
    ssize_t n = write(s->wake_fd, &one, sizeof one);
    (void)n; /* EAGAIN: the counter is already non-zero, Python wakes anyway */
}

/* A request for Python, with room for two names and a data buffer copied behind it (the
 * buffers libfuse passes belong to the worker thread and are reused at once). The data comes
 * last in the payload. */
static struct queued *make_request(fuse_req_t req, int opcode, uint64_t ino, const char *name,
                                   const char *name2, const char *data, size_t data_len) {
    size_t name_len = name ? strlen(name) : 0, name2_len = name2 ? strlen(name2) : 0;
    size_t extra = (name ? name_len + 1 : 0) + (name2 ? name2_len + 1 : 0) + data_len;
    struct queued *q = calloc(1, sizeof *q + extra);
    if (q == NULL)
        return NULL;
    struct tdp_request *r = &q->request;
    const struct fuse_ctx *ctx = fuse_req_ctx(req);
    r->req = req;
    r->opcode = opcode;
    r->ino = ino;
    r->uid = ctx->uid;
    r->gid = ctx->gid;
    r->pid = (uint32_t)ctx->pid;
    r->umask = ctx->umask;
    char *p = q->payload;
    if (name) {
        memcpy(p, name, name_len + 1);
        r->name = p;
        r->name_len = name_len;
        p += name_len + 1;
    }
    if (name2) {
        memcpy(p, name2, name2_len + 1);
        r->name2 = p;
        r->name2_len = name2_len;
        p += name2_len + 1;
    }
    if (data) { /* without data, the room stays for the caller (zeroed) */
        memcpy(p, data, data_len);
        r->data = p;
        r->data_len = data_len;
    }
    return q;
}

static void hand_over(struct queued *q) {
    struct tdp_session *s = session_of(q->request.req);
    q->next = NULL;
    pthread_mutex_lock(&s->queue_lock);
    if (s->tail)
        s->tail->next = q;
    else
        s->head = q;
    s->tail = q;
    pthread_mutex_unlock(&s->queue_lock);
    atomic_fetch_add(&s->count_handed, 1);
    atomic_fetch_add(&s->handed_by_opcode[q->request.opcode], 1);
    if (atomic_exchange(&s->python_sleeping, 0))
        wake_python(s);
}

/* queue it, or answer ENOMEM when not even the request's copy fits in memory */
static void to_python(fuse_req_t req, struct queued *q) {
    if (q == NULL) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    hand_over(q);
}

static struct queued *plain(fuse_req_t req, int opcode, fuse_ino_t ino, const char *name) {
    return make_request(req, opcode, ino, name, NULL, NULL, 0);
}

static void with_file(struct queued *q, struct fuse_file_info *fi) {
    if (q && fi) {
        q->request.fh = fi->fh;
        q->request.has_fh = 1;
        q->request.flags = (uint32_t)fi->flags;
    }
}

/* a request about an open file or directory: its handle (and open flags) go with it */
static struct queued *on_handle(fuse_req_t req, int opcode, fuse_ino_t ino,
                                struct fuse_file_info *fi) {
    struct queued *q = plain(req, opcode, ino, NULL);
    with_file(q, fi);
    return q;
}

/* -- callbacks ---------------------------------------------------------------------------- */

static void op_init(void *userdata, struct fuse_conn_info *conn) {
    (void)userdata;
    /* as the reference (pyfuse3) asks: always READDIRPLUS, never the writeback cache (a
     * write(2) would return before we, and the peer, saw it), no ACL handling of ours */
    conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
    conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
    conn->want &= ~FUSE_CAP_POSIX_ACL;
    conn->want &= ~FUSE_CAP_EXPORT_SUPPORT;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    to_python(req, plain(req, TDP_LOOKUP, parent, name));
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
    struct queued *q = make_request(req, TDP_FORGET, ino, NULL, NULL, NULL, 2 * sizeof(uint64_t));
    if (q == NULL) {
        fuse_reply_none(req); /* the table keeps a lookup too many: a leak, not an error */
        return;
    }
    uint64_t *pairs = (uint64_t *)q->payload;
    pairs[0] = ino;
    pairs[1] = nlookup;
    q->request.forgets = pairs;
    q->request.forget_count = 1;
    hand_over(q);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets) {
    struct queued *q =
        make_request(req, TDP_FORGET, 0, NULL, NULL, NULL, 2 * sizeof(uint64_t) * count);
    if (q == NULL) {
        fuse_reply_none(req);
        return;
    }
    uint64_t *pairs = (uint64_t *)q->payload;
    for (size_t i = 0; i < count; i++) {
        pairs[2 * i] = forgets[i].ino;
        pairs[2 * i + 1] = forgets[i].nlookup;
    }
    q->request.forgets = pairs;
    q->request.forget_count = count;
    hand_over(q);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)fi; /* the reference stats the inode, not the handle */
    to_python(req, plain(req, TDP_GETATTR, ino, NULL));
}

static int64_t now_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

static int64_t ns_of(struct timespec t) { return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec; }

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi) {
    struct queued *q = plain(req, TDP_SETATTR, ino, NULL);
    if (q) {
        struct tdp_request *r = &q->request;
        if (fi) {
            r->fh = fi->fh;
            r->has_fh = 1;
        }
        r->flags = (uint32_t)to_set;
        r->attr_mode = attr->st_mode;
        r->attr_uid = attr->st_uid;
        r->attr_gid = attr->st_gid;
        r->attr_size = attr->st_size;
        int64_t now = (to_set & (FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW)) ? now_ns() : 0;
        r->atime_ns = (to_set & FUSE_SET_ATTR_ATIME_NOW) ? now : ns_of(attr->st_atim);
        r->mtime_ns = (to_set & FUSE_SET_ATTR_MTIME_NOW) ? now : ns_of(attr->st_mtim);
    }
    to_python(req, q);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino) {
    to_python(req, plain(req, TDP_READLINK, ino, NULL));
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                     dev_t rdev) {
    struct queued *q = plain(req, TDP_MKNOD, parent, name);
    if (q) {
        q->request.mode = mode;
        q->request.rdev = rdev;
    }
    to_python(req, q);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode) {
    struct queued *q = plain(req, TDP_MKDIR, parent, name);
    if (q)
        q->request.mode = mode;
    to_python(req, q);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name) {
    to_python(req, plain(req, TDP_UNLINK, parent, name));
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name) {
    to_python(req, plain(req, TDP_RMDIR, parent, name));
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name) {
    to_python(req, make_request(req, TDP_SYMLINK, parent, name, link, NULL, 0));
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags) {
    struct queued *q = make_request(req, TDP_RENAME, parent, name, newname, NULL, 0);
    if (q) {
        q->request.ino2 = newparent;
        q->request.flags = flags;
    }
    to_python(req, q);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname) {
    struct queued *q = plain(req, TDP_LINK, ino, newname);
    if (q)
        q->request.ino2 = newparent;
    to_python(req, q);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    struct queued *q = on_handle(req, TDP_OPEN, ino, fi);
    to_python(req, q);
}

static __thread char *read_buffer;
static __thread size_t read_buffer_size;

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi) {
    struct tdp_session *s = session_of(req);
    if (!atomic_load(&s->native_reads)) {
        struct queued *q = plain(req, TDP_READ, ino, NULL);
        with_file(q, fi);
        if (q) {
            q->request.offset = off;
            q->request.size = size;
        }
        to_python(req, q);
        return;
    }
    /* fh is the backing descriptor the open gave the kernel: reading needs nothing else */
    if (size > read_buffer_size) {
        char *bigger = realloc(read_buffer, size);
        if (bigger == NULL) {
            fuse_reply_err(req, ENOMEM);
            return;
        }
        read_buffer = bigger;
        read_buffer_size = size;
    }
    ssize_t n;
    do
        n = pread((int)fi->fh, read_buffer, size, off);
    while (n < 0 && errno == EINTR);
    atomic_fetch_add(&s->count_reads, 1);
    if (n < 0)
        fuse_reply_err(req, errno);
    else
        fuse_reply_buf(req, read_buffer, (size_t)n);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi) {
    struct queued *q = make_request(req, TDP_WRITE, ino, NULL, NULL, buf, size);
    with_file(q, fi);
    if (q)
        q->request.offset = off;
    to_python(req, q);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino;
    (void)fi;
    /* close(2) changes nothing we replicate and we hold no locks: ENOSYS makes the kernel stop
     * sending FLUSH (the reference answers the same) */
    atomic_fetch_add(&session_of(req)->count_flushes, 1);
    fuse_reply_err(req, ENOSYS);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    to_python(req, on_handle(req, TDP_RELEASE, ino, fi));
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
    struct queued *q = on_handle(req, TDP_FSYNC, ino, fi);
    if (q)
        q->request.flags = (uint32_t)datasync;
    to_python(req, q);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    to_python(req, on_handle(req, TDP_OPENDIR, ino, fi));
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi) {
    struct queued *q = on_handle(req, TDP_READDIRPLUS, ino, fi);
    if (q) {
        q->request.offset = off;
        q->request.size = size;
    }
    to_python(req, q);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    to_python(req, on_handle(req, TDP_RELEASEDIR, ino, fi));
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
    struct queued *q = on_handle(req, TDP_FSYNCDIR, ino, fi);
    if (q)
        q->request.flags = (uint32_t)datasync;
    to_python(req, q);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino) {
    to_python(req, plain(req, TDP_STATFS, ino, NULL));
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                        size_t size, int flags) {
    struct queued *q = make_request(req, TDP_SETXATTR, ino, name, NULL, value, size);
    if (q)
        q->request.flags = (uint32_t)flags;
    to_python(req, q);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
    struct tdp_session *s = session_of(req);
    if (strcmp(name, CAPABILITY_XATTR) == 0) {
        /* the kernel asks this before every write: what Python found absent is absent still,
         * since every change of the file passes through us */
        pthread_mutex_lock(&s->capability_lock);
        int absent = set_contains(&s->no_capability, ino);
        pthread_mutex_unlock(&s->capability_lock);
        if (absent) {
            atomic_fetch_add(&s->count_capability, 1);
            fuse_reply_err(req, ENODATA);
            return;
        }
    }
    struct queued *q = plain(req, TDP_GETXATTR, ino, name);
    if (q)
        q->request.size = size;
    to_python(req, q);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
    struct queued *q = plain(req, TDP_LISTXATTR, ino, NULL);
    if (q)
        q->request.size = size;
    to_python(req, q);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name) {
    to_python(req, plain(req, TDP_REMOVEXATTR, ino, name));
}

static void op_access(fuse_req_t req, fuse_ino_t ino, int mask) {
    struct queued *q = plain(req, TDP_ACCESS, ino, NULL);
    if (q)
        q->request.flags = (uint32_t)mask;
    to_python(req, q);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi) {
    struct queued *q = plain(req, TDP_CREATE, parent, name);
    with_file(q, fi);
    if (q)
        q->request.mode = mode;
    to_python(req, q);
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                         struct fuse_file_info *fi) {
    struct queued *q = on_handle(req, TDP_FALLOCATE, ino, fi);
    if (q) {
        q->request.flags = (uint32_t)mode;
        q->request.offset = offset;
        q->request.size = (uint64_t)length;
    }
    to_python(req, q);
}

static void op_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
                               struct fuse_file_info *fi_in, fuse_ino_t ino_out, off_t off_out,
                               struct fuse_file_info *fi_out, size_t len, int flags) {
    struct queued *q = plain(req, TDP_COPY_FILE_RANGE, ino_in, NULL);
    if (q) {
        struct tdp_request *r = &q->request;
        r->fh = fi_in->fh;
        r->has_fh = 1;
        r->offset = off_in;
        r->ino2 = ino_out;
        r->fh2 = fi_out->fh;
        r->offset2 = off_out;
        r->size = len;
        r->flags = (uint32_t)flags;
    }
    to_python(req, q);
}

static void op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
                     struct fuse_file_info *fi) {
    (void)ino;
    /* SEEK_DATA and SEEK_HOLE (the kernel keeps SET/CUR/END itself): the backing file's own
     * answer, exact, holes included */
    off_t found = lseek((int)fi->fh, off, whence);
    atomic_fetch_add(&session_of(req)->count_seeks, 1);
    if (found < 0)
        fuse_reply_err(req, errno);
    else
        fuse_reply_lseek(req, found);
}

static const struct fuse_lowlevel_ops operations = {
    .init = op_init,
    .lookup = op_lookup,
    .forget = op_forget,
    .forget_multi = op_forget_multi,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .readlink = op_readlink,
    .mknod = op_mknod,
    .mkdir = op_mkdir,
    .unlink = op_unlink,
    .rmdir = op_rmdir,
    .symlink = op_symlink,
    .rename = op_rename,
    .link = op_link,
    .open = op_open,
    .read = op_read,
    .write = op_write,
    .flush = op_flush,
    .release = op_release,
    .fsync = op_fsync,
    .opendir = op_opendir,
    .readdirplus = op_readdirplus,
    .releasedir = op_releasedir,
    .fsyncdir = op_fsyncdir,
    .statfs = op_statfs,
    .setxattr = op_setxattr,
    .getxattr = op_getxattr,
    .listxattr = op_listxattr,
    .removexattr = op_removexattr,
    .access = op_access,
    .create = op_create,
    .fallocate = op_fallocate,
    .copy_file_range = op_copy_file_range,
    .lseek = op_lseek,
};

/* -- the session -------------------------------------------------------------------------- */

struct tdp_session *tdp_new(const char *mountpoint, const char *options, int max_threads,
                            char *err, size_t err_len) {
    struct tdp_session *s = calloc(1, sizeof *s);
    if (s == NULL) {
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->wake_fd < 0) {
        snprintf(err, err_len, "eventfd: %s", strerror(errno));
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->queue_lock, NULL);
    pthread_mutex_init(&s->join_lock, NULL);
    pthread_cond_init(&s->join_cond, NULL);
    pthread_mutex_init(&s->capability_lock, NULL);
    atomic_store(&s->native_reads, 1);
    s->max_threads = max_threads > 0 ? max_threads : 8;
    char *argv[] = {"tandem", "-o", (char *)options, NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, argv);
    s->se = fuse_session_new(&args, &operations, sizeof operations, s);
    if (s->se == NULL) {
        snprintf(err, err_len, "fuse_session_new failed (bad options: %s?)", options);
        goto fail;
    }
    if (fuse_session_mount(s->se, mountpoint) != 0) {
        snprintf(err, err_len, "fuse_session_mount failed");
        fuse_session_destroy(s->se);
        goto fail;
    }
    return s;
fail:
    close(s->wake_fd);
    free(s);
    return NULL;
}

static void *loop_main(void *arg) {
    struct tdp_session *s = arg;
    struct fuse_loop_config *config = fuse_loop_cfg_create();
    if (config == NULL) {
        s->loop_result = -ENOMEM;
    } else {
        /* a clone of /dev/fuse per worker: the kernel spreads requests over them */
        fuse_loop_cfg_set_clone_fd(config, 1);
        fuse_loop_cfg_set_max_threads(config, (unsigned)s->max_threads);
        fuse_loop_cfg_set_idle_threads(config, (unsigned)s->max_threads);
        s->loop_result = fuse_session_loop_mt(s->se, config);
        fuse_loop_cfg_destroy(config);
    }
    pthread_mutex_lock(&s->join_lock);
    atomic_store(&s->ended, 1);
    pthread_cond_broadcast(&s->join_cond);
    pthread_mutex_unlock(&s->join_lock);
    wake_python(s);
    return NULL;
}

int tdp_start(struct tdp_session *s) {
    /* Python reads the main descriptor only when it is readable, and never waits in read */
    int fd = fuse_session_fd(s->se);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    /* the loop and its workers take no signal: SIGTERM and SIGINT are Python's */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&s->loop_thread, NULL, loop_main, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        return -rc;
    s->loop_started = 1;
    return 0;
}

int tdp_wake_fd(struct tdp_session *s) { return s->wake_fd; }

size_t tdp_take(struct tdp_session *s, struct tdp_request **out, size_t max) {
    size_t n = 0;
    pthread_mutex_lock(&s->queue_lock);
    while (n < max && s->head) {
        struct queued *q = s->head;
        s->head = q->next;
        out[n++] = &q->request;
    }
    if (s->head == NULL)
        s->tail = NULL;
    pthread_mutex_unlock(&s->queue_lock);
    return n;
}

int tdp_may_sleep(struct tdp_session *s) {
    uint64_t drained;
    ssize_t n = read(s->wake_fd, &drained, sizeof drained);
    (void)n;
    atomic_store(&s->python_sleeping, 1);
    pthread_mutex_lock(&s->queue_lock);
    int empty = s->head == NULL;
    pthread_mutex_unlock(&s->queue_lock);
    if (!empty || atomic_load(&s->ended)) {
        atomic_store(&s->python_sleeping, 0);
        return 0;
    }
    return 1;
}

int tdp_main_fd(struct tdp_session *s) { return fuse_session_fd(s->se); }

int tdp_receive_main(struct tdp_session *s) {
    int res = fuse_session_receive_buf(s->se, &s->main_buf);
    if (res == -EAGAIN || res == -EINTR)
        return 0;
    if (res <= 0)
        return res < 0 ? res : -ENODEV;
    fuse_session_process_buf(s->se, &s->main_buf);
    return 1;
}

int tdp_ended(struct tdp_session *s) { return atomic_load(&s->ended); }

int tdp_loop_result(struct tdp_session *s) { return s->loop_result; }

void tdp_exit(struct tdp_session *s) { fuse_session_exit(s->se); }

int tdp_join(struct tdp_session *s, int timeout_ms) {
    if (!s->loop_started)
        return 0;
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&s->join_lock);
    int rc = 0;
    while (!atomic_load(&s->ended) && rc == 0)
        rc = pthread_cond_timedwait(&s->join_cond, &s->join_lock, &deadline);
    pthread_mutex_unlock(&s->join_lock);
    if (!atomic_load(&s->ended))
        return -ETIMEDOUT;
    pthread_join(s->loop_thread, NULL);
    s->loop_started = 0;
    return 0;
}

void tdp_destroy(struct tdp_session *s) {
    if (s->loop_started)
        return; /* the loop still runs on it: leave it to the process's end */
    fuse_session_destroy(s->se);
    free(s->main_buf.mem);
    struct queued *q = s->head;
    while (q) {
        struct queued *next = q->next;
        free(q);
        q = next;
    }
    close(s->wake_fd);
    free(s->no_capability.slots);
    free(s);
}

void tdp_free_request(struct tdp_request *r) { free((struct queued *)r); }

void tdp_get_counts(struct tdp_session *s, struct tdp_counts *out) {
    out->native_reads = atomic_load(&s->count_reads);
    out->native_flushes = atomic_load(&s->count_flushes);
    out->native_capability_answers = atomic_load(&s->count_capability);
    out->native_seeks = atomic_load(&s->count_seeks);
    out->handed_to_python = atomic_load(&s->count_handed);
    out->answered = atomic_load(&s->count_answered);
}

void tdp_get_handed(struct tdp_session *s, uint64_t *out) {
    for (int i = 0; i < TDP_OPCODES; i++)
        out[i] = atomic_load(&s->handed_by_opcode[i]);
}

void tdp_set_native_reads(struct tdp_session *s, int on) { atomic_store(&s->native_reads, on); }

void tdp_capability_absent(struct tdp_session *s, uint64_t ino, int absent) {
    pthread_mutex_lock(&s->capability_lock);
    if (absent)
        set_add(&s->no_capability, ino);
    else
        set_remove(&s->no_capability, ino);
    pthread_mutex_unlock(&s->capability_lock);
}

/* -- replies (from Python's thread) -------------------------------------------------------- */

static void to_stat(const struct tdp_attr *a, struct stat *st) {
    memset(st, 0, sizeof *st);
    st->st_ino = a->ino;
    st->st_mode = a->mode;
    st->st_nlink = a->nlink;
    st->st_uid = a->uid;
    st->st_gid = a->gid;
    st->st_rdev = a->rdev;
    st->st_size = a->size;
    st->st_blksize = a->blksize;
    st->st_blocks = a->blocks;
    st->st_atim.tv_sec = a->atime_ns / 1000000000;
    st->st_atim.tv_nsec = a->atime_ns % 1000000000;
    st->st_mtim.tv_sec = a->mtime_ns / 1000000000;
    st->st_mtim.tv_nsec = a->mtime_ns % 1000000000;
    st->st_ctim.tv_sec = a->ctime_ns / 1000000000;
    st->st_ctim.tv_nsec = a->ctime_ns % 1000000000;
}

static void to_entry(const struct tdp_attr *a, struct fuse_entry_param *e) {
    memset(e, 0, sizeof *e);
    e->ino = a->ino;
    e->generation = a->generation;
    e->attr_timeout = a->attr_timeout;
    e->entry_timeout = a->entry_timeout;
    to_stat(a, &e->attr);
}

/* Every reply ends the request and frees libfuse's side of it: the session is read first.
 * The request's copy is freed by Python afterwards (tdp_free_request). */
static struct tdp_session *counted(struct tdp_request *r) {
    struct tdp_session *s = session_of(r->req);
    atomic_fetch_add(&s->count_answered, 1);
    return s;
}

int tdp_reply_err(struct tdp_request *r, int err) {
    counted(r);
    return fuse_reply_err(r->req, err);
}

int tdp_reply_none(struct tdp_request *r) {
    counted(r);
    fuse_reply_none(r->req);
    return 0;
}

int tdp_reply_entry(struct tdp_request *r, const struct tdp_attr *a) {
    struct fuse_entry_param e;
    to_entry(a, &e);
    counted(r);
    return fuse_reply_entry(r->req, &e);
}

int tdp_reply_attr(struct tdp_request *r, const struct tdp_attr *a) {
    struct stat st;
    to_stat(a, &st);
    counted(r);
    return fuse_reply_attr(r->req, &st, a->attr_timeout);
}

int tdp_reply_create(struct tdp_request *r, const struct tdp_attr *a, uint64_t fh, int keep_cache,
                     int direct_io) {
    struct fuse_entry_param e;
    struct fuse_file_info fi;
    to_entry(a, &e);
    memset(&fi, 0, sizeof fi);
    fi.fh = fh;
    fi.keep_cache = keep_cache != 0;
    fi.direct_io = direct_io != 0;
    fi.flags = (int)r->flags;
    counted(r);
    return fuse_reply_create(r->req, &e, &fi);
}

int tdp_reply_open(struct tdp_request *r, uint64_t fh, int keep_cache, int direct_io) {
    struct fuse_file_info fi;
    memset(&fi, 0, sizeof fi);
    fi.fh = fh;
    fi.keep_cache = keep_cache != 0;
    fi.direct_io = direct_io != 0;
    fi.flags = (int)r->flags;
    counted(r);
    return fuse_reply_open(r->req, &fi);
}

int tdp_reply_buf(struct tdp_request *r, const char *data, size_t len) {
    counted(r);
    return fuse_reply_buf(r->req, data, len);
}

int tdp_reply_write(struct tdp_request *r, size_t count) {
    counted(r);
    return fuse_reply_write(r->req, count);
}

int tdp_reply_xattr_size(struct tdp_request *r, size_t size) {
    counted(r);
    return fuse_reply_xattr(r->req, size);
}

int tdp_reply_statfs(struct tdp_request *r, const struct tdp_statfs *in) {
    struct statvfs st;
    memset(&st, 0, sizeof st);
    st.f_bsize = in->bsize;
    st.f_frsize = in->frsize;
    st.f_blocks = in->blocks;
    st.f_bfree = in->bfree;
    st.f_bavail = in->bavail;
    st.f_files = in->files;
    st.f_ffree = in->ffree;
    st.f_favail = in->favail;
    st.f_namemax = in->namemax;
    counted(r);
    return fuse_reply_statfs(r->req, &st);
}

int tdp_dir_add(struct tdp_request *r, char *buf, size_t room, const char *name,
                const struct tdp_attr *a, int64_t next_offset) {
    struct fuse_entry_param e;
    to_entry(a, &e);
    return (int)fuse_add_direntry_plus(r->req, buf, room, name, &e, next_offset);
}
