/*
 * chains.c -- the bucket chains and what hangs off them: the lock-free
 * walk, the lookup under a lock, pins, an entry's checksum, and the lists
 * of slots that are unlinked but not yet freed (the GC list, the stripes'
 * pending lists), and the intents a dead stripe holder left.
 *
 * Each table is a prime-sized array of bucket heads; a bucket holds a chain
 * of slots linked by next_off.  A key's bucket is its XXH3-64 % nslots;
 * every slot keeps the low 32 bits of it, so that a chain walk compares 4
 * bytes before it compares keys.
 *
 * THE GC LIST
 *
 * Deleted or replaced slots that are still pinned wait on the GC list with
 * their deletion time.  Every allocation sweeps it (under alock): a slot
 * whose pins are gone is freed; one older than gc_ttl seconds is freed
 * regardless (its pinner presumably died).  gc_ttl = 0 means never by age.
 *
 * Below the allocator's callers, above the allocator: nothing here takes a
 * stripe's lock, and nothing here repairs (it asks for a repair).
 */
#define _GNU_SOURCE
#include <stdlib.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include "apc_internal.h"
#include "xxh3.h"

/* A chain's first slot is fetched for writing before it is read.  Every
 * operation that finds its entry writes the slot's line (a reader's pin,
 * hits and unpin; a writer's unlink), so reading it first and writing it
 * after would ask the other cores for it twice when one of them wrote it
 * last: once to share it and once to own it.  With PREFETCHW the first
 * miss brings the line in owned (both lines, for the one slot in eight
 * whose pin and hits lie apart).  x86 CPUs without it (before Broadwell)
 * may fault on the instruction, hence the check. */
#if defined(__x86_64__) || defined(__i386__)
static int has_prefetchw;

__attribute__((constructor)) static void detect_prefetchw(void)
{
    unsigned a, b, c, d;
    has_prefetchw = __get_cpuid(0x80000001, &a, &b, &c, &d) && (c & (1u << 8));
}

static inline void prefetchw(const void *p)
{
    if (has_prefetchw)
        __asm__ volatile("prefetchw %0" : : "m"(*(const char *)p));
}
#elif defined(__aarch64__)
static inline void prefetchw(const void *p) { __asm__ volatile("prfm pstl1keep, %a0" : : "p"(p)); }
#else
static inline void prefetchw(const void *p) { (void)p; }
#endif

/* Walk table's chain for the key without a lock.  What it returns is only
 * meaningful if seq did not move meanwhile. */
int apc_chain_walk(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t hash,
                apc_off_t *out)
{
    apc_off_t head = LOAD(apc_bucket_of(seg, table, hash)), off = head;
    uint64_t cap = apc_walk_cap(seg);
    while (off) {
        if ((off & 7) || !apc_in_arena(seg, off, sizeof(apc_slot)))
            return APC_E_CORRUPT;
        apc_slot *s = (apc_slot *)APC_PTR(seg, off);
        if (off == head) {
            prefetchw(s);
            prefetchw(&s->hits);
        }
        if (LOADR(&s->hash) == (uint32_t)hash && LOADR(&s->key_len) == klen) {
            uint64_t ext = apc_slot_ext(s);
            if (!apc_in_arena(seg, off, sizeof(apc_slot) + ext + klen))
                return APC_E_CORRUPT;
            if (memcmp((char *)(s + 1) + ext, key, klen) == 0) {
                *out = off;
                return APC_OK;
            }
        }
        off = LOAD(&s->next_off);
        if (--cap == 0)
            return APC_E_CORRUPT;
    }
    return APC_NOTFOUND;
}

/* Does a pinned slot lie in a used block that holds all of it?  Its
 * lengths are claims until this says so. */
