/*
 * report.c -- what the segment says about itself: the counters (info),
 * the allocator's view (sma_info), one key's record (key_info), and the
 * walks that copy the tables out a bounded chunk at a time, so that a
 * writer waits for one chunk at most, however many entries there are.
 */
#include <stdlib.h>
#include "apc_internal.h"
#include "xxh3.h"

static int do_info_get(apc_seg *seg, int table, apc_info *o)
{
    if (apc_bad_table(table) || !o)
        return APC_E_ARG;
    apc_header *h = seg->hdr;
    memset(o, 0, sizeof *o);
    o->format = h->format;
    o->seg_size = h->seg_size;
    o->arena_size = h->arena_size;
    o->create_time = h->create_time;
    o->creator_pid = h->creator_pid;
    o->ttl = h->ttl;
    o->gc_ttl = h->gc_ttl;
    o->num_slots = seg->geom[table].nslots;
    const apc_table_stats *st = &h->stats[table];
    apc_stripe_stats sum = apc_table_sum(seg, table);
    o->num_entries = sum.num_entries;
    o->mem_size = sum.mem_size;
    o->expunges = LOADR(&st->expunges);
    o->evictions = LOADR(&st->evictions);
    o->expired = sum.expired;
    o->start_time = LOADR(&st->start_time);
    for (int i = 0; i < APC_NSTRIPES; i++) {
        o->num_hits += LOADR(&h->stripes[i].hits[table]) + LOADR(&h->hitlogs[i].hits[table]);
        o->num_misses += LOADR(&h->stripes[i].misses[table]);
        o->num_inserts += LOADR(&h->stripes[i].inserts[table]);
        o->corrupt_reads += LOADR(&h->stripes[i].corrupt[table]);
        o->waited_reads += LOADR(&h->stripes[i].waited[table]);
    }
    o->lock_steals = LOADR(&h->alock.steals);
    for (int i = 0; i < APC_NSEQ; i++)
        o->lock_steals += LOADR(&h->bstripes[i].lock.steals);
    o->checksums = seg->checksums;
    o->repairs = LOADR(&h->repairs);
    o->compactions = LOADR(&h->compactions);
    o->wl_hold_max_ns = LOADR(&h->wl_hold_max_ns);
    for (int i = 0; i < APC_NELOCKS; i++)
        o->entry_locks += LOADR(&h->elocks[i].pid) != 0;
    for (int i = 0; i < APC_NPINS; i++)
        o->pins += LOADR(&h->pins[i].pid) > 0;
    o->gc_entries = LOADR(&h->gc_count);
    int pending = 0;
    for (int i = 0; i < APC_NSEQ; i++)
        pending |= LOADR(&h->bstripes[i].lock.pending) != 0;
    if (o->gc_entries || pending) {
        /* The GC list, with what the pending lists would add to it: under
         * the whole lock, which empties them first. */
        int lrc = apc_wl_enter(seg, NO_SEQ);
        if (lrc != APC_OK)
            return lrc;
        uint64_t cap = apc_walk_cap(seg);
        o->gc_entries = 0;
        for (apc_off_t off = h->gc_head; off && --cap;) {
            apc_slot *s = apc_slot_at(seg, off);
            if (!s)
                break;
            if (s->table == table) {
                o->gc_entries++;
                o->gc_mem_size += apc_sma_block_size(seg, off);
                if (!o->gc_oldest || s->mtime < o->gc_oldest) /* the deletion time */
                    o->gc_oldest = s->mtime;
            }
            off = s->next_off;
        }
        apc_wl_leave_ro(seg);
    }
    return APC_OK;
}

int apc_info_get(apc_seg *seg, int table, apc_info *o)
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_info_get(seg, table, o));
}

static int do_sma_info_get(apc_seg *seg, apc_sma_info *o, uint64_t *blocks, uint64_t cap)
{
    if (!o)
        return APC_E_ARG;
    int rc = apc_wl_enter(seg, NO_SEQ);
    if (rc != APC_OK)
        return rc;
    apc_header *h = seg->hdr;
    o->arena_size = h->arena_size;
    o->avail = h->free_bytes;
    o->used = h->arena_size - h->free_bytes;
    o->largest_free = apc_sma_largest_wl(seg);
    o->nfree = h->nfree;
    o->nused = h->nused;
    uint64_t k = 0;
    for (int c = APC_NCLASSES - 1; c >= 0 && blocks; c--) {
        uint64_t walk_cap = apc_walk_cap(seg); /* not nfree: a claim */
        for (apc_off_t b = h->free_head[c]; b && k < cap && walk_cap--;) {
            apc_blk blk;
            apc_off_t next, prev;
            if (!apc_sma_free_ok(seg, b) || apc_blk_at(seg, b, &blk) != APC_BLK_OK)
                break;
            blocks[2 * k] = blk.size;
            blocks[2 * k + 1] = b;
            k++;
            apc_sma_free_links(seg, b, &next, &prev);
            b = next;
        }
    }
    apc_wl_leave_ro(seg);
    return (int)(k > 0x7fffffff ? 0x7fffffff : k);
}

