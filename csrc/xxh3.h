/*
 * xxh3.h -- XXH3-64 of a byte string, computed inside the engine.
 *
 * The engine hashes keys itself so that the binding hands it the key bytes
 * and nothing else.  The result is the 64-bit XXH3 hash with seed 0 and the
 * default secret: bit for bit the value of the Python xxhash package's
 * xxh3_64_intdigest(data).  See xxh3.c for how, and tests/test_xxh3.py for
 * the proof.
 */
#ifndef APC_XXH3_H
#define APC_XXH3_H

#include <stddef.h>
#include <stdint.h>

/* XXH3-64 (seed 0, default secret) of the len bytes at data.  data need not
 * be aligned, and may be NULL when len is 0.  Pure: no state, no allocation,
 * safe from any thread. */
uint64_t apc_xxh3_64(const void *data, size_t len);

#endif /* APC_XXH3_H */
