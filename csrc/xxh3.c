/*
 * xxh3.c -- XXH3-64, seed 0, default secret.
 *
 * Every slot in the cache carries its key's full XXH3-64: the bucket is
 * hash % nslots, and a chain walk compares the 8-byte hash before it
 * compares keys.  The Python side has always computed that hash with the
 * xxhash package (xxhash.xxh3_64_intdigest); computing it here instead saves
 * a Python call and a 64-bit integer conversion on every operation.  That
 * only works if the two agree on every input, because segments outlive
 * processes and a process that hashed a key differently would simply never
 * find it.  So the one requirement on this file is:
 *
 *     apc_xxh3_64(data, len) == xxhash.xxh3_64_intdigest(data[:len])
 *
 * bit for bit, for every length, on every host.  tests/test_xxh3.py checks
 * exactly that: every length from 0 to 2048, sizes around the 1024-byte
 * block boundaries well past 100 KB, misaligned inputs, and arbitrary byte
 * strings from hypothesis.
 *
 * The code is written from the public XXH3 specification (xxHash's
 * doc/xxhash_spec.md, "XXH3 Algorithm Description"), and its structure
 * follows the spec's sections:
 *
 *   0 bytes          avalanche_xxh64 of two secret words
 *   1..3 bytes       first, middle and last byte plus the length, in one
 *                    32-bit word, keyed and avalanched
 *   4..8 bytes       first and last 4 bytes, keyed, then the rrmxmx mixer
 *   9..16 bytes      first and last 8 bytes, keyed, one 64x64->128 multiply
 *   17..128 bytes    pairs of 16-byte chunks taken from both ends, each
 *                    mixed with 16 bytes of secret by a folded 128-bit
 *                    multiply, summed into one accumulator
 *   129..240 bytes   the first eight 16-byte chunks, an avalanche, the rest
 *                    of the chunks at secret offsets shifted by 3, and the
 *                    last 16 bytes at secret offset 119
 *   > 240 bytes      eight accumulators fed one 64-byte stripe at a time,
 *                    16 stripes to a 1024-byte block, a scramble after each
 *                    full block, a last stripe taken from the input's final
 *                    64 bytes, and a merge of the accumulators to 64 bits
 *
 * Only seed 0 and the default 192-byte secret exist here.  With seed 0 every
 * "+ seed", "- seed" and modified-seed term of the spec is the identity and
 * is left out, and the secret is a compile-time constant, so the compiler
 * folds each short path's secret reads into immediates.  Seeded hashing,
 * custom secrets, streaming and XXH3-128 are not implemented; they are not
 * needed, and every line not written is a line that cannot disagree with
 * the reference.
 *
 * Speed.  Cache keys are short, so the paths up to 128 bytes are small
 * static inline functions folded into apc_xxh3_64 itself: no loops for
 * 0..16 bytes, straight-line code for 17..128, no allocation, no tables
 * beyond the secret.  The 129..240 and long paths are kept out of line so
 * they do not bloat the hot function.  The long path is a plain scalar
 * loop; the engine never hashes anything larger than a key.
 *
 * Portability.  Plain C11.  Input and secret are read as little-endian
 * words through memcpy, so any alignment is fine and no load is
 * type-punned; on a big-endian host the words are byte-swapped, and where
 * the byte order is not known at compile time they are assembled byte by
 * byte.  The 64x64->128 multiply uses unsigned __int128 where the compiler
 * has it and four 32x32->64 products otherwise.
 */
#include "xxh3.h"

#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define XXH3_NOINLINE __attribute__((noinline))
#define XXH3_INLINE static inline __attribute__((always_inline))
#else
#define XXH3_NOINLINE
#define XXH3_INLINE static inline
#endif

/* The spec's constants. */
#define PRIME32_1 0x9E3779B1U
#define PRIME32_2 0x85EBCA77U
#define PRIME32_3 0xC2B2AE3DU
#define PRIME64_1 0x9E3779B185EBCA87ULL
#define PRIME64_2 0xC2B2AE3D27D4EB4FULL
#define PRIME64_3 0x165667B19E3779F9ULL
#define PRIME64_4 0x85EBCA77C2B2AE63ULL
#define PRIME64_5 0x27D4EB2F165667C5ULL
#define PRIME_MX1 0x165667919E3779F9ULL
#define PRIME_MX2 0x9FB21C651E98DF25ULL