int apc_sma_info_get(apc_seg *seg, apc_sma_info *o, uint64_t *blocks, uint64_t cap)
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_sma_info_get(seg, o, blocks, cap));
}

/* Copy out entries (records followed by their keys) in one lock hold.  If
 * cap is too small, returns APC_E_SMALL with the size needed in buf[0..8). */
static int64_t do_snapshot(apc_seg *seg, int table, uint64_t now, int flags, char *buf, uint64_t cap)
{
    if (apc_bad_table(table) || !buf || cap < 8)
        return APC_E_ARG;
    now = apc_now(now);
    int rc = apc_wl_enter(seg, NO_SEQ);
    if (rc != APC_OK)
        return rc;
    apc_header *h = seg->hdr;
    uint64_t used = 0;
    apc_hitsnap *hs = malloc(sizeof *hs);
    if (hs)
        apc_hitsnap_take(seg, hs);
    /* No more records than blocks: a damaged chain that loops is walked
     * (capped) once, not once per bucket that reaches it. */
    uint64_t left = apc_walk_cap(seg);
    apc_entry_rec r;
#define EMIT(s)                                                              \
    do {                                                                     \
        uint64_t sz = sizeof r + apc_key_pad((s)->key_len);                  \
        left--;                                                              \
        if (used + sz <= cap) {                                              \
            apc_rec_of(seg, (s), now, &r);                                   \
            r.hits = hs ? apc_hitsnap_hits(seg, hs, (s)) : apc_hits_of(seg, (s)); \
            memcpy(buf + used, &r, sizeof r);                                \
            memcpy(buf + used + sizeof r, apc_slot_key(s), (s)->key_len);    \
        }                                                                    \
        used += sz;                                                          \
    } while (0)
    if (flags & APC_SNAP_LIVE) {
        apc_off_t *b = apc_buckets(seg, table);
        for (uint64_t i = 0; i < seg->geom[table].nslots; i++) {
            uint64_t wcap = apc_walk_cap(seg);
            for (apc_off_t off = b[i]; off && --wcap && left;) {
                apc_slot *s = apc_slot_at(seg, off);
                if (!s)
                    break;
                EMIT(s);
                off = s->next_off;
            }
        }
    }
    if (flags & APC_SNAP_DELETED) {
        uint64_t wcap = apc_walk_cap(seg);
        for (apc_off_t off = h->gc_head; off && --wcap && left;) {
            apc_slot *s = apc_slot_at(seg, off);
            if (!s)
                break;
            if (s->table == table)
                EMIT(s);
            off = s->next_off;
        }
    }
#undef EMIT
    apc_wl_leave_ro(seg);
    free(hs);
    if (used > cap) {
        memcpy(buf, &used, sizeof used);
        return APC_E_SMALL;
    }
    return (int64_t)used;
}

int64_t apc_snapshot(apc_seg *seg, int table, uint64_t now, int flags, char *buf, uint64_t cap)
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_snapshot(seg, table, now, flags, buf, cap));
}

/*
 * WALKING A BIG TABLE
 *
 * keys(), info()'s entry list, apcstat and len() visit every entry.  Done
 * in one lock hold, that stalls every writer for the whole walk (half a
 * second at a million entries).  These walk from a bucket cursor instead,
 * holding one bucket's stripe lock at a time (the lock a writer of that
 * bucket takes anyway), and stop after APC_CHUNK_RECORDS entries at a
 * bucket's end, or when the caller's buffer is full: the caller comes back
 * for the rest.  A writer waits at most for one bucket to be copied, and
 * writers of other stripes not at all.  What comes out is a snapshot per
 * bucket, not of the whole table; an entry that moves between buckets
 * cannot exist (a bucket is its key's), so no live entry is reported
 * twice.  An empty bucket is passed over without its lock: an entry that
 * arrives in it a moment later arrived after its snapshot.
 */
#define APC_CHUNK_RECORDS 2048

/* Walk bucket i of table under its stripe's lock, each slot to visit(), at
 * most cap of them.  Returns the slots visited, or a negative apc_rc from
 * the lock. */
typedef void (*walk_fn)(apc_seg *seg, apc_slot *s, void *arg);

static int64_t walk_bucket(apc_seg *seg, int table, uint64_t i, uint64_t cap, walk_fn visit,
                           void *arg)
{
    apc_off_t *b = apc_buckets(seg, table);
    if (!LOAD(&b[i]))
        return 0;
    int stripe = (int)(i % APC_NSEQ), whole;
    int rc = apc_walk_enter(seg, stripe, &whole);
    if (rc != APC_OK)
        return rc;
    int64_t n = 0;
    uint64_t wcap = apc_walk_cap(seg);
    for (apc_off_t off = b[i]; off && --wcap && (uint64_t)n < cap;) {
        apc_slot *s = apc_slot_at(seg, off);
        if (!s)
            break;
        visit(seg, s, arg);
        n++;
        off = s->next_off;
    }
    apc_walk_leave(seg, stripe, whole);
    return n;
}

