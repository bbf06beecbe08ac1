/*
 * segment.c -- formatting a fresh segment, and validating one on attach.
 *
 * The creator formats the segment in place and writes the magic word last,
 * with a release store: an attacher that sees the magic sees a finished
 * header.  Attaching checks everything the engine will later trust without
 * looking again: magic, format word, the ABI marks (endianness, the size of
 * pthread_mutex_t), and that every region the header names lies inside the
 * mapping.  A segment that fails any of these is refused with a code that
 * says which; it is never "tried anyway".
 *
 * It does not map or unmap anything: the Python side owns the mapping
 * (multiprocessing.shared_memory) and hands the engine its address.
 */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>
#include "apc_internal.h"

const char *apc_strerror(int rc)
{
    switch (rc) {
    case APC_OK: return "ok";
    case APC_NOTFOUND: return "no such key";
    case APC_EXISTS: return "the key exists";
    case APC_BUSY: return "another process is generating this key";
    case APC_MISMATCH: return "the value is not the expected one";
    case APC_BUSY_SELF: return "this thread is already generating this key";
    case APC_E_NOMEM: return "no room in the cache";
    case APC_E_TOOBIG: return "larger than the cache";
    case APC_E_TYPE: return "the value is not an int";
    case APC_E_OVERFLOW: return "the result leaves the int64 range";
    case APC_E_MAGIC: return "not an apccache segment";
    case APC_E_FORMAT: return "an apccache segment of another layout version";
    case APC_E_TRUNCATED: return "the segment is shorter than its header says";
    case APC_E_CORRUPT: return "the segment is corrupted";
    case APC_E_ARG: return "invalid argument";
    case APC_E_LOCK: return "the segment's lock could not be taken";
    case APC_E_SMALL: return "buffer too small";
    case APC_E_NOTREADY: return "the segment is still being created";
    case APC_E_SYS: return "system error";
    case APC_E_CLOSED: return "the cache is closed";
    default: return "unknown error";
    }
}

uint64_t apc_next_prime(uint64_t n)
{
    if (n <= 2)
        return 2;
    if (!(n & 1))
        n++;
    for (;; n += 2) {
        int prime = 1;
        for (uint64_t d = 3; d * d <= n; d += 2) {
            if (n % d == 0) {
                prime = 0;
                break;
            }
        }
        if (prime)
            return n;
    }
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) & ~(a - 1); }

/* Offsets of the regions for a given geometry. */
typedef struct layout {
    apc_off_t aux_off;
    apc_off_t buckets_off[APC_NTABLES];
    apc_off_t arena_off;
} layout;

static layout compute_layout(uint64_t nslots_user, uint64_t nslots_files)
{
    layout l;
    l.aux_off = align_up(sizeof(apc_header), 4096);
    l.buckets_off[0] = l.aux_off + APC_AUX_SIZE;
    l.buckets_off[1] = align_up(l.buckets_off[0] + nslots_user * sizeof(apc_off_t), 64);
    l.arena_off = align_up(l.buckets_off[1] + nslots_files * sizeof(apc_off_t), 4096);
    return l;
}

/* Bytes taken before the arena for a given table geometry. */
uint64_t apc_layout_size(uint64_t nslots_user, uint64_t nslots_files)
{
    return compute_layout(nslots_user, nslots_files).arena_off;
}

int apc_format_segment(void *base, uint64_t size, uint64_t nslots_user,
                       uint64_t nslots_files, uint64_t ttl, uint64_t gc_ttl,
                       uint64_t now, int64_t pid)
{
    if (!base || nslots_user < 1 || nslots_files < 1 || nslots_user > (1ULL << 32) ||
        nslots_files > (1ULL << 32))
        return APC_E_ARG;
    layout l = compute_layout(nslots_user, nslots_files);
    uint64_t arena_end = size & ~(uint64_t)(APC_ALIGN - 1);
    if (arena_end < l.arena_off + APC_MIN_ARENA)
        return APC_E_ARG;

    apc_header *h = (apc_header *)base;
    memset(h, 0, sizeof *h);
    h->format = APC_FORMAT;
    h->header_size = sizeof(apc_header);
    h->mutex_size = sizeof(pthread_mutex_t);
    h->endian = APC_ENDIAN_MARK;
    h->seg_size = size;
    h->create_time = apc_now(now);
    h->creator_pid = pid;
    h->ttl = ttl;
    h->gc_ttl = gc_ttl;
    h->aux_off = l.aux_off;
    h->aux_size = APC_AUX_SIZE;
    h->arena_off = l.arena_off;
    h->arena_size = arena_end - l.arena_off;
    h->geom[0].buckets_off = l.buckets_off[0];
    h->geom[0].nslots = nslots_user;
    h->geom[1].buckets_off = l.buckets_off[1];
    h->geom[1].nslots = nslots_files;
    h->next_version = 1;
    for (int t = 0; t < APC_NTABLES; t++)
        h->stats[t].start_time = h->create_time;
    memset((char *)base + l.aux_off, 0, l.arena_off - l.aux_off);

    pthread_mutexattr_t a;
    if (pthread_mutexattr_init(&a) != 0)
        return APC_E_SYS;
    int rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (rc == 0)
        rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (rc == 0)
        rc = pthread_mutex_init(&h->wlock.m, &a);
    pthread_mutexattr_destroy(&a);
    if (rc != 0) {
        errno = rc;
        return APC_E_SYS;
    }

    apc_seg tmp = {.base = base, .hdr = h, .size = size, .arena_off = l.arena_off, .arena_end = arena_end};
    apc_sma_init_wl(&tmp);

    __atomic_store_n(&h->magic, APC_MAGIC_U64, __ATOMIC_RELEASE);
    return APC_OK;
}

