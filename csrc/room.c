/*
 * room.c -- making room: the sweeps of expired entries, eviction, and the
 * compaction that moves entries so that free space becomes one block.  It
 * rewrites chains, so it sits above the allocator (sma.c moves the blocks;
 * this file says which may move and relinks them).  Every function here
 * runs under the whole lock.
 */
#include <stdlib.h>
#include "apc_internal.h"

/* What compaction may move: a slot on no list that nobody pins, with the
 * link that points at it; its pin word is retired (no reader can pin it
 * mid-move). */
static apc_off_t *take_for_move(apc_seg *seg, apc_off_t payload)
{
    apc_slot *s = (apc_slot *)APC_PTR(seg, payload);
    uint64_t pw = LOAD(&s->pin);
    apc_off_t *link;
    if (!apc_slot_movable_wl(seg, s) || (pw & APC_PIN_REFS) ||
        !(link = apc_find_link_locked(seg, payload)) || !CAS(&s->pin, &pw, APC_PIN_DEAD))
        return NULL;
    return link;
}

/* At its new place it gets a fresh version: a reader holding the old word
 * fails its CAS and looks again. */
static void moved(apc_seg *seg, apc_off_t *link, apc_off_t payload)
{
    apc_slot *s = (apc_slot *)APC_PTR(seg, payload);
    STORE(&s->pin, apc_fresh_pin(seg->hdr));
    STORE(link, payload);
}

static const apc_mover mover = {take_for_move, moved};

/* The hit logs name entries by place and version: fold them before any
 * entry moves (every stripe is odd here, so no hit is noted meanwhile). */
static int compact_wl(apc_seg *seg)
{
    apc_hits_fold_all_wl(seg);
    return apc_sma_compact_wl(seg, &mover);
}

typedef struct cand {
    uint64_t atime;
    apc_off_t off;
} cand;

static int cmp_cand(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->atime != y->atime)
        return x->atime < y->atime ? -1 : 1;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* Remove every entry of every table that pred() selects; returns how many. */
static uint64_t sweep_wl(apc_seg *seg, uint64_t now, int (*pred)(apc_seg *, apc_slot *, uint64_t))
{
    APC_ASSERT(apc_wl_held(seg));
    uint64_t n = 0;
    for (int t = 0; t < APC_NTABLES; t++) {
        apc_off_t *b = apc_buckets(seg, t);
        for (uint64_t i = 0; i < seg->geom[t].nslots; i++) {
            apc_off_t *link = &b[i];
            uint64_t cap = apc_walk_cap(seg);
            while (*link && --cap) {
                apc_slot *s = apc_slot_at(seg, *link);
                if (!s)
                    break;
                if (pred(seg, s, now)) {
                    apc_remove_wl(seg, link, s, now);
                    n++;
                } else {
                    link = &s->next_off;
                }
            }
        }
    }
    return n;
}

static int pred_hard_expired(apc_seg *seg, apc_slot *s, uint64_t now)
{
    if (!apc_expired(s, now))
        return 0;
    apc_stats_of(seg, s->table, apc_slot_hash64(s))->expired++;
    return 1;
}

static int pred_soft_expired(apc_seg *seg, apc_slot *s, uint64_t now)
{
    uint64_t ttl = seg->hdr->ttl;
    uint64_t atime = LOADR(&s->atime);
    if (s->ttl || !ttl || now <= atime || now - atime <= ttl || (LOADR(&s->pin) & APC_PIN_REFS))
        return 0;
    seg->hdr->stats[s->table].evictions++;
    return 1;
}

static int fits_wl(apc_seg *seg, uint64_t want)
{
    return apc_sma_largest_wl(seg) >= want;
}

/*
 * EVICTION
 *
 * Called when an allocation of `need` bytes failed.  In order, stopping as
 * soon as a block of the size exists:
 *   1. free what the GC list no longer needs;
 *   2. remove hard-expired entries (ttl > 0, past creation + ttl);
 *   3. remove soft-expired ones (no own ttl, not read for the cache's ttl);
 *   4. if the free space is enough but split up, compact;
 *   5. evict live entries, least recently used first, until the free space
 *      is enough plus 1/64 of the arena (so that a full cache does not scan
 *      on every store), then compact if still split up.
 * Steps 2, 3 and 5 visit every slot once; step 5 sorts the unpinned live
 * entries by atime, which has one-second resolution: entries read in the
 * same second go in arena order, so the LRU is exact to the second.
 * Pinned entries are never evicted.  It never empties the cache to make
 * room: it evicts only until the request fits.
 */
int apc_make_room_wl(apc_seg *seg, uint64_t need, uint64_t now, int table)
{
    APC_ASSERT(apc_wl_held(seg));
    apc_header *h = seg->hdr;
    uint64_t want = apc_sma_block_for(need);
    apc_gc_sweep_al(seg, now);
    if (fits_wl(seg, want))
        return APC_OK;
    sweep_wl(seg, now, pred_hard_expired);
    if (fits_wl(seg, want))
        return APC_OK;
    uint64_t soft = sweep_wl(seg, now, pred_soft_expired);
    if (soft)
        h->stats[table].expunges++;
    if (fits_wl(seg, want))
        return APC_OK;
    if (h->free_bytes >= want) {
        APC_FAULT("evict.before_compact");
        compact_wl(seg);
        if (fits_wl(seg, want))
            return APC_OK;
    }

    /* The header's entry counts are claims: no more entries than blocks
     * can exist, and n * sizeof *c must not wrap. */
    uint64_t n = 0, most = apc_walk_cap(seg);
    for (int t = 0; t < APC_NTABLES; t++) {
        uint64_t e = apc_table_sum(seg, t).num_entries;
        n += e < most ? e : most;
    }
    if (n > most)
        n = most;
    cand *c = n ? malloc(n * sizeof *c) : NULL;
    uint64_t k = 0;
    if (c) {
        for (int t = 0; t < APC_NTABLES; t++) {
            apc_off_t *b = apc_buckets(seg, t);
            for (uint64_t i = 0; i < seg->geom[t].nslots; i++) {
                uint64_t cap = apc_walk_cap(seg);
                for (apc_off_t off = b[i]; off && --cap && k < n;) {
                    apc_slot *s = apc_slot_at(seg, off);
                    if (!s)
                        break;
                    if (!(LOADR(&s->pin) & APC_PIN_REFS))
                        c[k++] = (cand){LOADR(&s->atime), off};
                    off = s->next_off;
                }
            }
        }
        qsort(c, k, sizeof *c, cmp_cand);
    }
    uint64_t slack = (seg->arena_end - seg->arena_off) / 64;
    uint64_t evicted = 0;
    int rc = APC_E_NOMEM;
    for (uint64_t i = 0; i < k; i++) {
        apc_off_t *link = apc_find_link_locked(seg, c[i].off);
        if (!link)
            continue;
        apc_slot *s = (apc_slot *)APC_PTR(seg, c[i].off);
        h->stats[s->table].evictions++;
        apc_remove_wl(seg, link, s, now);
        APC_FAULT("evict.after_remove");
        evicted++;
        if (h->free_bytes < want + slack && i + 1 < k)
            continue;
        if (!fits_wl(seg, want))
            compact_wl(seg);
        if (fits_wl(seg, want)) {
            rc = APC_OK;
            break;
        }
    }
    free(c);
    if (rc != APC_OK && h->free_bytes >= want) {
        compact_wl(seg);
        if (fits_wl(seg, want))
            rc = APC_OK;
    }
    if (evicted)
        h->stats[table].expunges++;
    return rc;
}