/* The default secret: 192 bytes, read as little-endian words. */
#define SECRET_SIZE 192
static const uint8_t secret[SECRET_SIZE] = {
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
    0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
    0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
    0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
    0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
    0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
    0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
    0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
    0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
    0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
    0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
    0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
};

/* Long-input geometry for the default secret (spec, "large inputs"). */
#define STRIPE_LEN 64
#define STRIPES_PER_BLOCK ((SECRET_SIZE - STRIPE_LEN) / 8) /* 16 */
#define BLOCK_LEN (STRIPE_LEN * STRIPES_PER_BLOCK)        /* 1024 */
#define SCRAMBLE_OFF (SECRET_SIZE - STRIPE_LEN)           /* 128 */
#define LAST_STRIPE_OFF (SECRET_SIZE - STRIPE_LEN - 7)    /* 121 */
#define MERGE_OFF 11
/* Medium inputs: the minimum secret size (136) less 17. */
#define MID_LAST_OFF (136 - 17) /* 119 */
#define MID_SKIP_OFF 3

/* ---- little-endian reads, byte swaps, rotations, multiplies ----------- */

XXH3_INLINE uint32_t bswap32(uint32_t x)
{
    return ((x << 24) & 0xff000000U) | ((x << 8) & 0x00ff0000U) |
           ((x >> 8) & 0x0000ff00U) | ((x >> 24) & 0x000000ffU);
}

XXH3_INLINE uint64_t bswap64(uint64_t x)
{
    return ((uint64_t)bswap32((uint32_t)x) << 32) | bswap32((uint32_t)(x >> 32));
}

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__

XXH3_INLINE uint32_t rd32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

XXH3_INLINE uint64_t rd64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

#elif defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) && \
    __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__

XXH3_INLINE uint32_t rd32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return bswap32(v);
}

XXH3_INLINE uint64_t rd64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return bswap64(v);
}

#else /* byte order unknown at compile time */

XXH3_INLINE uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

XXH3_INLINE uint64_t rd64(const uint8_t *p)
{
    return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32);
}

#endif

XXH3_INLINE uint64_t rotl64(uint64_t x, unsigned r)
{
    /* r is always a constant in 1..63 here */
    return (x << r) | (x >> (64 - r));
}

/* The low 64 bits of the 128-bit product a*b, xor the high 64 bits. */
XXH3_INLINE uint64_t mul128_fold64(uint64_t a, uint64_t b)
{
#if defined(__SIZEOF_INT128__)
    __extension__ typedef unsigned __int128 u128; /* quiet under -pedantic */
    u128 m = (u128)a * b;
    return (uint64_t)m ^ (uint64_t)(m >> 64);
#else
    uint64_t lo_lo = (a & 0xffffffffU) * (b & 0xffffffffU);
    uint64_t hi_lo = (a >> 32) * (b & 0xffffffffU);
    uint64_t lo_hi = (a & 0xffffffffU) * (b >> 32);
    uint64_t hi_hi = (a >> 32) * (b >> 32);
    uint64_t cross = (lo_lo >> 32) + (hi_lo & 0xffffffffU) + lo_hi;
    uint64_t upper = (hi_lo >> 32) + (cross >> 32) + hi_hi;
    uint64_t lower = (cross << 32) | (lo_lo & 0xffffffffU);
    return lower ^ upper;
#endif
}

/* ---- final mixers ------------------------------------------------------ */

XXH3_INLINE uint64_t avalanche_xxh64(uint64_t h)
{
    h ^= h >> 33;
    h *= PRIME64_2;
    h ^= h >> 29;
    h *= PRIME64_3;
    h ^= h >> 32;
    return h;
}

XXH3_INLINE uint64_t avalanche(uint64_t h)
{
    h ^= h >> 37;
    h *= PRIME_MX1;
    h ^= h >> 32;
    return h;
}

/* The 4..8-byte mixer ("rrmxmx"). */
XXH3_INLINE uint64_t rrmxmx(uint64_t h, uint64_t len)
{
    h ^= rotl64(h, 49) ^ rotl64(h, 24);
    h *= PRIME_MX2;
    h ^= (h >> 35) + len;
    h *= PRIME_MX2;
    h ^= h >> 28;
    return h;
}

