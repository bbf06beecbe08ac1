/*
 * check.c -- the integrity checker.
 *
 * apc_check() walks every block of the arena, every free list, every chain
 * of both tables and the GC list, and reports each broken invariant as one
 * line of text ("slot 0x3a48 in bucket 17 of table 0 hashes to bucket 9").
 * It takes every lock (so a repair, if one is due, runs first), and it
 * never follows an offset it has not bounds-checked, so it works on a
 * segment in any state.
 *
 * The invariants:
 *   - seq is even while nobody holds the lock;
 *   - the arena is an exact run of blocks, each free block's two tags
 *     agree, each block's PREV_USED bit says what the block before it is,
 *     and no two free blocks are neighbours;
 *   - used + free == arena size, and the header's free byte and block
 *     counts agree with the walk;
 *   - every free block is on the list of its size class exactly once, the
 *     lists are doubly linked consistently, and the class bitmap matches;
 *   - every chain link is the payload of a used block, in the bucket its
 *     hash says, of the table it is in, with no cycle;
 *   - every used block is reached exactly once, from a chain or the GC
 *     list (no leak, no sharing);
 *   - each table's entry count and memory size match its chains.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include "apc_internal.h"

typedef struct report {
    char *buf;
    uint64_t cap;
    uint64_t used;
    int64_t count;
} report;

__attribute__((format(printf, 2, 3))) static void say(report *r, const char *fmt, ...)
{
    r->count++;
    if (!r->buf || r->used + 2 >= r->cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(r->buf + r->used, r->cap - r->used - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    r->used += (uint64_t)n < r->cap - r->used - 1 ? (uint64_t)n : r->cap - r->used - 2;
    r->buf[r->used++] = '\n';
    r->buf[r->used] = 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

#define MAX_REPORTED 64

static void check_wl(apc_seg *seg, report *r)
{
    APC_ASSERT(apc_wl_held(seg));
    apc_header *h = seg->hdr;
    uint64_t cap = apc_walk_cap(seg);

    for (int i = 0; i < APC_NSEQ; i++)
        if (LOADR(&h->bstripes[i].lock.seq) & 1)
            say(r, "seq stripe %d is odd (%llu) while no writer holds the lock", i,
                (unsigned long long)h->bstripes[i].lock.seq);

    /* 1. The arena walk. */
    uint64_t *used = malloc(cap * sizeof *used), nused = 0;
    uint64_t free_bytes = 0, used_bytes = 0, nfree = 0;
    if (!used) {
        say(r, "out of memory while checking");
        return;
    }
    apc_off_t b = seg->arena_off;
    int prev_free = 0;
    apc_blk blk;
    for (int rc; (rc = apc_blk_at(seg, b, &blk)) != APC_BLK_END; b += blk.size) {
        uint64_t size = blk.size;
        if (rc == APC_BLK_BADSIZE) {
            say(r, "block at 0x%llx has size %llu, outside the arena", (unsigned long long)b,
                (unsigned long long)size);
            break;
        }
        if (rc == APC_BLK_BADFOOTER)
            say(r, "block at 0x%llx: free, but its header and footer tags differ",
                (unsigned long long)b);
        if (blk.prev_used != !prev_free)
            say(r, "block at 0x%llx: its header says the block before it is %s, but it is %s",
                (unsigned long long)b, blk.prev_used ? "used" : "free", prev_free ? "free" : "used");
        if (blk.used) {
            used_bytes += size;
            if (nused < cap)
                used[nused++] = apc_blk_payload(b);
            prev_free = 0;
        } else {
            if (prev_free)
                say(r, "free block at 0x%llx follows another free block (not coalesced)",
                    (unsigned long long)b);
            free_bytes += size;
            nfree++;
            prev_free = 1;
        }
    }
    if (b == seg->arena_end && used_bytes + free_bytes != h->arena_size)
        say(r, "used + free == arena size fails: %llu + %llu != %llu",
            (unsigned long long)used_bytes, (unsigned long long)free_bytes,
            (unsigned long long)h->arena_size);
    if (b == seg->arena_end && (free_bytes != h->free_bytes || nfree != h->nfree ||
                                nused != h->nused))
        say(r, "allocator counts are off: header says %llu free bytes in %llu blocks and %llu "
               "used blocks, the walk finds %llu in %llu and %llu",
            (unsigned long long)h->free_bytes, (unsigned long long)h->nfree,
            (unsigned long long)h->nused, (unsigned long long)free_bytes,
            (unsigned long long)nfree, (unsigned long long)nused);

    /* 2. The free lists. */
    uint64_t listed = 0;
    for (unsigned c = 0; c < APC_NCLASSES; c++) {
        int nonempty = h->free_head[c] != 0;
        if (nonempty != !!(h->free_map & (1ULL << c)))
            say(r, "free class %u: bitmap bit is %d but the list is %s", c,
                !!(h->free_map & (1ULL << c)), nonempty ? "non-empty" : "empty");
        apc_off_t prev = 0;
        uint64_t wcap = cap;
        apc_off_t next = 0, back = 0;
        for (apc_off_t f = h->free_head[c]; f; f = next) {
            if (--wcap == 0) {
                say(r, "free class %u: the list has a cycle", c);
                break;
            }
            apc_blk fb;
            int frc = apc_blk_at(seg, f, &fb);
            if (frc == APC_BLK_END || ((f & 7) || !apc_in_arena(seg, f, APC_BLOCK_MIN))) {
                say(r, "free class %u: link 0x%llx is outside the arena", c, (unsigned long long)f);
                break;
            }
            if (fb.used)
                say(r, "free class %u: block 0x%llx on the list is in use", c, (unsigned long long)f);
            if (frc == APC_BLK_BADSIZE)
                say(r, "free class %u: block 0x%llx has size %llu", c, (unsigned long long)f,
                    (unsigned long long)fb.size);
            else if (apc_class_of(fb.size) != c)
                say(r, "free class %u: block 0x%llx of %llu bytes belongs to class %u", c,
                    (unsigned long long)f, (unsigned long long)fb.size, apc_class_of(fb.size));
            apc_sma_free_links(seg, f, &next, &back);
            if (back != prev)
                say(r, "free class %u: block 0x%llx has a wrong back link", c, (unsigned long long)f);
            prev = f;
            listed++;
        }
    }
    if (listed != nfree && b == seg->arena_end)
        say(r, "%llu free blocks in the arena but %llu on the free lists",
            (unsigned long long)nfree, (unsigned long long)listed);

    /* 3. The chains and the GC list. */
    uint64_t *reached = malloc(cap * sizeof *reached), nreached = 0;
    if (!reached) {
        free(used);
        say(r, "out of memory while checking");
        return;
    }
    qsort(used, nused, sizeof *used, cmp_u64);
    for (int t = 0; t < APC_NTABLES; t++) {
        uint64_t entries = 0, mem = 0;
        apc_off_t *bk = apc_buckets(seg, t);
        for (uint64_t i = 0; i < seg->geom[t].nslots && r->count < MAX_REPORTED; i++) {
            uint64_t wcap = cap;
            for (apc_off_t off = bk[i]; off;) {
                if (--wcap == 0) {
                    say(r, "table %d bucket %llu: the chain has a cycle", t, (unsigned long long)i);
                    break;
                }
                apc_slot *s = apc_slot_at(seg, off);
                if (!s || !bsearch(&off, used, nused, sizeof *used, cmp_u64)) {
                    say(r, "table %d bucket %llu: link 0x%llx is not a used block", t,
                        (unsigned long long)i, (unsigned long long)off);
                    break;
                }
                if (s->table != t)
                    say(r, "slot 0x%llx in table %d says it belongs to table %d",
                        (unsigned long long)off, t, s->table);
                uint64_t h64 = apc_slot_hash64(s);
                if (h64 % seg->geom[t].nslots != i)
                    say(r, "slot 0x%llx in bucket %llu of table %d hashes to bucket %llu",
                        (unsigned long long)off, (unsigned long long)i, t,
                        (unsigned long long)(h64 % seg->geom[t].nslots));
                if ((uint32_t)h64 != s->hash)
                    say(r, "slot 0x%llx: its hash 0x%x is not its key's", (unsigned long long)off,
                        s->hash);
                if (s->flags & APC_SLOT_GC)
                    say(r, "slot 0x%llx in table %d is marked deleted", (unsigned long long)off, t);
                if (s->val_len > apc_sma_block_size(seg, off) ||
                    apc_sma_block_for(apc_slot_need(s->key_len, s->val_len, s->flags)) >
                        apc_sma_block_size(seg, off))
                    say(r, "slot 0x%llx: key and value overrun its block", (unsigned long long)off);
                else if (seg->checksums && apc_entry_sum(s, apc_slot_val(s)) != *apc_slot_sum(s))
                    say(r, "slot 0x%llx: its value does not match its checksum",
                        (unsigned long long)off);
                if ((s->pin & APC_PIN_TAGMASK) != APC_PIN_TAG || (s->pin & ~APC_PIN_REFS) == APC_PIN_DEAD)
                    say(r, "slot 0x%llx: pin word 0x%llx is not a live slot's",
                        (unsigned long long)off, (unsigned long long)s->pin);
                entries++;
                mem += apc_sma_block_size(seg, off);
                if (nreached < cap)
                    reached[nreached++] = off;
                off = s->next_off;
            }
        }
        apc_stripe_stats sum = apc_table_sum(seg, t);
        if (entries != sum.num_entries || mem != sum.mem_size)
            say(r, "table %d: the header counts %llu entries in %llu bytes, the chains hold %llu "
                   "in %llu",
                t, (unsigned long long)sum.num_entries, (unsigned long long)sum.mem_size,
                (unsigned long long)entries, (unsigned long long)mem);
    }
    uint64_t gcn = 0, wcap = cap;
    for (apc_off_t off = h->gc_head; off;) {
        if (--wcap == 0) {
            say(r, "the GC list has a cycle");
            break;
        }
        apc_slot *s = apc_slot_at(seg, off);
        if (!s || !bsearch(&off, used, nused, sizeof *used, cmp_u64)) {
            say(r, "GC list: link 0x%llx is not a used block", (unsigned long long)off);
            break;
        }
        if (!(s->flags & APC_SLOT_GC))
            say(r, "GC list: slot 0x%llx is not marked deleted", (unsigned long long)off);
        gcn++;
        if (nreached < cap)
            reached[nreached++] = off;
        off = s->next_off;
    }
    if (gcn != h->gc_count)
        say(r, "the header counts %llu deleted entries, the GC list holds %llu",
            (unsigned long long)h->gc_count, (unsigned long long)gcn);

    /* 4. Every used block reached exactly once. */
    qsort(reached, nreached, sizeof *reached, cmp_u64);
    for (uint64_t i = 1; i < nreached; i++)
        if (reached[i] == reached[i - 1])
            say(r, "slot 0x%llx is reached twice", (unsigned long long)reached[i]);
    if (b == seg->arena_end) {
        uint64_t j = 0;
        for (uint64_t i = 0; i < nused && r->count < MAX_REPORTED; i++) {
            while (j < nreached && reached[j] < used[i])
                j++;
            if (j >= nreached || reached[j] != used[i])
                say(r, "block at 0x%llx is in use but no chain reaches it (leaked)",
                    (unsigned long long)apc_blk_of(used[i]));
        }
    }
    free(used);
    free(reached);
}

