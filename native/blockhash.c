/* Per-block XXH3-64 hashes of a file range, for reintegration and `tandem verify`.
 *
 * Why C: comparing two copies costs one hash per block on each side; in Python the per-block
 * overhead (a read call, a bytes object, a hash call) caps the rate far below the disk's.
 * Here reads are large and sequential, holes are skipped without reading (SEEK_DATA/SEEK_HOLE),
 * and cffi releases the GIL for the whole call, so the event loop and other scans keep running.
 *
 * The output must equal the pure-Python reference (tandem.native.blockhash): the hash of a block
 * is XXH3_64bits of the bytes pread() returns for it, so a hole hashes like the zeros it reads as.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "blockhash.h"

/* Reads of at least this much keep the disk streaming even with small blocks. */
#define MIN_CHUNK (1u << 20)

static int64_t read_full(int fd, uint8_t *buf, uint64_t len, uint64_t off)
{
    uint64_t done = 0;
    while (done < len) {
        ssize_t got = pread(fd, buf + done, len - done, (off_t)(off + done));
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (got == 0)
            break; /* the file ended early (it shrank): hash what there is, as the reference does */
        done += (uint64_t)got;
    }
    return (int64_t)done;
}

int64_t tandem_hash_blocks(int fd, uint64_t offset, uint64_t length, uint64_t block_size,
                           uint64_t *out)
{
    if (block_size == 0 || offset % block_size != 0)
        return -EINVAL;
    if (length == 0)
        return 0;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    /* past the end a read returns nothing, not zeros: only blocks inside the file are holes */
    const uint64_t file_size = (uint64_t)st.st_size;
    /* a larger readahead window keeps the disk busy while a chunk is hashed */
    (void)posix_fadvise(fd, (off_t)offset, (off_t)length, POSIX_FADV_SEQUENTIAL);

    uint64_t chunk = block_size >= MIN_CHUNK ? block_size : (MIN_CHUNK / block_size) * block_size;
    uint8_t *buf = malloc(chunk);
    uint8_t *zeros = calloc(1, block_size);
    if (buf == NULL || zeros == NULL) {
        free(buf);
        free(zeros);
        return -ENOMEM;
    }
    XXH64_hash_t zero_block_hash = XXH3_64bits(zeros, block_size);

    const uint64_t end = offset + length;
    uint64_t data_start = offset, data_end = offset; /* the data region around `pos`, once known */
    int holes_known = 1;
    uint64_t buf_start = 0, buf_len = 0; /* what `buf` holds */
    uint64_t count = 0;
    int64_t result = 0;

    for (uint64_t pos = offset; pos < end; pos += block_size, count++) {
        uint64_t len = end - pos < block_size ? end - pos : block_size;

        if (holes_known && pos >= data_end) {
            off_t found = lseek(fd, (off_t)pos, SEEK_DATA);
            if (found < 0 && errno == ENXIO) {
                data_start = data_end = UINT64_MAX; /* only a hole up to the end of the file */
            } else if (found < 0) {
                holes_known = 0; /* this filesystem cannot say: read everything */
            } else {
                data_start = (uint64_t)found;
                off_t hole = lseek(fd, found, SEEK_HOLE);
                data_end = hole < 0 ? UINT64_MAX : (uint64_t)hole;
            }
        }
        if (holes_known && pos + len <= data_start && pos + len <= file_size) {
            out[count] = len == block_size ? zero_block_hash : XXH3_64bits(zeros, len);
            continue;
        }

        if (pos < buf_start || pos + len > buf_start + buf_len) {
            uint64_t want = end - pos < chunk ? end - pos : chunk;
            int64_t got = read_full(fd, buf, want, pos);
            if (got < 0) {
                result = got;
                goto done;
            }
            buf_start = pos;
            buf_len = (uint64_t)got;
        }
        uint64_t have = buf_start + buf_len > pos ? buf_start + buf_len - pos : 0;
        out[count] = XXH3_64bits(buf + (pos - buf_start), have < len ? have : len);
    }
    result = (int64_t)count;
done:
    free(buf);
    free(zeros);
    return result;
}
