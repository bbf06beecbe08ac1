/*
 * sma.c -- the shared-memory block allocator.
 *
 * The arena is a run of blocks, 8-byte aligned, each a multiple of 8
 * bytes and at least APC_BLOCK_MIN.  Every block starts with a header
 * word: its size, with
 *
 *   bit 0  USED       the block holds an entry;
 *   bit 1  PREV_USED  the block before it is used (or it is the first).
 *
 * A used block is [header | payload]: the payload (exactly one slot, an
 * entry; nothing else is ever allocated here) runs to the block's end.  A
 * free block is [header | next | prev | ... | footer], the footer a copy
 * of the header, so that the block after it finds it (through its own
 * PREV_USED bit being clear) in O(1).  Two free neighbours always coalesce
 * on free: the arena never holds two free blocks side by side, so a free
 * block's PREV_USED bit is always set.
 *
 * Only this file knows the tag bits: everything else decodes blocks with
 * apc_blk_at() and apc_sma_used_block() (apc_internal.h).
 *
 * Free blocks sit on one of 64 segregated lists, four per power of two
 * from 32 bytes to 1 MiB, the last list taking everything larger.  A bitmap
 * says which lists are non-empty, so finding a fit costs a few bit
 * operations and a short scan:
 *
 *   - the request's own class is scanned for the best of its first eight
 *     fitting blocks;
 *   - failing that, the head of the next non-empty class is taken: every
 *     block there is larger than anything the request's class holds, so
 *     the fit is good to within a quarter of a power of two.
 *
 * The big free block a fresh arena starts as lives in the top class, so it
 * is always found by the bitmap, and apc_sma_largest_wl() only scans that
 * one list.
 *
 * WHAT IT DOES NOT DO
 *
 * It never trusts itself after a crash: when a writer dies inside it, the
 * repair throws the lists away and rebuilds every free block from the gaps
 * between reachable entries (apc_sma_rebuild_wl).  It does not move used
 * blocks except in apc_sma_compact_wl, which runs only when free space is
 * enough for a request but no single block is.
 *
 * Every function here expects alock held, or the whole lock (suffix _wl).
 */
#include <stdlib.h>
#include "apc_internal.h"

#define USED 1ULL
#define PREV_USED 2ULL
#define BSIZE(w) ((w) & ~7ULL)

typedef struct free_links {
    apc_off_t next; /* block offsets, 0 = end */
    apc_off_t prev;
} free_links;

static inline uint64_t *tag_at(const apc_seg *seg, apc_off_t b) { return (uint64_t *)APC_PTR(seg, b); }
static inline free_links *links_at(const apc_seg *seg, apc_off_t b) { return (free_links *)APC_PTR(seg, b + 8); }

/* A free block as found through a list link or a neighbour's tag: aligned,
 * inside the arena, not in use, header and footer agreeing. */
static int free_block_ok(const apc_seg *seg, apc_off_t b)
{
    if (!b || (b & 7) || !apc_in_arena(seg, b, APC_BLOCK_MIN))
        return 0;
    uint64_t w = *tag_at(seg, b);
    uint64_t size = BSIZE(w);
    return !(w & USED) && size >= APC_BLOCK_MIN && apc_in_arena(seg, b, size) &&
           *tag_at(seg, b + size - 8) == w;
}

/* ------------------------------------------------- the format, for others */

int apc_blk_at(const apc_seg *seg, apc_off_t b, apc_blk *out)
{
    if (b == seg->arena_end)
        return APC_BLK_END;
    if ((b & 7) || !apc_in_arena(seg, b, APC_BLOCK_MIN))
        return APC_BLK_BADSIZE;
    uint64_t w = *tag_at(seg, b);
    out->b = b;
    out->size = BSIZE(w);
    out->used = (w & USED) != 0;
    out->prev_used = (w & PREV_USED) != 0;
    if (out->size < APC_BLOCK_MIN || out->size > seg->arena_end - b)
        return APC_BLK_BADSIZE;
    if (!out->used && *tag_at(seg, b + out->size - 8) != w)
        return APC_BLK_BADFOOTER;
    return APC_BLK_OK;
}