uint64_t apc_peek_format(void *base, uint64_t mapped_size)
{
    if (mapped_size < 16)
        return 0;
    return ((apc_header *)base)->format;
}

static int validate(const apc_header *h, uint64_t mapped)
{
    if (mapped < sizeof(uint64_t))
        return APC_E_MAGIC;
    uint64_t magic = __atomic_load_n(&h->magic, __ATOMIC_ACQUIRE);
    if (magic == 0)
        return APC_E_NOTREADY;
    if (magic != APC_MAGIC_U64)
        return APC_E_MAGIC;
    if (mapped < sizeof(apc_header))
        return APC_E_TRUNCATED;
    if (h->format != APC_FORMAT || h->header_size != sizeof(apc_header) ||
        h->mutex_size != sizeof(pthread_mutex_t) || h->endian != APC_ENDIAN_MARK)
        return APC_E_FORMAT;
    if (h->seg_size > mapped)
        return APC_E_TRUNCATED;
    uint64_t size = h->seg_size;
    if (h->aux_off < sizeof(apc_header) || h->aux_size != APC_AUX_SIZE ||
        h->aux_off + h->aux_size > size)
        return APC_E_CORRUPT;
    for (int t = 0; t < APC_NTABLES; t++) {
        const apc_table_geom *g = &h->geom[t];
        if (g->nslots < 1 || g->nslots > (1ULL << 32) || (g->buckets_off & 7) ||
            g->buckets_off < h->aux_off + h->aux_size ||
            g->buckets_off + g->nslots * sizeof(apc_off_t) > h->arena_off)
            return APC_E_CORRUPT;
    }
    if ((h->arena_off & (APC_ALIGN - 1)) || h->arena_size < APC_MIN_ARENA ||
        (h->arena_size & (APC_ALIGN - 1)) || h->arena_off > size ||
        h->arena_size > size - h->arena_off)
        return APC_E_CORRUPT;
    return APC_OK;
}

int apc_open(void *base, uint64_t mapped_size, apc_seg **out)
{
    *out = NULL;
    if (!base)
        return APC_E_ARG;
    apc_header *h = (apc_header *)base;
    int rc = validate(h, mapped_size);
    if (rc != APC_OK)
        return rc;
    apc_seg *seg = calloc(1, sizeof *seg);
    if (!seg)
        return APC_E_SYS;
    seg->base = base;
    seg->hdr = h;
    seg->size = h->seg_size;
    seg->arena_off = h->arena_off;
    seg->arena_end = h->arena_off + h->arena_size;
    seg->stripe = (unsigned)getpid() % APC_NSTRIPES;
    for (int t = 0; t < APC_NTABLES; t++)
        seg->geom[t] = h->geom[t]; /* validated above; never re-read */
    seg->fd = -1;
    *out = seg;
    return APC_OK;
}

int apc_set_fd(apc_seg *seg, int fd)
{
    if (!seg)
        return APC_E_CLOSED;
    uint64_t pages = (seg->size + APC_PAGE - 1) / APC_PAGE;
    uint8_t *seen = calloc((pages + 7) / 8, 1);
    if (!seen)
        return APC_E_SYS; /* values are then written by memcpy only */
    free(seg->seen);
    seg->seen = seen;
    seg->seen_pages = pages;
    seg->seen_pid = apc_pid();
    seg->fd = fd;
    return APC_OK;
}

void apc_close(apc_seg *seg)
{
    if (seg)
        free(seg->seen);
    free(seg);
}

void apc_header_map_get(apc_header_map *out)
{
    out->header_size = sizeof(apc_header);
    out->free_bytes_off = offsetof(apc_header, free_bytes);
    out->num_entries_off = offsetof(apc_header, stats[APC_TABLE_USER].num_entries);
}

uint64_t apc_aux_offset(apc_seg *seg) { return seg->hdr->aux_off; }
uint64_t apc_aux_size(apc_seg *seg) { return seg->hdr->aux_size; }

/* The longest chain (or list) any walk will follow: more links than blocks
 * can exist means a cycle. */
uint64_t apc_walk_cap(const apc_seg *seg)
{
    return (seg->arena_end - seg->arena_off) / APC_BLOCK_MIN + 1;
}
