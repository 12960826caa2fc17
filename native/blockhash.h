#include <stdint.h>
/* Hashes the blocks of [offset, offset + length) of fd; offset is a multiple of block_size.
 * out receives ceil(length / block_size) hashes. Returns how many, or -errno. */
int64_t tandem_hash_blocks(int fd, uint64_t offset, uint64_t length, uint64_t block_size,
                           uint64_t *out);