uint64_t apc_sma_used_block(const apc_seg *seg, apc_off_t payload)
{
    apc_off_t b = payload - 8;
    if ((payload & 7) || payload < seg->arena_off + 8 || !apc_in_arena(seg, b, APC_BLOCK_MIN))
        return 0;
    uint64_t w = *tag_at(seg, b);
    uint64_t size = BSIZE(w);
    if (!(w & USED) || size < APC_BLOCK_MIN || size > seg->arena_end - b)
        return 0;
    if (b + size < seg->arena_end && !(*tag_at(seg, b + size) & PREV_USED))
        return 0; /* the next block does not know this one is used */
    return size;
}

uint64_t apc_sma_used_size(const apc_seg *seg, apc_off_t payload)
{
    apc_off_t b = payload - 8;
    if ((payload & 7) || payload < seg->arena_off + 8)
        return 0;
    uint64_t w = LOADR(tag_at(seg, b));
    uint64_t size = BSIZE(w);
    if (!(w & USED) || size < APC_BLOCK_MIN || size > seg->arena_end - b)
        return 0;
    return size;
}

int apc_sma_free_ok(const apc_seg *seg, apc_off_t b) { return free_block_ok(seg, b); }

void apc_sma_free_links(const apc_seg *seg, apc_off_t b, apc_off_t *next, apc_off_t *prev)
{
    free_links *l = links_at(seg, b);
    *next = l->next;
    *prev = l->prev;
}

/* ---------------------------------------------------------------- inside */

/* The allocator found a bad link or tag: the next holder of the whole lock
 * rebuilds it from the reachable entries (the same repair as after a
 * crash).  Until then what is asked of it fails safe: an allocation finds
 * nothing, a free leaves its block to the rebuild. */
static void corrupt_wl(apc_seg *seg)
{
    apc_repair_later(seg);
}

/* Set or clear the PREV_USED bit of the used block at b (if there is
 * one; a free block's bit is always set, in both of its tags). */
static void set_prev_used(apc_seg *seg, apc_off_t b, int used)
{
    if (b >= seg->arena_end)
        return;
    uint64_t *t = tag_at(seg, b);
    if (*t & USED)
        *t = used ? (*t | PREV_USED) : (*t & ~PREV_USED);
}

/* Tag [b, b+size) free (after a used block), without listing it: for
 * compaction, so that the arena stays walkable after every move. */
static void tag_free(apc_seg *seg, apc_off_t b, uint64_t size)
{
    *tag_at(seg, b) = size | PREV_USED;
    *tag_at(seg, b + size - 8) = size | PREV_USED;
}

/* A used block's header; the block after it is told by set_prev_used. */
static void set_used(apc_seg *seg, apc_off_t b, uint64_t size, int prev_used)
{
    *tag_at(seg, b) = size | USED | (prev_used ? PREV_USED : 0);
}

uint64_t apc_sma_block_for(uint64_t need)
{
    uint64_t b = (need + 8 + (APC_ALIGN - 1)) & ~(uint64_t)(APC_ALIGN - 1);
    return b < APC_BLOCK_MIN ? APC_BLOCK_MIN : b;
}

/* Push a free block on its class's list.  The list's head is a claim
 * read from the segment: if it is not a free block, nothing is written
 * through it and APC_E_CORRUPT says the lists need the rebuild. */
static int list_push(apc_seg *seg, apc_off_t b, uint64_t size)
{
    apc_header *h = seg->hdr;
    unsigned c = apc_class_of(size);
    apc_off_t head = h->free_head[c];
    if (head && (head == b || !free_block_ok(seg, head)))
        return APC_E_CORRUPT;
    free_links *l = links_at(seg, b);
    l->prev = 0;
    l->next = head;
    if (head)
        links_at(seg, head)->prev = b;
    h->free_head[c] = b;
    h->free_map |= 1ULL << c;
    h->free_bytes += size;
    h->nfree++;
    return APC_OK;
}