/* ---- 0..16 bytes -------------------------------------------------------- */

XXH3_INLINE uint64_t len_1to3(const uint8_t *p, size_t len)
{
    uint32_t combined = ((uint32_t)p[len - 1]) | ((uint32_t)len << 8) |
                        ((uint32_t)p[0] << 16) | ((uint32_t)p[len >> 1] << 24);
    uint64_t keyed = (uint64_t)(rd32(secret) ^ rd32(secret + 4)) ^ combined;
    return avalanche_xxh64(keyed);
}

XXH3_INLINE uint64_t len_4to8(const uint8_t *p, size_t len)
{
    uint64_t first = rd32(p);
    uint64_t last = rd32(p + len - 4);
    uint64_t combined = last | (first << 32);
    uint64_t keyed = (rd64(secret + 8) ^ rd64(secret + 16)) ^ combined;
    return rrmxmx(keyed, len);
}

XXH3_INLINE uint64_t len_9to16(const uint8_t *p, size_t len)
{
    uint64_t lo = (rd64(secret + 24) ^ rd64(secret + 32)) ^ rd64(p);
    uint64_t hi = (rd64(secret + 40) ^ rd64(secret + 48)) ^ rd64(p + len - 8);
    uint64_t acc = (uint64_t)len + bswap64(lo) + hi + mul128_fold64(lo, hi);
    return avalanche(acc);
}

XXH3_INLINE uint64_t len_0to16(const uint8_t *p, size_t len)
{
    if (len > 8)
        return len_9to16(p, len);
    if (len >= 4)
        return len_4to8(p, len);
    if (len > 0)
        return len_1to3(p, len);
    return avalanche_xxh64(rd64(secret + 56) ^ rd64(secret + 64));
}

/* ---- 17..240 bytes ------------------------------------------------------ */

/* Mix 16 bytes of input with 16 bytes of secret. */
XXH3_INLINE uint64_t mix16(const uint8_t *p, const uint8_t *s)
{
    return mul128_fold64(rd64(p) ^ rd64(s), rd64(p + 8) ^ rd64(s + 8));
}

/*
 * Chunk pairs from both ends: for len in 17..32 the pair is (0, len-16);
 * each further 32 bytes of length adds the pair (16i, len-16-16i) at secret
 * offsets 32i and 32i+16.  Addition commutes, so the order is free.
 */
XXH3_INLINE uint64_t len_17to128(const uint8_t *p, size_t len)
{
    uint64_t acc = (uint64_t)len * PRIME64_1;

    if (len > 32) {
        if (len > 64) {
            if (len > 96) {
                acc += mix16(p + 48, secret + 96);
                acc += mix16(p + len - 64, secret + 112);
            }
            acc += mix16(p + 32, secret + 64);
            acc += mix16(p + len - 48, secret + 80);
        }
        acc += mix16(p + 16, secret + 32);
        acc += mix16(p + len - 32, secret + 48);
    }
    acc += mix16(p, secret);
    acc += mix16(p + len - 16, secret + 16);
    return avalanche(acc);
}

static XXH3_NOINLINE uint64_t len_129to240(const uint8_t *p, size_t len)
{
    uint64_t acc = (uint64_t)len * PRIME64_1;
    size_t nchunks = len / 16;
    size_t i;

    for (i = 0; i < 8; i++)
        acc += mix16(p + 16 * i, secret + 16 * i);
    acc = avalanche(acc);
    for (i = 8; i < nchunks; i++)
        acc += mix16(p + 16 * i, secret + 16 * (i - 8) + MID_SKIP_OFF);
    acc += mix16(p + len - 16, secret + MID_LAST_OFF);
    return avalanche(acc);
}

/* ---- more than 240 bytes ------------------------------------------------ */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
/* The same two steps on 256-bit vectors of four lanes, written with GCC's
 * vector extensions: len_long is compiled twice (target_clones), for AVX2
 * and for the x86-64 baseline (two SSE2 halves), and the loader picks one
 * for this CPU.  (k & 0xffffffff) * (k >> 32) is one vpmuludq.  Bit for bit
 * the scalar version below; checksums of large values then run at about
 * memory speed. */
