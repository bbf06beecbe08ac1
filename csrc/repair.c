/*
 * repair.c -- the whole repair: what runs under the whole lock after a
 * holder of a lock died in the middle of the whole lock's work or the
 * allocator's, or when a reader or the allocator found a broken claim.
 */
#include <stdlib.h>
#include "apc_internal.h"
#include "xxh3.h"

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Is this a plausible slot at the payload of a used block? */
static int slot_sane(apc_seg *seg, apc_off_t off, int table, uint64_t bucket)
{
    uint64_t size = apc_sma_used_block(seg, off);
    if (!size || !apc_slot_at(seg, off))
        return 0;
    apc_slot *s = (apc_slot *)APC_PTR(seg, off);
    if (s->val_len > size || apc_sma_block_for(apc_slot_need(s->key_len, s->val_len, s->flags)) > size)
        return 0;
    if ((s->pin & APC_PIN_TAGMASK) != APC_PIN_TAG)
        return 0;
    if (table >= 0 && (s->table != table || (s->flags & APC_SLOT_GC) ||
                       apc_slot_hash64(s) % seg->geom[table].nslots != bucket ||
                       (uint32_t)apc_slot_hash64(s) != s->hash))
        return 0;
    if (table < 0 && (!(s->flags & APC_SLOT_GC) || s->table >= APC_NTABLES))
        return 0;
    return 1;
}

/* Is off in the sorted bad[] list? */
static int is_bad(const uint64_t *bad, uint64_t nbad, apc_off_t off)
{
    return nbad && bsearch(&off, bad, nbad, sizeof *bad, cmp_u64) != NULL;
}

/* The slots that a dead writer was rewriting in place and left with a DEAD
 * pin word (both of its stripe's intents name them): their values may be
 * half written.  Sorted into torn[APC_NSEQ]; returns how many. */
static uint64_t torn_in_place(apc_seg *seg, uint64_t *torn)
{
    uint64_t n = 0;
    for (int i = 0; i < APC_NSEQ; i++) {
        apc_lock *l = &seg->hdr->bstripes[i].lock;
        apc_off_t nw = LOADR(&l->intent_new);
        apc_slot *s = nw && nw == LOADR(&l->intent_old) ? apc_slot_at(seg, nw) : NULL;
        if (s && LOADR(&s->pin) == APC_PIN_DEAD)
            torn[n++] = nw;
    }
    qsort(torn, n, sizeof *torn, cmp_u64);
    return n;
}

/* Walk one chain, truncating it at the first link that fails its checks,
 * and dropping a torn slot alone; append what it keeps to live[]. */
static void collect_chain(apc_seg *seg, apc_off_t *link, int table, uint64_t bucket,
                          const uint64_t *bad, uint64_t nbad, const uint64_t *torn, uint64_t ntorn,
                          apc_off_t *live, uint64_t *nlive, uint64_t max)
{
    uint64_t cap = apc_walk_cap(seg);
    while (*link) {
        apc_off_t off = *link;
        if (--cap == 0 || *nlive >= max || !slot_sane(seg, off, table, bucket) ||
            is_bad(bad, nbad, off)) {
            *link = 0;
            return;
        }
        apc_slot *s = (apc_slot *)APC_PTR(seg, off);
        if (table >= 0 && is_bad(torn, ntorn, off)) {
            *link = s->next_off;
            continue;
        }
        if (table >= 0 && seg->checksums && apc_entry_sum(s, apc_slot_val(s)) != *apc_slot_sum(s)) {
            /* Sound as a structure, but its value was changed: drop it
             * alone (the rebuild frees its block). */
            *link = s->next_off;
            continue;
        }
        live[(*nlive)++] = off;
        link = &s->next_off;
    }
}

/*
 * REPAIR
 *
 * Runs with the whole lock held, after a holder of any lock died in the
 * middle of the whole lock's work or of the allocator's, or when a repair
 * is owed (a reader or the allocator met a broken claim).  It trusts
 * nothing but what it checks:
 *   1. walk every chain and the GC list, cutting each at the first slot
 *      that is not sane (inside the arena, at a used block whose two tags
 *      agree, big enough for its key and value, in the right bucket), and
 *      dropping alone a slot whose writer died rewriting it in place;
 *   2. sort what was reached; where two blocks overlap, mark the later one
 *      bad and walk again (a cut chain loses its tail: lost entries are
 *      acceptable, a corrupt chain is not);
 *   3. rebuild the allocator from the gaps between reachable blocks, which
 *      reclaims anything the dead writer had allocated but not published;
 *   4. recount the stripes' entries and memory, and forget every intent
 *      (what they name is reclaimed or reachable by now).
 * It runs inside a seq-odd section of its own (which nests inside a
 * write section's, for a writer that meets a broken chain); whole_lock
 * evens out a seq that a dead owner left odd.
 * Unreachable blocks that a reader still pins are not reclaimed here: they
 * are put on the GC list, found by walking the arena while its tags hold.
 */