static int64_t do_check(apc_seg *seg, char *buf, uint64_t cap)
{
    report r = {buf, cap, 0, 0};
    if (buf && cap)
        buf[0] = 0;
    struct stat st;
    if (seg->fd >= 0 && fstat(seg->fd, &st) == 0 && (uint64_t)st.st_size < seg->size) {
        say(&r, "the segment's file is %llu bytes, shorter than the %llu its header says: it was "
                "truncated",
            (unsigned long long)st.st_size, (unsigned long long)seg->size);
        return r.count; /* reading on would only find zeros */
    }
    int rc = apc_wl_lock_for_check(seg);
    if (rc == APC_E_BUSY) {
        say(&r, "a lock has been held by pid %lld for longer than the lock timeout",
            (long long)apc_last_busy_pid());
        return r.count;
    }
    if (rc != APC_OK) {
        say(&r, "the locks cannot be taken");
        return r.count;
    }
    check_wl(seg, &r);
    apc_wl_leave_ro(seg);
    return r.count;
}

int64_t apc_check(apc_seg *seg, char *buf, uint64_t cap)
{
    int64_t rc = apc_seg_enter(seg);
    if (rc == APC_E_TRUNCATED) {
        report r = {buf, cap, 0, 0};
        if (buf && cap)
            buf[0] = 0;
        say(&r, "the segment was truncated under this process");
        return r.count;
    }
    return rc ? rc : apc_seg_leave(seg, do_check(seg, buf, cap));
}