static int list_remove(apc_seg *seg, apc_off_t b, uint64_t size)
{
    apc_header *h = seg->hdr;
    unsigned c = apc_class_of(size);
    free_links *l = links_at(seg, b);
    if ((l->prev && !free_block_ok(seg, l->prev)) || (l->next && !free_block_ok(seg, l->next)) ||
        (!l->prev && h->free_head[c] != b))
        return APC_E_CORRUPT;
    if (l->prev)
        links_at(seg, l->prev)->next = l->next;
    else
        h->free_head[c] = l->next;
    if (l->next)
        links_at(seg, l->next)->prev = l->prev;
    if (!h->free_head[c])
        h->free_map &= ~(1ULL << c);
    h->free_bytes -= size;
    h->nfree--;
    return APC_OK;
}

static void reset_lists(apc_seg *seg)
{
    apc_header *h = seg->hdr;
    memset(h->free_head, 0, sizeof h->free_head);
    h->free_map = 0;
    h->free_bytes = 0;
    h->nfree = 0;
    h->nused = 0;
}

/* Make [b, b+size) one free block: tags (the block before it is used: free
 * blocks are always coalesced), the next block's PREV_USED bit, poison,
 * list.  APC_E_CORRUPT if its list's head was bad (the block is then
 * tagged free but not listed: the caller has the lists rebuilt). */
static int make_free(apc_seg *seg, apc_off_t b, uint64_t size)
{
    uint64_t w = size | PREV_USED;
    *tag_at(seg, b) = w;
    *tag_at(seg, b + size - 8) = w;
    set_prev_used(seg, b + size, 0);
#ifdef APC_DEBUG
    if (size > 32)
        memset((char *)APC_PTR(seg, b) + 8 + sizeof(free_links), 0xDB, size - 16 - sizeof(free_links));
#endif
    return list_push(seg, b, size);
}

void apc_sma_init_wl(apc_seg *seg)
{
    reset_lists(seg);
    (void)make_free(seg, seg->arena_off, seg->arena_end - seg->arena_off); /* empty lists */
}

static apc_off_t alloc_wl(apc_seg *seg, uint64_t need);

apc_off_t apc_sma_alloc_wl(apc_seg *seg, uint64_t need)
{
    APC_ASSERT(apc_al_held(seg));
    apc_off_t off = alloc_wl(seg, need);
    if (off == 1) { /* a bad link: rebuild, then try once more */
        corrupt_wl(seg);
        off = alloc_wl(seg, need);
    }
    if (off == 1)
        return 0;
    /* What it hands out is a used block that holds the request, and the
     * free space it counts fits in the arena. */
    APC_ASSERT(!off || apc_sma_used_block(seg, off) >= apc_sma_block_for(need));
    APC_ASSERT(seg->hdr->free_bytes <= seg->arena_end - seg->arena_off);
    return off;
}

/* 0: no fit; 1: a bad link or tag was found; otherwise the payload. */
static apc_off_t alloc_wl(apc_seg *seg, uint64_t need)
{
    apc_header *h = seg->hdr;
    uint64_t want = apc_sma_block_for(need);
    if (want > seg->arena_end - seg->arena_off)
        return 0;
    unsigned c = apc_class_of(want);
    apc_off_t best = 0;
    uint64_t best_size = 0;

    /* The request's own class: best of the first few fits (all of the top
     * class, which has no upper bound).  The walk is capped: a list with
     * more links than the arena has blocks has a cycle. */
    unsigned scan = (c == APC_NCLASSES - 1) ? ~0u : 8u;
    uint64_t cap = apc_walk_cap(seg);
    for (apc_off_t b = h->free_head[c]; b && scan; b = links_at(seg, b)->next) {
        if (!free_block_ok(seg, b) || --cap == 0)
            return 1;
        uint64_t sz = BSIZE(*tag_at(seg, b));
        if (sz >= want && (!best || sz < best_size)) {
            best = b;
            best_size = sz;
            if (sz == want)
                break;
            scan--;
        }
    }
    if (!best && c < APC_NCLASSES - 1) {
        uint64_t above = h->free_map & ~((2ULL << c) - 1);
        if (above) {
            unsigned c2 = (unsigned)__builtin_ctzll(above);
            best = h->free_head[c2];
            if (!free_block_ok(seg, best))
                return 1;
            best_size = BSIZE(*tag_at(seg, best));
        }
    }
    if (!best)
        return 0;

    if (list_remove(seg, best, best_size) != APC_OK)
        return 1;
    APC_FAULT("alloc.mid_split");
    if (best_size - want >= APC_BLOCK_MIN) {
        set_used(seg, best, want, 1);
        /* A bad head here: the block is not handed out (nothing reaches
         * it, so the rebuild frees it again) and the caller rebuilds. */
        if (make_free(seg, best + want, best_size - want) != APC_OK)
            return 1;
    } else {
        set_used(seg, best, best_size, 1);
        set_prev_used(seg, best + best_size, 1);
    }
    h->nused++;
    return best + 8;
}