typedef uint64_t v4u64 __attribute__((vector_size(32), aligned(1)));
#define XXH3_LONG_ATTR __attribute__((target_clones("avx2", "default")))

XXH3_INLINE void accumulate_stripe(uint64_t acc[8], const uint8_t *p, const uint8_t *s)
{
    for (int i = 0; i < 2; i++) {
        v4u64 v, k, a;
        memcpy(&v, p + 32 * i, 32);
        memcpy(&k, s + 32 * i, 32);
        memcpy(&a, acc + 4 * i, 32);
        k ^= v;
        v4u64 vswap = __builtin_shuffle(v, (v4u64){1, 0, 3, 2});
        a += (k & 0xffffffffULL) * (k >> 32) + vswap;
        memcpy(acc + 4 * i, &a, 32);
    }
}

XXH3_INLINE void scramble(uint64_t acc[8])
{
    for (int i = 0; i < 2; i++) {
        v4u64 a, k;
        memcpy(&a, acc + 4 * i, 32);
        memcpy(&k, secret + SCRAMBLE_OFF + 32 * i, 32);
        a ^= a >> 47;
        a ^= k;
        a = (a & 0xffffffffULL) * PRIME32_1 + (((a >> 32) * PRIME32_1) << 32);
        memcpy(acc + 4 * i, &a, 32);
    }
}
#else
#define XXH3_LONG_ATTR
XXH3_INLINE void accumulate_stripe(uint64_t acc[8], const uint8_t *p, const uint8_t *s)
{
    for (int i = 0; i < 8; i++) {
        uint64_t v = rd64(p + 8 * i);
        uint64_t k = v ^ rd64(s + 8 * i);
        acc[i ^ 1] += v;
        acc[i] += (k & 0xffffffffU) * (k >> 32);
    }
}

XXH3_INLINE void scramble(uint64_t acc[8])
{
    for (int i = 0; i < 8; i++) {
        uint64_t a = acc[i];
        a ^= a >> 47;
        a ^= rd64(secret + SCRAMBLE_OFF + 8 * i);
        acc[i] = a * PRIME32_1;
    }
}
#endif

static XXH3_NOINLINE XXH3_LONG_ATTR uint64_t len_long(const uint8_t *p, size_t len)
{
    uint64_t acc[8] __attribute__((aligned(32))) = {
        PRIME32_3, PRIME64_1, PRIME64_2, PRIME64_3,
        PRIME64_4, PRIME32_2, PRIME64_5, PRIME32_1,
    };
    /* Full blocks, each followed by a scramble; the last block (full or
     * not) is left for the tail. */
    size_t nblocks = (len - 1) / BLOCK_LEN;
    size_t b, n;

    for (b = 0; b < nblocks; b++) {
        const uint8_t *blk = p + b * BLOCK_LEN;
        for (n = 0; n < STRIPES_PER_BLOCK; n++)
            accumulate_stripe(acc, blk + n * STRIPE_LEN, secret + n * 8);
        scramble(acc);
    }

    /* The last block's full stripes, all but the final stripe; then the
     * input's last 64 bytes, which may overlap what came before. */
    {
        const uint8_t *blk = p + nblocks * BLOCK_LEN;
        size_t nstripes = ((len - 1) - nblocks * BLOCK_LEN) / STRIPE_LEN;
        for (n = 0; n < nstripes; n++)
            accumulate_stripe(acc, blk + n * STRIPE_LEN, secret + n * 8);
        accumulate_stripe(acc, p + len - STRIPE_LEN, secret + LAST_STRIPE_OFF);
    }

    /* Merge the eight accumulators. */
    {
        uint64_t h = (uint64_t)len * PRIME64_1;
        for (int i = 0; i < 4; i++) {
            const uint8_t *s = secret + MERGE_OFF + 16 * i;
            h += mul128_fold64(acc[2 * i] ^ rd64(s), acc[2 * i + 1] ^ rd64(s + 8));
        }
        return avalanche(h);
    }
}

/* ---- entry point -------------------------------------------------------- */

uint64_t apc_xxh3_64(const void *data, size_t len)
{
    const uint8_t *p = (const uint8_t *)data;

    if (len <= 16)
        return len_0to16(p, len);
    if (len <= 128)
        return len_17to128(p, len);
    if (len <= 240)
        return len_129to240(p, len);
    return len_long(p, len);
}