typedef struct {
    char *buf;
    uint64_t cap, used;
    uint64_t now;
    int full;
    apc_hitsnap *hs; /* NULL: read each entry's hits exactly (apc_hits_of) */
} snap_walk;

static void snap_one(apc_seg *seg, apc_slot *s, void *arg)
{
    snap_walk *w = arg;
    apc_entry_rec r;
    uint64_t sz = sizeof r + apc_key_pad(s->key_len);
    if (!w->full && w->used + sz > w->cap)
        w->full = 1;
    if (!w->full) {
        apc_rec_of(seg, s, w->now, &r);
        r.hits = w->hs ? apc_hitsnap_hits(seg, w->hs, s) : apc_hits_of(seg, s);
        memcpy(w->buf + w->used, &r, sizeof r);
        memcpy(w->buf + w->used + sizeof r, apc_slot_key(s), s->key_len);
    }
    w->used += sz;
}

static int64_t do_snapshot_chunk(apc_seg *seg, int table, uint64_t now, uint64_t cursor[2],
                                 char *buf, uint64_t cap, apc_hitsnap *hs)
{
    if (apc_bad_table(table) || !buf || !cursor || cap < 8)
        return APC_E_ARG;
    snap_walk w = {buf, cap, 0, apc_now(now), 0, hs};
    if (hs)
        apc_hitsnap_take(seg, hs);
    uint64_t nslots = seg->geom[table].nslots;
    uint64_t records = 0, need = 0;
    uint64_t i = cursor[0];
    /* No more records in all than blocks fit in the arena: a damaged chain
     * that loops is walked (capped) once, not once per bucket reaching it. */
    uint64_t cap_all = apc_walk_cap(seg), done = cursor[1] < cap_all ? cursor[1] : cap_all;
    for (; i < nslots && records < APC_CHUNK_RECORDS && done + records < cap_all; i++) {
        uint64_t start = w.used;
        int64_t n = walk_bucket(seg, table, i, cap_all - done - records, snap_one, &w);
        if (n < 0)
            return n;
        if (w.full) {
            if (start == 0)
                need = w.used; /* one bucket alone is more than the buffer */
            w.used = start;   /* this bucket goes in the next chunk */
            break;
        }
        records += (uint64_t)n;
    }
    if (need) {
        memcpy(buf, &need, sizeof need);
        return APC_E_SMALL;
    }
    cursor[0] = done + records >= cap_all ? nslots : i;
    cursor[1] = done + records;
    return (int64_t)w.used;
}

int64_t apc_snapshot_chunk(apc_seg *seg, int table, uint64_t now, uint64_t cursor[2], char *buf,
                           uint64_t cap)
{
    int rc = apc_seg_enter(seg);
    if (rc)
        return rc;
    apc_hitsnap *hs = malloc(sizeof *hs);
    int64_t r = do_snapshot_chunk(seg, table, now, cursor, buf, cap, hs);
    free(hs);
    return apc_seg_leave(seg, r);
}

static void count_one(apc_seg *seg, apc_slot *s, void *arg)
{
    (void)seg;
    uint64_t *c = arg;
    c[1] += !apc_expired(s, c[0]);
}

/* Entries that are not hard-expired at now, from bucket *cursor on, a
 * chunk at a time (see above). */
static int64_t do_count_live_chunk(apc_seg *seg, int table, uint64_t now, uint64_t cursor[2])
{
    if (apc_bad_table(table) || !cursor)
        return APC_E_ARG;
    uint64_t c[2] = {apc_now(now), 0}; /* now, and the live entries seen */
    uint64_t seen = 0, nslots = seg->geom[table].nslots;
    uint64_t cap_all = apc_walk_cap(seg), done = cursor[1] < cap_all ? cursor[1] : cap_all;
    uint64_t i = cursor[0];
    for (; i < nslots && seen < 4 * APC_CHUNK_RECORDS && done + seen < cap_all; i++) {
        int64_t n = walk_bucket(seg, table, i, cap_all - done - seen, count_one, c);
        if (n < 0)
            return n;
        seen += (uint64_t)n;
    }
    cursor[0] = done + seen >= cap_all ? nslots : i;
    cursor[1] = done + seen;
    return (int64_t)c[1];
}

int64_t apc_count_live_chunk(apc_seg *seg, int table, uint64_t now, uint64_t cursor[2])
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_count_live_chunk(seg, table, now, cursor));
}

int apc_counter_stripe(apc_seg *seg)
{
    int rc = apc_seg_enter(seg);
    if (rc != APC_OK)
        return rc;
    return (int)apc_seg_leave(seg, apc_my_stripe(seg) - seg->hdr->stripes);
}