uint64_t apc_sma_block_size(apc_seg *seg, apc_off_t payload)
{
    return BSIZE(*tag_at(seg, payload - 8));
}

void apc_sma_free_wl(apc_seg *seg, apc_off_t payload)
{
    APC_ASSERT(apc_al_held(seg));
    apc_header *h = seg->hdr;
    apc_off_t b = payload - 8;
    uint64_t w0 = *tag_at(seg, b);
    uint64_t size = apc_sma_used_block(seg, payload);
    APC_ASSERT(w0 & USED);
    if (!size) {
        corrupt_wl(seg); /* the block is unreachable already: the rebuild frees it */
        return;
    }
    APC_FAULT("free.before_coalesce");
    h->nused--;

    apc_off_t next = b + size;
    if (next < seg->arena_end) {
        uint64_t w = *tag_at(seg, next);
        if (!(w & USED)) {
            if (!free_block_ok(seg, next) || list_remove(seg, next, BSIZE(w)) != APC_OK) {
                corrupt_wl(seg);
                return;
            }
            size += BSIZE(w);
            APC_FAULT("free.mid_coalesce");
        }
    }
    if (b > seg->arena_off && !(w0 & PREV_USED)) {
        uint64_t w = *tag_at(seg, b - 8); /* the free block before: its footer */
        apc_off_t prev = b - BSIZE(w);
        if (BSIZE(w) > b - seg->arena_off || !free_block_ok(seg, prev) ||
            *tag_at(seg, prev) != w || list_remove(seg, prev, BSIZE(w)) != APC_OK) {
            corrupt_wl(seg);
            return;
        }
        size += BSIZE(w);
        b = prev;
    }
    if (make_free(seg, b, size) != APC_OK)
        corrupt_wl(seg); /* b is unreachable: the rebuild lists it */
}

uint64_t apc_sma_largest_wl(apc_seg *seg)
{
    APC_ASSERT(apc_al_held(seg));
    apc_header *h = seg->hdr;
    if (!h->free_map)
        return 0;
    unsigned c = 63u - (unsigned)__builtin_clzll(h->free_map);
    uint64_t best = 0;
    uint64_t cap = apc_walk_cap(seg); /* not nfree: a count read from the segment */
    for (apc_off_t b = h->free_head[c]; b && cap--; b = links_at(seg, b)->next) {
        if (!free_block_ok(seg, b))
            break;
        uint64_t sz = BSIZE(*tag_at(seg, b));
        if (sz > best)
            best = sz;
    }
    return best;
}

static int cmp_off(const void *a, const void *b)
{
    apc_off_t x = *(const apc_off_t *)a, y = *(const apc_off_t *)b;
    return x < y ? -1 : x > y;
}

/*
 * Rebuild every free block from the gaps between the live blocks.  live[]
 * holds slot (payload) offsets whose block headers the caller has checked;
 * it is sorted here.  Used after a crash, when the lists cannot be trusted.
 */
int apc_sma_rebuild_wl(apc_seg *seg, apc_off_t *live, uint64_t nlive)
{
    APC_ASSERT(apc_wl_held(seg));
    qsort(live, nlive, sizeof *live, cmp_off);
    reset_lists(seg);
    apc_off_t cursor = seg->arena_off;
    for (uint64_t i = 0; i < nlive; i++) {
        apc_off_t b = live[i] - 8;
        uint64_t size = BSIZE(*tag_at(seg, b));
        if (b < cursor)
            return APC_E_CORRUPT; /* overlap: the caller drops one */
        int gap = b > cursor;
        if (gap)
            (void)make_free(seg, cursor, b - cursor); /* lists reset: heads are ours */
        set_used(seg, b, size, !gap);
        seg->hdr->nused++;
        cursor = b + size;
    }
    if (cursor < seg->arena_end)
        (void)make_free(seg, cursor, seg->arena_end - cursor);
    return APC_OK;
}