static int repair_wl(apc_seg *seg, uint64_t now);

int apc_repair_wl(apc_seg *seg, uint64_t now)
{
    APC_ASSERT(apc_wl_held(seg));
    apc_seq_begin_wl(seg, APC_SEQ_ALL);
    apc_hits_fold_all_wl(seg); /* the rebuild gives entries new versions */
    int rc = repair_wl(seg, now);
    apc_seq_end_wl(seg, APC_SEQ_ALL);
    return rc;
}

/* Does the header's set-once geometry differ from what this handle
 * validated at attach?  A few loads and compares per write section. */
int apc_geometry_scribbled(const apc_seg *seg)
{
    const apc_header *h = seg->hdr;
    return LOADR(&h->magic) != APC_MAGIC_U64 || h->format != APC_FORMAT ||
           h->seg_size != seg->size || h->arena_off != seg->arena_off ||
           h->arena_size != seg->arena_end - seg->arena_off ||
           h->aux_off != APC_AUX_OFF || h->aux_size != APC_AUX_SIZE ||
           memcmp(h->geom, seg->geom, sizeof h->geom) != 0;
}

/* The header's set-once geometry, as this handle validated it at attach:
 * the engine never reads it again (it uses its own copy), but attachers,
 * apcstat and the checker do, so a scribble on it is put right here. */
static void restore_geometry_wl(apc_seg *seg)
{
    apc_header *h = seg->hdr;
    if (h->format != APC_FORMAT)
        h->format = APC_FORMAT;
    if (h->header_size != sizeof(apc_header))
        h->header_size = sizeof(apc_header);
    if (h->endian != APC_ENDIAN_MARK)
        h->endian = APC_ENDIAN_MARK;
    uint32_t flags = seg->checksums ? APC_FMT_CHECKSUMS : 0;
    if (h->flags != flags)
        h->flags = flags;
    if (h->seg_size != seg->size)
        h->seg_size = seg->size;
    if (h->arena_off != seg->arena_off)
        h->arena_off = seg->arena_off;
    if (h->arena_size != seg->arena_end - seg->arena_off)
        h->arena_size = seg->arena_end - seg->arena_off;
    if (h->aux_off != APC_AUX_OFF)
        h->aux_off = APC_AUX_OFF;
    if (h->aux_size != APC_AUX_SIZE)
        h->aux_size = APC_AUX_SIZE;
    for (int t = 0; t < APC_NTABLES; t++)
        if (memcmp(&h->geom[t], &seg->geom[t], sizeof h->geom[t]) != 0)
            h->geom[t] = seg->geom[t];
    if (LOADR(&h->magic) != APC_MAGIC_U64)
        STORE(&h->magic, APC_MAGIC_U64); /* last, as at create */
}