int apc_slot_fits(apc_seg *seg, apc_slot *s)
{
    apc_off_t off = APC_OFF(seg, s);
    uint64_t size = apc_sma_used_size(seg, off);
    uint64_t vlen = LOADR(&s->val_len);
    uint32_t klen = LOADR(&s->key_len);
    unsigned bits = apc_slot_bits(s), flags = apc_bits_flags(bits);
    return size && vlen <= size && (bits & 3) < APC_NTABLES &&
           !(flags & APC_SLOT_SUM) == !seg->checksums &&
           !(flags & APC_SLOT_IVAL) == (s->type != APC_T_INT) &&
           apc_sma_block_for(apc_slot_need(klen, vlen, flags)) <= size;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static uint64_t sum_of(uint32_t type, uint32_t klen, uint64_t vlen, uint64_t body)
{
    return mix64(body ^ ((uint64_t)type << 56) ^ ((uint64_t)klen << 32) ^ vlen);
}

uint64_t apc_int_sum(const apc_slot *s, int64_t v)
{
    return sum_of(s->type, s->key_len, 0, mix64((uint64_t)v ^ 0x9E3779B97F4A7C15ULL));
}

/* The checksum of an entry: its type, key length, value length and value
 * bytes (an int's value, for ints).  The key itself needs none: a reader
 * only ever finds an entry by comparing its key bytes and hash. */
uint64_t apc_entry_sum(const apc_slot *s, const char *val)
{
    if (s->type == APC_T_INT)
        return apc_int_sum(s, LOADR(apc_slot_ival(s)));
    return sum_of(s->type, s->key_len, s->val_len, apc_xxh3_64(val, s->val_len));
}
void apc_unpin(apc_slot *s, uint64_t ident)
{
    uint64_t w = LOAD(&s->pin);
    while ((w & ~APC_PIN_REFS) == ident && (w & APC_PIN_REFS)) {
        if (CAS(&s->pin, &w, w - 1))
            return;
    }
}
/* Find under the lock of the key's stripe (or the whole lock); *linkp is
 * what points at the slot. */
int apc_find_locked(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t hash,
                   apc_off_t **linkp, apc_slot **out)
{
    APC_ASSERT(apc_sl_held(seg, apc_stripe_of(seg, table, hash)));
    apc_off_t *link = apc_bucket_of(seg, table, hash);
    uint64_t cap = apc_walk_cap(seg);
    while (*link) {
        apc_slot *s = apc_slot_at(seg, *link);
        if (!s || --cap == 0)
            return APC_E_CORRUPT;
        if (s->hash == (uint32_t)hash && s->key_len == klen &&
            memcmp(apc_slot_key(s), key, klen) == 0) {
            *linkp = link;
            *out = s;
            return APC_OK;
        }
        link = &s->next_off;
    }
    *linkp = link;
    *out = NULL;
    return APC_NOTFOUND;
}

/* What points at the slot at slot_off in its chain, or NULL.  Expects the
 * whole lock, or the lock of the slot's stripe. */
apc_off_t *apc_find_link_locked(apc_seg *seg, apc_off_t slot_off)
{
    apc_slot *s = apc_slot_at(seg, slot_off);
    if (!s)
        return NULL;
    APC_ASSERT(apc_wl_held(seg) || apc_sl_held(seg, apc_stripe_of(seg, s->table, apc_slot_hash64(s))));
    apc_off_t *link = apc_bucket_of(seg, s->table, apc_slot_hash64(s));
    uint64_t cap = apc_walk_cap(seg);
    while (*link && --cap) {
        if (*link == slot_off)
            return link;
        apc_slot *n = apc_slot_at(seg, *link);
        if (!n)
            return NULL;
        link = &n->next_off;
    }
    return NULL;
}

int apc_slot_movable_wl(apc_seg *seg, apc_slot *s)
{
    (void)seg;
    return !(s->flags & APC_SLOT_GC);
}

/* The slot is unlinked; free it, or park it on the GC list while pinned.
 * Expects alock. */
void apc_retire_al(apc_seg *seg, apc_slot *s, uint64_t now)
{
    APC_ASSERT(apc_al_held(seg));
    apc_header *h = seg->hdr;
    uint64_t w = LOAD(&s->pin);
    for (;;) {
        if (w & APC_PIN_REFS) {
            s->flags |= APC_SLOT_GC;
            s->mtime = (uint32_t)now; /* its deletion time, from now on */
            STORE(&s->next_off, h->gc_head);
            h->gc_head = APC_OFF(seg, s);
            h->gc_count++;
            return;
        }
        if (CAS(&s->pin, &w, APC_PIN_DEAD)) {
            apc_sma_free_wl(seg, APC_OFF(seg, s));
            return;
        }
    }
}

/*
 * PENDING
 *
 * A keyed write that unlinks a slot (a delete, or the entry a store
 * replaced) does not free it at once, which would take alock a second
 * time: it parks it on its stripe's pending list, under the stripe's lock
 * alone, and the stripe's next allocation frees what is there in the alock
 * section it takes anyway (as does the whole lock, when it is taken, and
 * a list that reaches APC_PENDING_MAX).  A pending slot is unreachable
 * (its stripe was odd while it was unlinked), so readers never see it;
 * what the allocator reports (sma_info, check) is taken under the whole
 * lock, when every list has been emptied.
 */

/* Retire every slot on stripe i's pending list (alock held).  The list is
 * a claim: a slot on it must say it is pending, and be of this stripe. */
void apc_drain_al(apc_seg *seg, int stripe)
{
    APC_ASSERT(apc_al_held(seg));
    apc_bstripe *bs = &seg->hdr->bstripes[stripe];
    apc_off_t off = bs->lock.pending;
    STORER(&bs->lock.pending, 0);
    bs->lock.npending = 0;
    for (int n = 0; off; n++) {
        apc_slot *s = apc_slot_at(seg, off);
        if (!s || n > APC_PENDING_MAX || !(s->flags & APC_SLOT_PENDING) ||
            (s->flags & APC_SLOT_GC) || apc_stripe_of(seg, s->table, apc_slot_hash64(s)) != stripe) {
            apc_repair_later(seg); /* what is left, the rebuild reclaims */
            return;
        }
        apc_off_t next = s->next_off;
        s->flags &= (uint8_t)~APC_SLOT_PENDING;
        apc_retire_al(seg, s, s->mtime); /* deleted when it was parked */
        off = next;
    }
}
/* Unlink the slot that *link points at, of the given stripe, and fix the
 * stripe's counters. */
void apc_unlink_counted(apc_seg *seg, apc_off_t *link, apc_slot *s, int stripe)
{
    apc_stripe_stats *st = &seg->hdr->bstripes[stripe].st[s->table];
    STORE(link, s->next_off);
    APC_FAULT("remove.after_unlink");
    st->num_entries--;
    st->mem_size -= apc_sma_block_size(seg, APC_OFF(seg, s));
}

/* Unlink and retire, under the whole lock. */
void apc_remove_wl(apc_seg *seg, apc_off_t *link, apc_slot *s, uint64_t now)
{
    APC_ASSERT(apc_wl_held(seg));
    apc_unlink_counted(seg, link, s, apc_stripe_of(seg, s->table, apc_slot_hash64(s)));
    apc_retire_al(seg, s, now);
}

/* Free what on the GC list nobody pins any more, or was pinned for longer
 * than gc_ttl.  Its slots are unreachable since they were unlinked (with
 * their stripe odd), so freeing them needs no seq. */
void apc_gc_sweep_al(apc_seg *seg, uint64_t now)
{
    APC_ASSERT(apc_al_held(seg));
    apc_header *h = seg->hdr;
    apc_off_t *link = &h->gc_head;
    uint64_t cap = apc_walk_cap(seg);
    while (*link && --cap) {
        apc_slot *s = apc_slot_at(seg, *link);
        if (!s) {
            *link = 0; /* a corrupt tail: the repair reclaims it */
            apc_repair_later(seg);
            break;
        }
        uint64_t w = LOAD(&s->pin);
        int freed = 0;
        if (!(w & APC_PIN_REFS))
            freed = CAS(&s->pin, &w, APC_PIN_DEAD);
        if (!freed && s->mtime > now) /* mtime: the deletion time, on the GC list */
            s->mtime = (uint32_t)now; /* a deletion in the future is a broken claim: age it from now */
        if (!freed && h->gc_ttl && now - s->mtime >= h->gc_ttl) {
            /* Pinned for longer than gc_ttl: the pinner is presumed dead.
             * Retiring the word makes any late unpin a no-op. */
            STORE(&s->pin, APC_PIN_DEAD);
            freed = 1;
        }
        if (freed) {
            *link = s->next_off;
            h->gc_count--;
            apc_sma_free_wl(seg, APC_OFF(seg, s));
        } else {
            link = &s->next_off;
        }
    }
}
/* ------------------------------------------- what a stripe holder left */

/*
 * An intent is a claim like any other word of the segment: before a block
 * it names is freed, it must be what a stripe's writer would have left
 * there.  A true intent_old is a slot of this very stripe (its key hashes
 * here), not on the GC list; a true intent_new, a slot on no list, pinned
 * by nobody (a writer claims a block with a pin word nobody holds, in the
 * same alock section as the intent: claim_block), or one parked on this
 * stripe's own pending list (reuse_kl).  Whether it is still reachable is
 * asked of every chain of the stripe, and, for intent_new, of the chain
 * its key hashes to (it may be half written, so that chain may be any
 * stripe's, read as a reader reads it): a forged intent naming a live
 * entry finds it there and frees nothing.  Both intents naming one slot
 * (a rewrite in place) must name a slot linked in this stripe.  What
 * cannot be settled that way is left to a whole repair.
 */
static apc_slot *intent_slot(apc_seg *seg, apc_off_t off)
{
    apc_slot *s = apc_slot_at(seg, off);
    return s && !(s->flags & APC_SLOT_GC) ? s : NULL;
}

/* Is off in the chain of the bucket that h64 falls in, read as a reader
 * reads it?  1, 0, or -1 when that cannot be told (a broken chain, a
 * stripe that stays odd). */
static int linked_at(apc_seg *seg, int table, uint64_t h64, apc_off_t off)
{
    int st = apc_stripe_of(seg, table, h64);
    for (int tries = 0; tries < 64; tries++) {
        uint64_t sq;
        if (apc_seq_read_begin(seg, st, &sq) != APC_OK)
            return -1;
        int r = 0;
        uint64_t cap = apc_walk_cap(seg);
        for (apc_off_t o = LOAD(apc_bucket_of(seg, table, h64)); o;) {
            apc_slot *s = apc_slot_at(seg, o);
            if (o == off || !s || --cap == 0) {
                r = o == off ? 1 : -1;
                break;
            }
            o = LOAD(&s->next_off);
        }
        if (apc_seq_read_valid(seg, st, sq))
            return r;
    }
    return -1;
}

/* Walk every chain of the stripe: count its entries and memory, and say
 * whether the slots at a and b are among them.  0, or -1 for a chain that
 * cannot be walked. */
static int walk_stripe(apc_seg *seg, int stripe, apc_off_t a, apc_off_t b, int *seen_a,
                       int *seen_b)
{
    *seen_a = *seen_b = 0;
    for (int t = 0; t < APC_NTABLES; t++) {
        uint64_t n = 0, mem = 0;
        apc_off_t *bk = apc_buckets(seg, t);
        for (uint64_t i = (uint64_t)stripe; i < seg->geom[t].nslots; i += APC_NSEQ) {
            uint64_t cap = apc_walk_cap(seg);
            for (apc_off_t o = bk[i]; o;) {
                apc_slot *s = apc_slot_at(seg, o);
                if (!s || --cap == 0)
                    return -1;
                *seen_a |= o == a;
                *seen_b |= o == b;
                n++;
                mem += apc_sma_block_size(seg, o);
                o = s->next_off;
            }
        }
        apc_stripe_stats *st = &seg->hdr->bstripes[stripe].st[t];
        st->num_entries = n;
        st->mem_size = mem;
    }
    return 0;
}

/*
 * Finish what the last holder of stripe i left (see INTENTS): free the
 * block it allocated if it never published it, retire the slot it
 * unlinked if it did not, unlink and free the slot it was rewriting in
 * place if the rewrite did not finish; and since it may have died between
 * two of its counter updates, count the stripe again.  Expects stripe i's lock, and
 * alock if have_alock.  APC_ESCALATE: a whole repair is owed first
 * (alock was lost to a dead holder, or an intent is not to be believed);
 * the intents wait for it.
 */
int apc_finish_intents(apc_seg *seg, int i, int have_alock)
{
    APC_ASSERT(apc_sl_held(seg, i) && (!have_alock || apc_al_held(seg)));
    apc_lock *l = &seg->hdr->bstripes[i].lock;
    apc_off_t nw = LOADR(&l->intent_new), old = LOADR(&l->intent_old);
    apc_slot *ns = nw ? intent_slot(seg, nw) : NULL, *os = old ? intent_slot(seg, old) : NULL;
    if ((nw && (!ns || (LOADR(&ns->pin) & APC_PIN_REFS))) ||
        (old && (!os || apc_stripe_of(seg, os->table, apc_slot_hash64(os)) != i)))
        goto owed;
    int nw_linked, old_linked;
    if (walk_stripe(seg, i, nw, old, &nw_linked, &old_linked) != 0)
        goto owed;
    apc_bstripe *bs = &seg->hdr->bstripes[i];
    /* An unlinked intent_old may already be parked on the pending list,
     * and an intent_new may still be there (reuse_kl). */
    int old_parked = 0, nw_parked = 0, n = 0;
    for (apc_off_t o = bs->lock.pending; o;) {
        apc_slot *p = apc_slot_at(seg, o);
        if (!p || ++n > APC_PENDING_MAX + 1)
            goto owed;
        old_parked |= o == old;
        nw_parked |= o == nw;
        o = p->next_off;
    }
    /* Both intents naming one slot: it was being rewritten in place
     * (replace_in_place_kl in api.c).  With a live pin word it is whole,
     * the old entry or the new one, and stays; with its pin word still
     * DEAD its value may be half written: unlinked and freed (nobody can
     * pin a DEAD slot). */
    int in_place = nw && nw == old;
    apc_off_t *torn = NULL;
    if (in_place) {
        apc_off_t *link = nw_linked && !nw_parked ? apc_find_link_locked(seg, nw) : NULL;
        if (!link)
            goto owed; /* not what that write leaves */
        if (LOADR(&ns->pin) == APC_PIN_DEAD)
            torn = link;
    } else {
        if (nw && (ns->flags & APC_SLOT_PENDING) && !nw_parked)
            goto owed; /* another stripe's */
        if (nw && !nw_linked && !nw_parked) {
            uint64_t h64 = apc_slot_hash64(ns);
            if (apc_stripe_of(seg, ns->table, h64) != i) {
                int r = linked_at(seg, ns->table, h64, nw);
                if (r != 0)
                    goto owed;
            }
        }
    }
    int free_new = !in_place && nw && !nw_linked && !nw_parked;
    int retire_old = !in_place && old && !old_linked && !old_parked;
    if (torn || free_new || retire_old || bs->lock.pending) {
        if (!have_alock && apc_al_lock(seg) != APC_OK)
            return APC_ESCALATE;
        uint64_t now = apc_now(0);
        apc_seq_begin_wl(seg, i);
        apc_drain_al(seg, i);
        if (torn) {
            apc_unlink_counted(seg, torn, ns, i); /* walk_stripe counted it */
            apc_sma_free_wl(seg, nw);
        }
        if (free_new)
            apc_sma_free_wl(seg, nw); /* checks that it is a used block */
        if (retire_old)
            apc_retire_al(seg, os, now);
        apc_seq_end_wl(seg, i);
        if (!have_alock)
            apc_al_release(seg);
    }
    STORER(&l->intent_new, 0);
    STORER(&l->intent_old, 0);
    return APC_OK;
owed:
    apc_repair_later(seg);
    return APC_ESCALATE;
}

/* An entry's record, as the reports and key_info give it. */
void apc_rec_of(apc_seg *seg, apc_slot *s, uint64_t now, apc_entry_rec *r)
{
    r->hash = apc_slot_hash64(s); /* the slot keeps 32 bits of it */
    r->ctime = s->ctime;
    r->mtime = s->mtime;
    r->atime = LOADR(&s->atime);
    r->dtime = (s->flags & APC_SLOT_GC) ? s->mtime : 0; /* mtime is it, on the GC list */
    r->ttl = s->ttl;
    r->hits = LOADR(&s->hits);
    r->mem_size = apc_sma_block_size(seg, APC_OFF(seg, s));
    r->val_len = s->type == APC_T_INT ? 8 : s->val_len;
    r->offset = APC_OFF(seg, s);
    r->refs = (uint32_t)(LOADR(&s->pin) & APC_PIN_REFS);
    r->key_len = s->key_len;
    r->type = s->type;
    r->flags = ((s->flags & APC_SLOT_GC) ? APC_REC_DELETED : 0) |
               (apc_expired(s, now) ? APC_REC_EXPIRED : 0);
}