/*
 * COMPACTION
 *
 * Slide every movable used block down towards the start of the arena so
 * that the free space becomes one block at the end.  A block is movable
 * unless it is pinned or waits on the GC list.  Before a block moves, its
 * pin word is retired by CAS (no reader can pin it mid-move); at its new
 * place it gets a fresh version, so a reader holding the old word fails
 * its CAS and looks again.  The one link that points at the slot (a bucket
 * head or the previous slot's next_off) is rewritten after the copy.
 *
 * The caller holds the whole lock and has made seq odd, so no optimistic reader
 * trusts anything it reads meanwhile.  Work: one pass over the arena, plus
 * one chain walk per moved block, then one pass that relists the free
 * space and merges what touches.
 *
 * WHAT IF THE WRITER DIES HALF WAY?  After every move the space between
 * the moved block's new end and the next block is tagged free, and the
 * next block's PREV_USED bit says so: the arena stays a sound run of
 * blocks (free ones not listed, perhaps side by side), which the repair's
 * checks accept and its rebuild relists.  A slot whose copy had begun may
 * be garbage at its old place with its link still pointing there; the
 * repair drops it (a lost entry) and rebuilds the free space.
 */
int apc_sma_compact_wl(apc_seg *seg, const apc_mover *m)
{
    APC_ASSERT(apc_wl_held(seg));
    apc_header *h = seg->hdr;
    apc_off_t cursor = seg->arena_off;
    apc_off_t b = seg->arena_off;
    h->compactions++;
    while (b < seg->arena_end) {
        uint64_t w = *tag_at(seg, b);
        uint64_t size = BSIZE(w);
        if (size < APC_BLOCK_MIN || size > seg->arena_end - b) {
            corrupt_wl(seg); /* what moved so far is linked; the rest is rebuilt */
            return APC_E_CORRUPT;
        }
        if (!(w & USED)) {
            b += size;
            continue;
        }
        apc_off_t *link = cursor < b ? m->take(seg, b + 8) : NULL;
        if (!link) {
            if (cursor < b)
                tag_free(seg, cursor, b - cursor); /* a gap, listed below */
            *tag_at(seg, b) = cursor < b ? (w & ~PREV_USED) : (w | PREV_USED);
            cursor = b + size;
            b += size;
            continue;
        }
        APC_FAULT("compact.before_move");
#ifdef APC_DEBUG
        /* The same copy in two halves, to die with the slot half moved. */
        memmove(APC_PTR(seg, cursor), APC_PTR(seg, b), size / 2);
        APC_FAULT("compact.mid_move");
        memmove(APC_PTR(seg, cursor + size / 2), APC_PTR(seg, b + size / 2), size - size / 2);
#else
        memmove(APC_PTR(seg, cursor), APC_PTR(seg, b), size);
#endif
        set_used(seg, cursor, size, 1); /* what lies before it is used */
        m->moved(seg, link, cursor + 8);
        cursor += size;
        b += size;
        /* The space it left (b - cursor: the free space met so far, so at
         * least one free block's worth) is free until the next move. */
        tag_free(seg, cursor, b - cursor);
        set_prev_used(seg, b, 0);
        APC_FAULT("compact.after_move");
    }
    if (cursor < seg->arena_end)
        tag_free(seg, cursor, seg->arena_end - cursor);

    /* Relist the free blocks, merging those that now touch, and set every
     * used block's PREV_USED bit. */
    reset_lists(seg);
    b = seg->arena_off;
    int prev_used = 1;
    while (b < seg->arena_end) {
        uint64_t w = *tag_at(seg, b);
        if (w & USED) {
            set_used(seg, b, BSIZE(w), prev_used);
            h->nused++;
            prev_used = 1;
            b += BSIZE(w);
            continue;
        }
        apc_off_t start = b;
        while (b < seg->arena_end && !(*tag_at(seg, b) & USED))
            b += BSIZE(*tag_at(seg, b));
        (void)make_free(seg, start, b - start); /* lists reset: heads are ours */
        prev_used = 0;
    }
    return APC_OK;
}