static int repair_wl(apc_seg *seg, uint64_t now)
{
    apc_header *h = seg->hdr;
    now = apc_now(now);
    h->repairs++;
    restore_geometry_wl(seg);
    uint64_t max = apc_walk_cap(seg);
    apc_off_t *live = malloc(max * sizeof *live);
    uint64_t *bad = NULL, nbad = 0;
    if (!live)
        return APC_E_SYS;
    uint64_t nlive = 0;
    uint64_t torn[APC_NSEQ];
    uint64_t ntorn = torn_in_place(seg, torn);
    for (int pass = 0; pass < 8; pass++) {
        nlive = 0;
        for (int t = 0; t < APC_NTABLES; t++) {
            apc_off_t *b = apc_buckets(seg, t);
            for (uint64_t i = 0; i < seg->geom[t].nslots; i++)
                collect_chain(seg, &b[i], t, i, bad, nbad, torn, ntorn, live, &nlive, max);
        }
        collect_chain(seg, &h->gc_head, -1, 0, bad, nbad, torn, ntorn, live, &nlive, max);
        qsort(live, nlive, sizeof *live, cmp_u64);
        uint64_t newbad = 0;
        for (uint64_t i = 1; i < nlive; i++) {
            apc_off_t prev_end = apc_blk_of(live[i - 1]) + apc_sma_block_size(seg, live[i - 1]);
            if (apc_blk_of(live[i]) < prev_end)
                newbad++;
        }
        if (!newbad)
            break;
        uint64_t *nb = realloc(bad, (nbad + newbad) * sizeof *nb);
        if (!nb)
            break;
        bad = nb;
        for (uint64_t i = 1; i < nlive; i++) {
            apc_off_t prev_end = apc_blk_of(live[i - 1]) + apc_sma_block_size(seg, live[i - 1]);
            if (apc_blk_of(live[i]) < prev_end)
                bad[nbad++] = live[i];
        }
        qsort(bad, nbad, sizeof *bad, cmp_u64);
    }

    /* Pinned but unreachable slots: keep them, on the GC list. */
    uint64_t extra = 0;
    apc_blk blk;
    for (apc_off_t b = seg->arena_off; nlive + extra < max; b += blk.size) {
        if (apc_blk_at(seg, b, &blk) != APC_BLK_OK)
            break; /* the end, or tags no longer trustworthy from here */
        uint64_t size = blk.size;
        apc_off_t off = apc_blk_payload(b);
        if (blk.used && size >= 8 + sizeof(apc_slot) + 16 &&
            !bsearch(&off, live, nlive, sizeof *live, cmp_u64)) {
            apc_slot *s = (apc_slot *)APC_PTR(seg, off);
            uint64_t pw = s->pin;
            if ((pw & APC_PIN_TAGMASK) == APC_PIN_TAG && (pw & ~APC_PIN_REFS) != APC_PIN_DEAD &&
                (pw & APC_PIN_REFS) && s->table < APC_NTABLES) {
                /* Its reader took its lengths when it pinned it; if they no
                 * longer fit the block, make them (the key no longer
                 * matters), so that every walk of the GC list accepts it. */
                unsigned flags = (seg->checksums ? APC_SLOT_SUM : 0) |
                                 (s->type == APC_T_INT ? APC_SLOT_IVAL : 0);
                if (s->val_len > size || s->key_len > size || (s->flags & ~APC_SLOT_GC) != flags ||
                    apc_sma_block_for(apc_slot_need(s->key_len, s->val_len, s->flags)) > size) {
                    s->key_len = 0;
                    s->flags = flags;
                    s->val_len = (uint32_t)(size - 8 - sizeof(apc_slot) - apc_slot_ext_of(flags));
                }
                s->flags = (s->flags | APC_SLOT_GC) & ~APC_SLOT_PENDING & 63;
                s->mtime = (uint32_t)now; /* its deletion time */
                s->next_off = h->gc_head;
                h->gc_head = off;
                live[nlive + extra++] = off;
            }
        }
    }
    nlive += extra;

    if (apc_sma_rebuild_wl(seg, live, nlive) != APC_OK) {
        /* Overlaps survived eight passes: drop every entry. */
        for (int t = 0; t < APC_NTABLES; t++)
            memset(apc_buckets(seg, t), 0, seg->geom[t].nslots * sizeof(apc_off_t));
        h->gc_head = 0;
        apc_sma_init_wl(seg);
        nlive = 0;
    }

    /* Recount; nothing is left in flight. */
    for (int i = 0; i < APC_NSEQ; i++) {
        apc_bstripe *bs = &h->bstripes[i];
        memset(bs->st, 0, sizeof bs->st);
        bs->lock.pending = 0; /* unreachable: freed by the rebuild, or kept on the GC list */
        bs->lock.npending = 0;
        STORER(&bs->lock.intent_new, 0);
        STORER(&bs->lock.intent_old, 0);
    }
    h->gc_count = 0;
    for (uint64_t i = 0; i < nlive; i++) {
        apc_slot *s = (apc_slot *)APC_PTR(seg, live[i]);
        if (s->flags & APC_SLOT_GC) {
            h->gc_count++;
        } else {
            /* Retired for a move that never happened: live again. */
            if ((s->pin & ~APC_PIN_REFS) == APC_PIN_DEAD) {
                s->pin = apc_fresh_pin(h);
            }
            apc_stripe_stats *st = apc_stats_of(seg, s->table, apc_slot_hash64(s));
            st->num_entries++;
            st->mem_size += apc_sma_block_size(seg, live[i]);
        }
    }
    STORER(&h->repair_due, 0);
    free(live);
    free(bad);
    return APC_OK;
}