/* ------------------------------------------------------------ layout map */

#include <stddef.h>

#define FIELD(prefix, type, f) {prefix #f, offsetof(type, f)}

static const struct {
    const char *name;
    int64_t off;
} layout_fields[] = {
    FIELD("hdr.", apc_header, magic),
    FIELD("hdr.", apc_header, format),
    FIELD("hdr.", apc_header, seg_size),
    FIELD("hdr.", apc_header, ttl),
    FIELD("hdr.", apc_header, gc_ttl),
    FIELD("hdr.", apc_header, aux_off),
    FIELD("hdr.", apc_header, arena_off),
    FIELD("hdr.", apc_header, arena_size),
    FIELD("hdr.", apc_header, geom),
    FIELD("hdr.", apc_header, bstripes),
    FIELD("hdr.", apc_header, alock),
    FIELD("hdr.", apc_header, repair_due),
    {"hdr.seq", offsetof(apc_header, bstripes) + offsetof(apc_lock, seq)}, /* stripe 0's */
    FIELD("hdr.", apc_header, free_head),
    FIELD("hdr.", apc_header, free_map),
    FIELD("hdr.", apc_header, free_bytes),
    FIELD("hdr.", apc_header, nfree),
    FIELD("hdr.", apc_header, nused),
    FIELD("hdr.", apc_header, gc_head),
    FIELD("hdr.", apc_header, gc_count),
    FIELD("hdr.", apc_header, next_version),
    FIELD("hdr.", apc_header, repairs),
    FIELD("hdr.", apc_header, compactions),
    FIELD("hdr.", apc_header, stats),
    FIELD("hdr.", apc_header, elocks),
    FIELD("hdr.", apc_header, pins),
    FIELD("hdr.", apc_header, stripes),
    FIELD("hdr.", apc_header, hitlogs),
    FIELD("hitlog.", apc_hitlog, lk),
    FIELD("hitlog.", apc_hitlog, seq),
    FIELD("hitlog.", apc_hitlog, n),
    FIELD("hitlog.", apc_hitlog, done),
    FIELD("hitlog.", apc_hitlog, rec),
    FIELD("lock.", apc_lock, word),
    FIELD("lock.", apc_lock, tid),
    FIELD("lock.", apc_lock, pid),
    FIELD("lock.", apc_lock, start),
    FIELD("lock.", apc_lock, intent_new),
    FIELD("lock.", apc_lock, intent_old),
    FIELD("lock.", apc_lock, pending),
    FIELD("slot.", apc_slot, hash),
    FIELD("slot.", apc_slot, ctime),
    FIELD("slot.", apc_slot, ttl),
    FIELD("slot.", apc_slot, val_len),
    FIELD("slot.", apc_slot, key_len),
    FIELD("slot.", apc_slot, type),
    /* table (2 bits) and flags (6 bits) share one byte */
    {"slot.table", APC_SLOT_BITS_OFF},
    {"slot.flags", APC_SLOT_BITS_OFF},
    FIELD("slot.", apc_slot, next_off),
    FIELD("slot.", apc_slot, mtime),
    {"slot.dtime", offsetof(apc_slot, mtime)}, /* on the GC list */
    FIELD("slot.", apc_slot, pin),
    FIELD("slot.", apc_slot, atime),
    FIELD("slot.", apc_slot, hits),
    /* The optional words after the slot: an int entry's value first, then
     * the checksum (segments with checksums on): so "slot.ival" is exact
     * for an int entry, "slot.sum" for any other. */
    {"slot.ival", sizeof(apc_slot)},
    {"slot.sum", sizeof(apc_slot)},
    {"slot.key", sizeof(apc_slot)}, /* of a non-int entry without a checksum */
    {"sizeof.apc_header", sizeof(apc_header)},
    {"sizeof.apc_slot", sizeof(apc_slot)},
    {"sizeof.lock", sizeof(apc_lock)},
    {"sizeof.bstripe", sizeof(apc_bstripe)},
    {"sizeof.seq", sizeof(apc_bstripe)}, /* the stride from one stripe's seq to the next */
    {"sizeof.apc_table_stats", sizeof(apc_table_stats)},
    {"sizeof.apc_elock", sizeof(apc_elock)},
    {"sizeof.apc_pin_rec", sizeof(apc_pin_rec)},
    {"sizeof.apc_hitlog", sizeof(apc_hitlog)},
    {"sizeof.apc_hitrec", sizeof(apc_hitrec)},
};

int64_t apc_layout_offset(const char *name)
{
    if (!name)
        return -1;
    for (size_t i = 0; i < sizeof layout_fields / sizeof layout_fields[0]; i++)
        if (strcmp(layout_fields[i].name, name) == 0)
            return layout_fields[i].off;
    return -1;
}
