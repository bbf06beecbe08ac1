/*
 * table.c -- the slot tables: chains, TTL, the GC list, making room,
 * entry() locks, and the repair that runs after a writer died.
 *
 * Each table is a prime-sized array of bucket heads; a bucket holds a chain
 * of slots linked by next_off.  A key's bucket is hash % nslots, the hash
 * being the key's full XXH3-64, which every slot keeps so that a chain walk
 * compares 8 bytes before it compares keys.
 *
 * HOW A READ WORKS
 *
 * A reader takes no lock.  It reads the seqlock word (waiting while it is
 * odd), walks the chain with every offset bounds-checked and the walk
 * capped, reads the found slot's pin word, and checks that seq has not
 * moved: if it has, everything it saw may be freed memory, and it starts
 * again.  Then it pins the slot by CAS on exactly the word it saw, so a
 * slot that was retired or reused in the meantime cannot be pinned.  With
 * the pin held it copies the value and bumps the entry's hits and atime;
 * then it unpins.  Readers never block each other, and the only shared
 * lines they write are the found slot's and their own counter stripe.
 *
 * HOW A WRITE WORKS
 *
 * A writer takes its key's stripe lock (see LOCKS in apc_internal.h), and
 * alock only to allocate and to free.  It builds the new slot in full in a
 * free block,
 * then publishes it with one atomic store into the link that pointed at
 * the old slot (or the bucket head), which unlinks the old slot in the
 * same store.  Only then, with seq odd, does it retire the old slot: by CAS
 * of its pin word from (version, 0 refs) to DEAD, freeing the block; or,
 * if a reader holds a pin, by moving it to the GC list.  Unlink, then free:
 * a writer killed between any two steps leaves either the old or the new
 * entry reachable, and at worst an unreachable block, which the repair
 * reclaims.
 *
 * THE GC LIST
 *
 * Deleted or replaced slots that are still pinned wait on the GC list with
 * their deletion time.  Every allocation or free sweeps it (under alock):
 * a slot whose pins are gone is freed; one older than gc_ttl seconds is
 * freed regardless (its pinner presumably died).  gc_ttl = 0 means never
 * by age.
 *
 * Every function with the suffix _wl expects the whole lock held; _kl, a
 * keyed write's lock (its stripe's, or the whole); _al, alock.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>
#include "apc_internal.h"
#include "xxh3.h"

#define RETRY 1

static inline int bad_table(int table) { return table < 0 || table >= APC_NTABLES; }

/* Every entry point apc_X is a wrapper that brackets do_X with
 * apc_seg_enter/apc_seg_leave (segment.c): a closed or truncated handle is
 * refused before anything is read. */

static apc_off_t *bucket_of(apc_seg *seg, int table, uint64_t hash)
{
    return &apc_buckets(seg, table)[hash % seg->geom[table].nslots];
}

/* The seqlock stripe that guards the bucket a key hashes to. */
static inline int stripe_of(apc_seg *seg, int table, uint64_t hash)
{
    return (int)((hash % seg->geom[table].nslots) % APC_NSEQ);
}

/* ------------------------------------------------------------ lock-free */

/* Walk table's chain for the key without a lock.  What it returns is only
 * meaningful if seq did not move meanwhile. */
static int walk(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t hash,
                apc_off_t *out)
{
    apc_off_t off = LOAD(bucket_of(seg, table, hash));
    uint64_t cap = apc_walk_cap(seg);
    while (off) {
        if ((off & 7) || !apc_in_arena(seg, off, sizeof(apc_slot)))
            return APC_E_CORRUPT;
        apc_slot *s = (apc_slot *)APC_PTR(seg, off);
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
static int slot_fits(apc_seg *seg, apc_slot *s)
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

static uint64_t int_sum(const apc_slot *s, int64_t v)
{
    return sum_of(s->type, s->key_len, 0, mix64((uint64_t)v ^ 0x9E3779B97F4A7C15ULL));
}

/* The checksum of an entry: its type, key length, value length and value
 * bytes (an int's value, for ints).  The key itself needs none: a reader
 * only ever finds an entry by comparing its key bytes and hash. */
uint64_t apc_entry_sum(const apc_slot *s, const char *val)
{
    if (s->type == APC_T_INT)
        return int_sum(s, LOADR(apc_slot_ival(s)));
    return sum_of(s->type, s->key_len, s->val_len, apc_xxh3_64(val, s->val_len));
}

/* An int entry's value, checked against its checksum when checksums are
 * on.  inc and cas rewrite the value and then the checksum, under the write
 * lock: a reader between the two stores reads again.  APC_WAITED if a
 * writer keeps them apart for longer than a reader waits, APC_E_CORRUPT if
 * nobody does. */
static int read_int(apc_seg *seg, apc_slot *s, int64_t *out)
{
    int64_t v = LOAD(apc_slot_ival(s));
    if (!seg->checksums) {
        *out = v;
        return APC_OK;
    }
    uint64_t start = 0;
    for (unsigned i = 0;; i++) {
        uint64_t sum = LOAD(apc_slot_sum(s));
        if (int_sum(s, v) == sum) {
            *out = v;
            return APC_OK;
        }
        if (i >= 64) {
            uint64_t now = apc_mono_ns();
            if (!start)
                start = now;
            else if (now - start > APC_READ_WAIT_NS)
                return apc_sl_busy(seg, stripe_of(seg, s->table, apc_slot_hash64(s))) ? APC_WAITED
                                                                            : APC_E_CORRUPT;
            sched_yield();
        }
        v = LOAD(apc_slot_ival(s));
    }
}

static int read_begin(apc_seg *seg, int st, uint64_t *sq, int nowait);

/* Find and pin.  Returns APC_OK with *out pinned, APC_NOTFOUND, APC_WAITED
 * (a writer held the bucket for longer than a reader waits), or
 * APC_E_CORRUPT; *ident is the pin word's tag|version for the unpin. */
static int find_pinned(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t hash,
                       apc_slot **out, uint64_t *ident, int nowait)
{
    int st = stripe_of(seg, table, hash);
    for (unsigned tries = 0;; tries++) {
        uint64_t sq;
        int rc = read_begin(seg, st, &sq, nowait);
        if (rc != APC_OK)
            return rc;
        apc_off_t off = 0;
        rc = walk(seg, table, key, klen, hash, &off);
        if (rc != APC_OK) {
            if (apc_seq_read_valid(seg, st, sq))
                return rc;
            continue;
        }
        apc_slot *s = (apc_slot *)APC_PTR(seg, off);
        uint64_t w = LOAD(&s->pin);
        if (!apc_seq_read_valid(seg, st, sq))
            continue;
        uint64_t id = w & ~APC_PIN_REFS;
        if ((w & APC_PIN_TAGMASK) != APC_PIN_TAG || id == APC_PIN_DEAD)
            return APC_E_CORRUPT; /* a live slot under a valid seq */
        for (;;) {
            if ((w & APC_PIN_REFS) == APC_PIN_REFS)
                return APC_WAITED; /* 65535 pins: come back later */
            if (CAS(&s->pin, &w, w + 1)) {
                if (!slot_fits(seg, s)) {
                    CAS(&s->pin, &(uint64_t){w + 1}, w);
                    return APC_E_CORRUPT;
                }
                *out = s;
                *ident = id;
                return APC_OK;
            }
            if ((w & ~APC_PIN_REFS) != id)
                break; /* retired or reused: look again */
        }
        if (tries > 1000000)
            return APC_WAITED;
    }
}

static void unpin(apc_slot *s, uint64_t ident)
{
    uint64_t w = LOAD(&s->pin);
    while ((w & ~APC_PIN_REFS) == ident && (w & APC_PIN_REFS)) {
        if (CAS(&s->pin, &w, w - 1))
            return;
    }
}

static inline void count_hit(apc_seg *seg, int table, apc_slot *s, uint64_t now)
{
    if (LOADR(&s->hits) < APC_HITS_MAX)
        ADD(&s->hits, 1);
    if (LOADR(&s->atime) != (uint32_t)now)
        STORER(&s->atime, (uint32_t)now);
    ADD(&apc_my_stripe(seg)->hits[table], 1);
}

static inline void count_miss(apc_seg *seg, int table)
{
    ADD(&apc_my_stripe(seg)->misses[table], 1);
}

/* A read that cannot be answered is a miss, counted as what it was: a
 * broken claim (and the next writer repairs), or a writer waited out. */
static int count_failed_read(apc_seg *seg, int table, int rc)
{
    if (rc == APC_E_CORRUPT) {
        ADD(&apc_my_stripe(seg)->corrupt[table], 1);
        apc_repair_later(seg);
    } else if (rc == APC_WAITED) {
        ADD(&apc_my_stripe(seg)->waited[table], 1);
    } else if (rc != APC_NOTFOUND) {
        return rc;
    }
    count_miss(seg, table);
    return APC_NOTFOUND;
}

/* Claim a pin record for a pin that outlives this call. */
static int record_pin(apc_seg *seg, apc_slot *s, uint64_t ident, uint64_t now)
{
    apc_header *h = seg->hdr;
    int64_t pid = apc_pid();
    for (int i = 0; i < APC_NPINS; i++) {
        int64_t expect = 0;
        if (LOADR(&h->pins[i].pid) == 0 && CAS(&h->pins[i].pid, &expect, -pid)) {
            h->pins[i].slot_off = APC_OFF(seg, s);
            h->pins[i].pinword = ident;
            h->pins[i].since = now;
            STORE(&h->pins[i].pid, pid);
            return i;
        }
    }
    return -1;
}

static void unrecord_pin(apc_seg *seg, int rec)
{
    if (rec >= 0)
        STORE(&seg->hdr->pins[rec].pid, 0);
}

/* What both fetches share: check the key and table, read the clock (into
 * *now), find and pin a live entry, check it, count a miss.
 * On APC_OK the caller owns one pin on *out (ident for the unpin) and *ival
 * is an int entry's checked value. */
static int fetch_pinned(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t *now,
                        apc_slot **out, uint64_t *ident, int64_t *ival)
{
    int nowait = table & APC_NOWAIT;
    table &= ~APC_NOWAIT;
    if (bad_table(table) || klen > APC_MAX_KEY)
        return APC_E_ARG;
    *now = apc_now(*now);
    uint64_t hash = apc_xxh3_64(key, klen);
    apc_slot *s;
    int rc = find_pinned(seg, table, key, klen, hash, &s, ident, nowait);
    if (rc == APC_WAITED && nowait)
        return rc; /* the caller asks again, waiting */
    if (rc != APC_OK)
        return count_failed_read(seg, table, rc);
    if (apc_expired(s, *now)) {
        unpin(s, *ident);
        return count_failed_read(seg, table, APC_NOTFOUND);
    }
    *ival = 0;
    if (s->type == APC_T_INT) {
        rc = read_int(seg, s, ival);
    } else if (seg->checksums) {
        /* A value over the io buffer's size may take a while to hash: put
         * the pin on record meanwhile, for apc_recover(). */
        int r = s->val_len > APC_IO_BUF ? record_pin(seg, s, *ident, *now) : -1;
        if (apc_entry_sum(s, apc_slot_val(s)) != LOADR(apc_slot_sum(s)))
            rc = APC_E_CORRUPT;
        unrecord_pin(seg, r);
    }
    if (rc != APC_OK) {
        unpin(s, *ident);
        return count_failed_read(seg, table, rc);
    }
    APC_FAULT("fetch.pinned");
    *out = s;
    return APC_OK; /* the caller counts the hit once it has the value */
}

static int64_t do_fetch(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t now,
                        char *buf, uint64_t cap)
{
    table &= ~APC_NOWAIT; /* only fetch_ref gives up without waiting */
    if (cap < 16 || !buf)
        return APC_E_ARG;
    apc_slot *s;
    uint64_t ident;
    int64_t ival;
    int rc = fetch_pinned(seg, table, key, klen, &now, &s, &ident, &ival);
    if (rc != APC_OK)
        return rc;
    uint64_t type = s->type;
    uint64_t vlen = s->val_len;
    if (vlen > cap && type != APC_T_INT) {
        /* The caller tries again with a buffer of this size (and that
         * call counts the hit). */
        unpin(s, ident);
        memcpy(buf, &vlen, sizeof vlen);
        return APC_E_SMALL;
    }
    count_hit(seg, table, s, now);
    if (type == APC_T_INT) {
        memcpy(buf, &ival, sizeof ival);
        unpin(s, ident);
        return (int64_t)((8 << 8) | type);
    }
    /* A large copy keeps its pin on record, so that apc_recover() can
     * release it if this process dies while copying. */
    int r = vlen > APC_IO_BUF ? record_pin(seg, s, ident, now) : -1;
    memcpy(buf, apc_slot_val(s), vlen);
    unrecord_pin(seg, r);
    unpin(s, ident);
    return (int64_t)((vlen << 8) | type);
}

int64_t apc_fetch(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t now,
                  char *buf, uint64_t cap)
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_fetch(seg, table, key, klen, now, buf, cap));
}

/* fetch without the copy: the caller copies straight from the segment
 * (one copy instead of two) and calls apc_ref_release at once.  The call
 * stays in flight until then (apc_close waits for it).  Values over the io
 * buffer's size get a recorded pin, so apc_recover() can release it if the
 * caller dies while copying. */
int64_t apc_fetch_ref(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t now,
                      apc_ref *ref)
{
    int64_t rc = apc_seg_enter(seg);
    if (rc != APC_OK)
        return rc;
    if (!ref)
        return apc_seg_leave(seg, APC_E_ARG);
    apc_slot *s;
    uint64_t ident;
    int64_t ival;
    rc = fetch_pinned(seg, table, key, klen, &now, &s, &ident, &ival);
    if (rc != APC_OK)
        return apc_seg_leave(seg, rc);
    count_hit(seg, table & ~APC_NOWAIT, s, now);
    uint64_t type = s->type;
    ref->ptr = apc_slot_val(s);
    ref->len = type == APC_T_INT ? 8 : s->val_len;
    ref->ival = ival;
    ref->slot = s;
    ref->ident = ident;
    ref->rec = -1;
    if (ref->len > APC_IO_BUF) {
        int r = record_pin(seg, s, ident, now); /* the same pin, now on record */
        if (r >= 0)
            ref->rec = r;
    }
    return (int64_t)((ref->len << 8) | type); /* still in flight */
}

void apc_ref_release(apc_seg *seg, apc_ref *ref)
{
    if (!ref->slot)
        return;
    if (ref->rec >= 0) {
        apc_pin_rec *r = &seg->hdr->pins[ref->rec];
        if (LOAD(&r->pid) == apc_pid())
            STORE(&r->pid, 0);
    }
    unpin((apc_slot *)ref->slot, ref->ident);
    ref->slot = NULL;
    ref->rec = -1;
    apc_seg_leave(seg, APC_OK);
}

static int do_exists(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t now)
{
    if (bad_table(table) || klen > APC_MAX_KEY)
        return APC_E_ARG;
    uint64_t hash = apc_xxh3_64(key, klen);
    now = apc_now(now);
    int st = stripe_of(seg, table, hash);
    for (;;) {
        uint64_t sq;
        int rc = read_begin(seg, st, &sq, 0);
        if (rc != APC_OK)
            break;
        apc_off_t off = 0;
        rc = walk(seg, table, key, klen, hash, &off);
        int expired = 0;
        if (rc == APC_OK) {
            apc_slot *s = (apc_slot *)APC_PTR(seg, off);
            uint64_t ttl = LOADR(&s->ttl), ctime = LOADR(&s->ctime);
            expired = ttl > 0 && now > ctime && now - ctime > ttl; /* as apc_expired */
        }
        if (!apc_seq_read_valid(seg, st, sq))
            continue;
        if (rc == APC_OK && expired)
            return APC_NOTFOUND;
        if (rc != APC_E_CORRUPT)
            return rc;
        ADD(&apc_my_stripe(seg)->corrupt[table], 1);
        apc_repair_later(seg);
        return APC_NOTFOUND;
    }
    ADD(&apc_my_stripe(seg)->waited[table], 1);
    return APC_NOTFOUND;
}

int apc_exists(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t now)
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_exists(seg, table, key, klen, now));
}

/* -------------------------------------------------------- write sections */

/*
 * A keyed write holds its key's stripe lock (see LOCKS in apc_internal.h);
 * everything else holds the whole lock.  The _wl functions below expect the
 * whole lock, the _kl ones a keyed write's lock (one stripe or the whole),
 * the _al ones alock.
 */

#define NO_SEQ (-2) /* a write section that frees nothing readers can reach */
#define APC_RETRY_OP (-1001) /* the key changed while the lock was traded: decide again */

static int geometry_scribbled(const apc_seg *seg);
static int finish_intents(apc_seg *seg, int stripe, int have_alock);
static void drain_al(apc_seg *seg, int stripe);

/* Where the aux area starts: right after the header, page-aligned (as
 * segment.c lays it out). */
#define APC_AUX_OFF ((sizeof(apc_header) + 4095) & ~(uint64_t)4095)

/* The whole lock, and the repairs it owes: a whole repair after a holder
 * of any lock died, when one is due, or when the geometry was scribbled
 * on; then whatever intents live holders left are finished.  The checker
 * (repair = 0) repairs only after a death: what else is broken it
 * reports, before anyone repairs it. */
static int whole_lock(apc_seg *seg, int repair)
{
    int stolen;
    int rc = apc_whole_acquire(seg, &stolen);
    if (rc != APC_OK)
        return rc;
    if (stolen || (repair && (LOADR(&seg->hdr->repair_due) || geometry_scribbled(seg)))) {
        apc_repair_wl(seg, 0);
        apc_whole_seq_reset(seg);
    }
    for (int i = 0; i < APC_NSEQ; i++) {
        apc_bstripe *bs = &seg->hdr->bstripes[i];
        if (LOADR(&bs->lock.intent_new) | LOADR(&bs->lock.intent_old))
            finish_intents(seg, i, 1);
        else if (bs->lock.pending)
            drain_al(seg, i);
    }
    return APC_OK;
}

int apc_wl_lock(apc_seg *seg) { return whole_lock(seg, 1); }
int apc_wl_lock_for_check(apc_seg *seg) { return whole_lock(seg, 0); }
void apc_wl_unlock(apc_seg *seg) { apc_whole_release(seg); }

static int wl_enter(apc_seg *seg, int stripe)
{
    int rc = whole_lock(seg, 1);
    if (rc == APC_OK && stripe != NO_SEQ)
        apc_seq_begin_wl(seg, stripe);
    return rc;
}

static void wl_leave(apc_seg *seg, int stripe)
{
    if (stripe != NO_SEQ)
        apc_seq_end_wl(seg, stripe);
    apc_whole_release(seg);
}

/* alock, for a holder of a stripe (or of nothing).  One taken over from a
 * dead holder means half-spliced free lists: a whole repair is owed, and
 * the caller, told APC_ESCALATE, goes without (nothing is held).  So does
 * every later taker until the repair has run: the owed flag is set before
 * the lock is let go, and read after it is taken. */
static int al_lock(apc_seg *seg)
{
    int stolen;
    int rc = apc_al_acquire(seg, &stolen);
    if (rc == APC_OK && __builtin_expect(stolen || LOADR(&seg->hdr->repair_due), 0)) {
        apc_repair_later(seg);
        apc_al_release(seg);
        rc = APC_ESCALATE;
    }
    return rc;
}

/* Stripe i's lock for a keyed write, with what its last holder left
 * finished.  APC_ESCALATE (nothing held): a whole repair is owed first. */
static int stripe_lock(apc_seg *seg, int i, int stolen)
{
    if (__builtin_expect(LOADR(&seg->hdr->repair_due) || geometry_scribbled(seg), 0)) {
        apc_sl_release(seg, i);
        return APC_ESCALATE;
    }
    apc_lock *l = &seg->hdr->bstripes[i].lock;
    if (__builtin_expect(stolen | LOADR(&l->intent_new) | LOADR(&l->intent_old), 0)) {
        int rc = finish_intents(seg, i, 0);
        if (stolen)
            apc_sl_seq_reset(seg, i);
        if (rc != APC_OK) {
            apc_sl_release(seg, i);
            return APC_ESCALATE;
        }
    }
    return APC_OK;
}

/* A reader found stripe i odd for the whole bound.  If its writer is gone
 * (the lock free, or its holder dead), take the lock without waiting,
 * finish what the writer left, and let the reader look again: 1.  A live
 * writer is left alone: 0. */
static int stripe_rescue(apc_seg *seg, int i)
{
    int stolen;
    if (apc_sl_try(seg, i, &stolen) != APC_OK)
        return 0;
    if (stripe_lock(seg, i, stolen) == APC_OK) {
        apc_sl_seq_reset(seg, i); /* odd with the lock free: garbage */
        apc_sl_release(seg, i);
    }
    return 1;
}

/* Begin an optimistic read of stripe st, rescuing it once if its writer
 * is gone. */
static int read_begin(apc_seg *seg, int st, uint64_t *sq, int nowait)
{
    int rc = apc_seq_read_begin_opt(seg, st, sq, nowait);
    if (rc == APC_WAITED && !nowait && stripe_rescue(seg, st))
        rc = apc_seq_read_begin_opt(seg, st, sq, 0);
    return rc;
}

/* Find under the lock; *linkp is what points at the slot. */
static int find_wl(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t hash,
                   apc_off_t **linkp, apc_slot **out)
{
    apc_off_t *link = bucket_of(seg, table, hash);
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

/* What every keyed write starts with: its arguments checked, the key's
 * hash, the clock, its stripe's lock taken (or the whole lock, when that
 * is owed) and the key looked up.  A chain found broken is repaired under
 * the whole lock and looked up again. */
typedef struct keyed {
    uint64_t hash;
    uint64_t now;
    int table;
    int stripe;      /* the key's stripe */
    int whole;       /* the whole lock is held, not only the stripe's */
    int held;        /* a lock is held (0 after a failed escalate) */
    apc_off_t *link; /* what points at the entry, or where a new one goes */
    apc_slot *s;     /* the entry, or NULL */
    int found;       /* APC_OK (s is it), APC_NOTFOUND, or APC_E_CORRUPT */
    int live;        /* found and not expired */
} keyed;

static apc_lock *keyed_lock_rec(apc_seg *seg, const keyed *k)
{
    return &seg->hdr->bstripes[k->stripe].lock;
}

static apc_stripe_stats *stats_of(apc_seg *seg, int table, uint64_t hash)
{
    return &seg->hdr->bstripes[stripe_of(seg, table, hash)].st[table];
}

static void keyed_find(apc_seg *seg, const char *key, uint32_t klen, keyed *k)
{
    k->found = find_wl(seg, k->table, key, klen, k->hash, &k->link, &k->s);
    k->live = k->found == APC_OK && !apc_expired(k->s, k->now);
}

/* Trade the stripe's lock for the whole lock (nothing half done), and look
 * the key up again.  On failure nothing is held. */
static int escalate(apc_seg *seg, const char *key, uint32_t klen, keyed *k)
{
    if (!k->whole) {
        APC_ASSERT(seg->seq_depth[k->stripe] == 0);
        apc_sl_release(seg, k->stripe);
        int rc = whole_lock(seg, 1);
        if (rc != APC_OK) {
            k->held = 0;
            return rc;
        }
        k->whole = 1;
    }
    keyed_find(seg, key, klen, k);
    if (k->found == APC_E_CORRUPT) {
        apc_repair_wl(seg, k->now);
        keyed_find(seg, key, klen, k);
    }
    return APC_OK;
}

/* APC_OK with the key's lock held, or an error without it. */
static int keyed_begin(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t now,
                       keyed *k)
{
    if (bad_table(table) || klen > APC_MAX_KEY)
        return APC_E_ARG;
    k->hash = apc_xxh3_64(key, klen);
    k->now = apc_now(now);
    k->table = table;
    k->stripe = stripe_of(seg, table, k->hash);
    k->whole = 0;
    int stolen;
    int rc = apc_sl_acquire(seg, k->stripe, &stolen);
    if (rc != APC_OK)
        return rc;
    k->held = 1;
    if (__builtin_expect(stripe_lock(seg, k->stripe, stolen) == APC_ESCALATE, 0))
        return escalate(seg, key, klen, k);
    keyed_find(seg, key, klen, k);
    if (__builtin_expect(k->found == APC_E_CORRUPT, 0))
        return escalate(seg, key, klen, k);
    return APC_OK;
}

int apc_key_stripe(apc_seg *seg, int table, const char *key, uint32_t klen)
{
    if (bad_table(table) || klen > APC_MAX_KEY || (klen && !key))
        return APC_E_ARG;
    int rc = apc_seg_enter(seg);
    return rc ? rc : (int)apc_seg_leave(seg, stripe_of(seg, table, apc_xxh3_64(key, klen)));
}

static void keyed_end(apc_seg *seg, const keyed *k)
{
    if (!k->held)
        return;
    if (k->whole)
        apc_whole_release(seg);
    else
        apc_sl_release(seg, k->stripe);
}

apc_off_t *apc_find_link_wl(apc_seg *seg, apc_off_t slot_off)
{
    apc_slot *s = apc_slot_at(seg, slot_off);
    if (!s)
        return NULL;
    apc_off_t *link = bucket_of(seg, s->table, apc_slot_hash64(s));
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

static void gc_sweep_al(apc_seg *seg, uint64_t now);

/* The slot is unlinked; free it, or park it on the GC list while pinned.
 * Expects alock. */
static void retire_al(apc_seg *seg, apc_slot *s, uint64_t now)
{
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
static void drain_al(apc_seg *seg, int stripe)
{
    apc_bstripe *bs = &seg->hdr->bstripes[stripe];
    apc_off_t off = bs->lock.pending;
    STORER(&bs->lock.pending, 0);
    bs->lock.npending = 0;
    for (int n = 0; off; n++) {
        apc_slot *s = apc_slot_at(seg, off);
        if (!s || n > APC_PENDING_MAX || !(s->flags & APC_SLOT_PENDING) ||
            (s->flags & APC_SLOT_GC) || stripe_of(seg, s->table, apc_slot_hash64(s)) != stripe) {
            apc_repair_later(seg); /* what is left, the rebuild reclaims */
            return;
        }
        apc_off_t next = s->next_off;
        s->flags &= (uint8_t)~APC_SLOT_PENDING;
        retire_al(seg, s, s->mtime); /* deleted when it was parked */
        off = next;
    }
}

/* Retire a slot a keyed write has unlinked (its intent_old), with its
 * stripe odd: onto the stripe's pending list, or (under the whole lock)
 * at once. */
static void retire_kl(apc_seg *seg, const keyed *k, apc_slot *s, uint64_t now)
{
    apc_bstripe *bs = &seg->hdr->bstripes[k->stripe];
    if (k->whole) {
        retire_al(seg, s, now);
    } else {
        s->flags |= APC_SLOT_PENDING;
        s->mtime = (uint32_t)now; /* its deletion time */
        STORE(&s->next_off, bs->lock.pending);
        STORER(&bs->lock.pending, APC_OFF(seg, s));
        bs->lock.npending++;
    }
    APC_FAULT("retire.parked");
    STORER(&bs->lock.intent_old, 0);
    if (!k->whole && bs->lock.npending >= APC_PENDING_MAX && al_lock(seg) == APC_OK) {
        drain_al(seg, k->stripe);
        APC_FAULT("drain.locked");
        apc_al_release(seg);
    }
}

/* Unlink the slot that *link points at, of the given stripe, and fix the
 * stripe's counters. */
static void unlink_counted(apc_seg *seg, apc_off_t *link, apc_slot *s, int stripe)
{
    apc_stripe_stats *st = &seg->hdr->bstripes[stripe].st[s->table];
    STORE(link, s->next_off);
    APC_FAULT("remove.after_unlink");
    st->num_entries--;
    st->mem_size -= apc_sma_block_size(seg, APC_OFF(seg, s));
}

/* Unlink and retire, under the whole lock. */
static void remove_wl(apc_seg *seg, apc_off_t *link, apc_slot *s, uint64_t now)
{
    unlink_counted(seg, link, s, stripe_of(seg, s->table, apc_slot_hash64(s)));
    retire_al(seg, s, now);
}

/* Free what on the GC list nobody pins any more, or was pinned for longer
 * than gc_ttl.  Its slots are unreachable since they were unlinked (with
 * their stripe odd), so freeing them needs no seq. */
static void gc_sweep_al(apc_seg *seg, uint64_t now)
{
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

/* ------------------------------------------------------------ making room */

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
                    remove_wl(seg, link, s, now);
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
    stats_of(seg, s->table, apc_slot_hash64(s))->expired++;
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
static int make_room_wl(apc_seg *seg, uint64_t need, uint64_t now, int table)
{
    apc_header *h = seg->hdr;
    uint64_t want = apc_sma_block_for(need);
    gc_sweep_al(seg, now);
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
        apc_sma_compact_wl(seg);
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
        apc_off_t *link = apc_find_link_wl(seg, c[i].off);
        if (!link)
            continue;
        apc_slot *s = (apc_slot *)APC_PTR(seg, c[i].off);
        h->stats[s->table].evictions++;
        remove_wl(seg, link, s, now);
        APC_FAULT("evict.after_remove");
        evicted++;
        if (h->free_bytes < want + slack && i + 1 < k)
            continue;
        if (!fits_wl(seg, want))
            apc_sma_compact_wl(seg);
        if (fits_wl(seg, want)) {
            rc = APC_OK;
            break;
        }
    }
    free(c);
    if (rc != APC_OK && h->free_bytes >= want) {
        apc_sma_compact_wl(seg);
        if (fits_wl(seg, want))
            rc = APC_OK;
    }
    if (evicted)
        h->stats[table].expunges++;
    return rc;
}

/* ------------------------------------------------------------- inserting */

/* Copying a value into the segment.  The first write by a process to a
 * page of the segment costs a page fault, several microseconds in a VM;
 * pwrite() on the segment's file puts the bytes into the same page-cache
 * pages without mapping them, for about half that, but for twice what
 * memcpy costs once the pages are mapped.  So a large value goes by pwrite
 * to pages this process has never written, and by memcpy to pages it has:
 * a process filling a fresh cache (the first worker of a deployment) is
 * spared most of its page faults, and one that writes a page again pays
 * the fault then, once, as it would have anyway.  pwrite has put the bytes
 * where every mapping sees them when it returns, and the entry is
 * published after that with a release store, as after a memcpy. */
#define APC_PWRITE_MIN (16 * 1024)

static int write_value(apc_seg *seg, char *dst, const char *src, uint64_t len)
{
    if (seg->fd < 0 || len < APC_PWRITE_MIN) {
        memcpy(dst, src, len);
        return APC_OK;
    }
    uint64_t off = (uint64_t)(dst - (char *)seg->base);
    uint64_t first = off / APC_PAGE, last = (off + len - 1) / APC_PAGE;
    int64_t pid = apc_pid();
    if (LOADR(&seg->seen_pid) != pid) { /* a forked child: none of its pages is mapped yet */
        memset(seg->seen, 0, (seg->seen_pages + 7) / 8);
        STORER(&seg->seen_pid, pid);
    }
    if (last >= seg->seen_pages)
        return APC_E_CORRUPT; /* cannot be: dst is in the arena */
    uint64_t p = first;
    while (p <= last && (LOADR(&seg->seen[p >> 3]) & (1u << (p & 7))))
        p++;
    if (p > last) {
        memcpy(dst, src, len);
        return APC_OK;
    }
    while (len) {
        ssize_t n = pwrite(seg->fd, src, len, (off_t)off);
        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            /* ENOSPC in an unreserved segment, say.  The pages stay unseen,
             * so a retry does not write them through the mapping (SIGBUS). */
            return APC_E_SYS;
        }
        src += n;
        off += (uint64_t)n;
        len -= (uint64_t)n;
    }
    for (p = first; p <= last; p++)
        __atomic_fetch_or(&seg->seen[p >> 3], (uint8_t)(1u << (p & 7)), __ATOMIC_RELAXED);
    return APC_OK;
}

/* A block just allocated, made this write's intent_new: it says whose it
 * is (its slot's hash, table and a pin word nobody holds: see INTENTS)
 * before the intent names it.  Returns the pin word.  Expects alock. */
static uint64_t claim_block(apc_seg *seg, const keyed *k, apc_lock *rec, apc_off_t off)
{
    apc_slot *s = (apc_slot *)APC_PTR(seg, off);
    uint64_t pin = apc_fresh_pin(seg->hdr);
    s->hash = (uint32_t)k->hash;
    s->table = (uint8_t)k->table & 3;
    s->flags = 0;
    s->key_len = 0;
    s->val_len = 0;
    STORER(&s->pin, pin);
    STORER(&rec->intent_new, off);
    return pin;
}

/*
 * A block of exactly the size wanted, from the stripe's own pending list:
 * a slot this stripe's writers unlinked, that nobody pins.  Taken under the
 * stripe's lock alone, it spares a store the allocator and its shared cache
 * lines (a store that replaces an entry with one of the same size, the
 * common case, takes no other lock).  The block stays a used block
 * throughout; its pin word goes from the old slot's version to DEAD to the
 * next version (the allocator's counter is alock's).  It is intent_new
 * before it leaves the list: a holder that dies in between leaves a block
 * that is both, which the takeover frees once (finish_intents).  0: none.
 */
static apc_off_t reuse_kl(apc_seg *seg, keyed *k, uint64_t want, uint64_t *pin)
{
    apc_bstripe *bs = &seg->hdr->bstripes[k->stripe];
    apc_off_t *link = &bs->lock.pending;
    for (int n = 0; *link && n <= APC_PENDING_MAX; n++) {
        apc_off_t off = *link;
        apc_slot *s = apc_slot_at(seg, off);
        if (!s || !(s->flags & APC_SLOT_PENDING) || (s->flags & APC_SLOT_GC))
            return 0; /* a broken list: left to drain_al, which says so */
        uint64_t w = LOAD(&s->pin);
        if (apc_sma_block_size(seg, off) == want && !(w & APC_PIN_REFS) &&
            (w & APC_PIN_TAGMASK) == APC_PIN_TAG && w != APC_PIN_DEAD &&
            CAS(&s->pin, &w, APC_PIN_DEAD)) {
            uint32_t v = (uint32_t)((w >> 16) + 1);
            s->hash = (uint32_t)k->hash;
            s->table = (uint8_t)k->table & 3;
            s->key_len = 0;
            s->val_len = 0;
            STORER(&bs->lock.intent_new, off);
            APC_FAULT("reuse.claimed");
            *link = s->next_off;
            bs->lock.npending--;
            s->flags = 0;
            *pin = APC_PIN_MAKE(v ? v : 1);
            STORER(&s->pin, *pin);
            return off;
        }
        link = &s->next_off;
    }
    return 0;
}

/* A block for a new slot of `need` bytes, with a fresh pin word in *pin.
 * A stripe holder allocates under alock and records the block as its
 * intent_new in the same section; when the arena has no block that large
 * it trades its stripe for the whole lock, which making room needs, and
 * *moved says the key must be looked up again.  0 with *rc on failure. */
static apc_off_t alloc_kl(apc_seg *seg, const char *key, uint32_t klen, keyed *k, uint64_t need,
                          uint64_t *pin, int *moved, int *rc)
{
    apc_header *h = seg->hdr;
    apc_lock *rec = keyed_lock_rec(seg, k);
    if (!k->whole && h->bstripes[k->stripe].lock.pending) {
        apc_off_t off = reuse_kl(seg, k, apc_sma_block_for(need), pin);
        if (off)
            return off;
    }
    for (;;) {
        if (!k->whole) {
            *rc = al_lock(seg);
            if (*rc == APC_ESCALATE) {
                *moved = 1;
                if ((*rc = escalate(seg, key, klen, k)) != APC_OK)
                    return 0;
                continue;
            }
            if (*rc != APC_OK)
                return 0;
        }
        if (h->gc_head)
            gc_sweep_al(seg, k->now);
        if (h->bstripes[k->stripe].lock.pending)
            drain_al(seg, k->stripe);
        apc_off_t off = apc_sma_alloc_wl(seg, need);
        if (off) {
            *pin = claim_block(seg, k, rec, off);
            APC_FAULT("alloc.locked");
        }
        if (!k->whole)
            apc_al_release(seg);
        if (off)
            return off;
        if (k->whole)
            break;
        /* Making room evicts and moves entries in every chain. */
        *moved = 1;
        if ((*rc = escalate(seg, key, klen, k)) != APC_OK)
            return 0;
    }
    *moved = 1;
    if (LOADR(&h->repair_due)) { /* the allocator found itself broken */
        apc_repair_wl(seg, k->now);
        apc_off_t off = apc_sma_alloc_wl(seg, need);
        if (off) {
            *pin = claim_block(seg, k, rec, off);
            return off;
        }
    }
    apc_seq_begin_wl(seg, APC_SEQ_ALL);
    *rc = make_room_wl(seg, need, k->now, k->table);
    apc_seq_end_wl(seg, APC_SEQ_ALL);
    if (*rc != APC_OK)
        return 0;
    apc_off_t off = apc_sma_alloc_wl(seg, need);
    if (!off) {
        *rc = APC_E_NOMEM;
        return 0;
    }
    *pin = claim_block(seg, k, rec, off);
    return off;
}

/* Give back a block this write allocated and never published. */
static void unalloc_kl(apc_seg *seg, const keyed *k, apc_off_t off)
{
    if (!k->whole && al_lock(seg) != APC_OK)
        return; /* the stripe's next holder frees it (intent_new) */
    apc_sma_free_wl(seg, off); /* never reachable: no reader can see it */
    STORER(&keyed_lock_rec(seg, k)->intent_new, 0);
    if (!k->whole)
        apc_al_release(seg);
}

/* Insert or replace k's key with a fully built slot.  Expects the key's
 * lock (keyed_begin).  The slot is built outside alock. */
static int insert_kl(apc_seg *seg, const char *key, uint32_t klen, int type, const char *val,
                     uint64_t vlen, int64_t ival, uint64_t ttl, keyed *k, int absent_only)
{
    int table = k->table;
    uint64_t hash = k->hash, now = k->now;
    apc_header *h = seg->hdr;
    apc_lock *rec = keyed_lock_rec(seg, k);
    unsigned flags = (seg->checksums ? APC_SLOT_SUM : 0) | (type == APC_T_INT ? APC_SLOT_IVAL : 0);
    uint64_t need = apc_slot_need(klen, vlen, flags);
    uint64_t repairs = h->repairs;
    int moved = 0, rc = APC_OK; /* did entries move or go since k's lookup? */
    uint64_t pin = 0;
    apc_off_t off = alloc_kl(seg, key, klen, k, need, &pin, &moved, &rc);
    if (!off)
        return rc;
    APC_FAULT("store.after_alloc");

    apc_slot *s = (apc_slot *)APC_PTR(seg, off);
    s->hash = (uint32_t)hash;
    s->ctime = (uint32_t)now;
    s->ttl = ttl > UINT32_MAX ? UINT32_MAX : (uint32_t)ttl;
    s->val_len = (uint32_t)vlen;
    s->key_len = (uint16_t)klen;
    s->type = (uint8_t)type;
    s->table = (uint8_t)table & 3;
    s->flags = flags & 63;
    s->mtime = (uint32_t)now;
    s->atime = (uint32_t)now;
    s->hits = 0;
    if (flags & APC_SLOT_IVAL)
        *apc_slot_ival(s) = ival;
    s->pin = pin;
    memcpy(apc_slot_key(s), key, klen);
    if (vlen) {
        int wrc = write_value(seg, apc_slot_val(s), val, vlen);
        if (wrc != APC_OK) {
            unalloc_kl(seg, k, off);
            return wrc;
        }
    }
    if (flags & APC_SLOT_SUM)
        *apc_slot_sum(s) = apc_entry_sum(s, val);

    /* The old entry: as the caller found it, unless making room or a
     * repair may have moved or removed it since; then looked up again. */
    if (moved || h->repairs != repairs) {
        keyed_find(seg, key, klen, k);
        if (absent_only && k->live) {
            /* Another writer stored the key while we let our stripe go:
             * the caller decides again. */
            unalloc_kl(seg, k, off);
            return APC_RETRY_OP;
        }
    }
    if (k->found == APC_E_CORRUPT) {
        unalloc_kl(seg, k, off);
        return APC_E_CORRUPT;
    }
    apc_slot *old = k->found == APC_OK ? k->s : NULL;
    apc_off_t *bucket = bucket_of(seg, table, hash);
    if (old)
        STORER(&rec->intent_old, APC_OFF(seg, old));
    s->next_off = old ? old->next_off : *bucket;
    STORE(old ? k->link : bucket, off);
    STORER(&rec->intent_new, 0);
    APC_FAULT("store.after_publish");

    apc_stripe_stats *st = &h->bstripes[k->stripe].st[table];
    st->num_inserts++;
    st->num_entries++;
    APC_FAULT("store.mid_count");
    st->mem_size += apc_sma_block_size(seg, off);
    if (old) {
        if (apc_expired(old, now))
            st->expired++;
        st->num_entries--;
        st->mem_size -= apc_sma_block_size(seg, APC_OFF(seg, old));
        apc_seq_begin_wl(seg, k->stripe); /* readers may be at the old slot */
        retire_kl(seg, k, old, now);
        apc_seq_end_wl(seg, k->stripe);
    }
    return APC_OK;
}

static int do_store(apc_seg *seg, int table, const char *key, uint32_t klen, int type,
                    const char *val, uint64_t vlen, int64_t ival, uint64_t ttl, uint64_t now,
                    int flags)
{
    if (klen > APC_MAX_KEY || type < 0 || type > 255 || (vlen && !val))
        return APC_E_ARG;
    if (type == APC_T_INT)
        vlen = 0;
    uint64_t arena = seg->arena_end - seg->arena_off;
    unsigned sflags = (seg->checksums ? APC_SLOT_SUM : 0) | (type == APC_T_INT ? APC_SLOT_IVAL : 0);
    if (vlen > arena || vlen > APC_VAL_MAX ||
        apc_sma_block_for(apc_slot_need(klen, vlen, sflags)) > arena)
        return APC_E_TOOBIG;
    keyed k;
    int rc = keyed_begin(seg, table, key, klen, now, &k);
    if (rc != APC_OK)
        return rc;
    for (int again = 0;; again++) {
        if ((flags & APC_ADD) && k.live) {
            rc = APC_EXISTS;
        } else if (k.found == APC_E_CORRUPT) {
            rc = APC_E_CORRUPT; /* still broken after a repair */
        } else {
            rc = insert_kl(seg, key, klen, type, val, vlen, ival, ttl, &k, flags & APC_ADD);
            if (rc == APC_RETRY_OP && k.held)
                continue;
            /* Making room met a broken chain: repaired; once more. */
            if (rc == APC_E_CORRUPT && k.held && !again && escalate(seg, key, klen, &k) == APC_OK)
                continue;
        }
        break;
    }
    keyed_end(seg, &k);
    return rc;
}

int apc_store(apc_seg *seg, int table, const char *key, uint32_t klen, int type,
              const char *val, uint64_t vlen, int64_t ival, uint64_t ttl, uint64_t now,
              int flags)
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_store(seg, table, key, klen, type, val, vlen, ival, ttl, now, flags));
}

static int do_delete(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t now)
{
    keyed k;
    int rc = keyed_begin(seg, table, key, klen, now, &k);
    if (rc != APC_OK)
        return rc;
    rc = k.found;
    if (rc == APC_OK) {
        if (!k.live)
            seg->hdr->bstripes[k.stripe].st[table].expired++;
        STORER(&keyed_lock_rec(seg, &k)->intent_old, APC_OFF(seg, k.s));
        apc_seq_begin_wl(seg, k.stripe);
        unlink_counted(seg, k.link, k.s, k.stripe);
        APC_FAULT("delete.after_unlink");
        retire_kl(seg, &k, k.s, k.now);
        apc_seq_end_wl(seg, k.stripe);
        if (!k.live)
            rc = APC_NOTFOUND;
    }
    keyed_end(seg, &k);
    return rc;
}

int apc_delete(apc_seg *seg, int table, const char *key, uint32_t klen,
               uint64_t now)
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_delete(seg, table, key, klen, now));
}

static int do_inc(apc_seg *seg, int table, const char *key, uint32_t klen, int64_t step,
                  uint64_t ttl, uint64_t now, int64_t *out)
{
    if (!out)
        return APC_E_ARG;
    keyed k;
    int rc = keyed_begin(seg, table, key, klen, now, &k);
    if (rc != APC_OK)
        return rc;
    for (;;) {
        rc = k.found;
        if (k.live) {
            apc_slot *s = k.s;
            int64_t v;
            if (s->type != APC_T_INT) {
                rc = APC_E_TYPE;
            } else if (__builtin_add_overflow(LOADR(apc_slot_ival(s)), step, &v)) {
                rc = APC_E_OVERFLOW;
            } else {
                APC_FAULT("inc.in_place");
                STORE(apc_slot_ival(s), v);
                if (seg->checksums)
                    STORE(apc_slot_sum(s), int_sum(s, v));
                s->mtime = (uint32_t)k.now;
                *out = v;
            }
        } else if (rc != APC_E_CORRUPT) {
            /* Missing or expired: created as 0, then updated. */
            rc = insert_kl(seg, key, klen, APC_T_INT, NULL, 0, step, ttl, &k, 1);
            if (rc == APC_RETRY_OP && k.held)
                continue;
            if (rc == APC_OK)
                *out = step;
        }
        break;
    }
    keyed_end(seg, &k);
    return rc;
}

int apc_inc(apc_seg *seg, int table, const char *key, uint32_t klen, int64_t step,
            uint64_t ttl, uint64_t now, int64_t *out)
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_inc(seg, table, key, klen, step, ttl, now, out));
}

static int do_cas(apc_seg *seg, int table, const char *key, uint32_t klen, int64_t old,
                  int64_t new_, uint64_t now)
{
    keyed k;
    int rc = keyed_begin(seg, table, key, klen, now, &k);
    if (rc != APC_OK)
        return rc;
    rc = k.found;
    if (rc == APC_OK) {
        apc_slot *s = k.s;
        if (!k.live)
            rc = APC_NOTFOUND;
        else if (s->type != APC_T_INT)
            rc = APC_E_TYPE;
        else if (LOADR(apc_slot_ival(s)) != old)
            rc = APC_MISMATCH;
        else {
            STORE(apc_slot_ival(s), new_);
            if (seg->checksums)
                STORE(apc_slot_sum(s), int_sum(s, new_));
            s->mtime = (uint32_t)k.now;
        }
    }
    keyed_end(seg, &k);
    return rc;
}

int apc_cas(apc_seg *seg, int table, const char *key, uint32_t klen, int64_t old,
            int64_t new_, uint64_t now)
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_cas(seg, table, key, klen, old, new_, now));
}

/* touch: give a live entry a new hard ttl counted from now (0: no ttl, it
 * never expires), as if it had been stored now with that ttl.  Only the ttl
 * word changes (ctime stays the creation time), so a lock-free reader sees
 * the old ttl or the new one, never a mix.  APC_NOTFOUND if the key is
 * missing or expired. */
static int do_touch(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t ttl,
                    uint64_t now)
{
    keyed k;
    int rc = keyed_begin(seg, table, key, klen, now, &k);
    if (rc != APC_OK)
        return rc;
    rc = k.found;
    if (rc == APC_OK) {
        if (!k.live) {
            rc = APC_NOTFOUND;
        } else {
            /* expired once ctime + ttl' < now', i.e. once now + ttl < now' */
            uint64_t age = k.now > k.s->ctime ? k.now - k.s->ctime : 0;
            uint64_t t = ttl ? age + ttl : 0;
            STORE(&k.s->ttl, t > UINT32_MAX ? UINT32_MAX : (uint32_t)t);
        }
    }
    keyed_end(seg, &k);
    return rc;
}

int apc_touch(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t ttl,
              uint64_t now)
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_touch(seg, table, key, klen, ttl, now));
}

static int do_clear(apc_seg *seg, int table, uint64_t now)
{
    if (bad_table(table))
        return APC_E_ARG;
    now = apc_now(now);
    int rc = wl_enter(seg, APC_SEQ_ALL);
    if (rc != APC_OK)
        return rc;
    apc_header *h = seg->hdr;
    apc_off_t *b = apc_buckets(seg, table);
    for (uint64_t i = 0; i < seg->geom[table].nslots; i++) {
        uint64_t cap = apc_walk_cap(seg);
        while (b[i] && --cap) {
            apc_slot *s = apc_slot_at(seg, b[i]);
            if (!s) {
                b[i] = 0; /* a corrupt tail: the repair reclaims it */
                apc_repair_later(seg);
                break;
            }
            remove_wl(seg, &b[i], s, now);
            APC_FAULT("clear.mid");
        }
    }
    gc_sweep_al(seg, now);
    apc_table_stats *st = &h->stats[table];
    for (int i = 0; i < APC_NSEQ; i++)
        h->bstripes[i].st[table].num_inserts = 0;
    st->expunges = 0;
    st->start_time = now;
    for (int i = 0; i < APC_NSTRIPES; i++) {
        STORER(&h->stripes[i].hits[table], 0);
        STORER(&h->stripes[i].misses[table], 0);
    }
    wl_leave(seg, APC_SEQ_ALL);
    return APC_OK;
}

int apc_clear(apc_seg *seg, int table, uint64_t now)
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_clear(seg, table, now));
}

/* ------------------------------------------------------------ entry() */

static int do_entry_begin(apc_seg *seg, int table, const char *key, uint32_t klen,
                    uint64_t tid, uint64_t now, int64_t *out)
{
    if (klen > APC_MAX_KEY)
        return APC_E_ARG;
    uint64_t hash = apc_xxh3_64(key, klen);
    if (bad_table(table) || !out)
        return APC_E_ARG;
    now = apc_now(now);
    int rc = wl_enter(seg, NO_SEQ);
    if (rc != APC_OK)
        return rc;
    apc_header *h = seg->hdr;
    apc_off_t *link;
    apc_slot *s;
    rc = find_wl(seg, table, key, klen, hash, &link, &s);
    if (rc == APC_OK && !apc_expired(s, now)) {
        rc = APC_EXISTS;
        goto out;
    }
    if (rc == APC_E_CORRUPT)
        goto out;
    int64_t pid = apc_pid();
    int free_i = -1;
    for (int i = 0; i < APC_NELOCKS; i++) {
        apc_elock *e = &h->elocks[i];
        if (!e->pid) {
            if (free_i < 0)
                free_i = i;
            continue;
        }
        if (e->hash == hash && e->table == (uint32_t)table) {
            out[0] = i;
            out[1] = e->pid;
            rc = (e->pid == pid && e->tid == tid) ? APC_BUSY_SELF : APC_BUSY;
            goto out;
        }
    }
    if (free_i < 0) {
        out[0] = -1;
        out[1] = 0;
        rc = APC_BUSY; /* every record taken: wait for one */
        goto out;
    }
    h->elocks[free_i] = (apc_elock){.hash = hash, .pid = pid, .tid = tid, .since = now,
                                    .table = (uint32_t)table, .start = apc_proc_start()};
    out[0] = free_i;
    out[1] = pid;
    rc = APC_OK;
out:
    wl_leave(seg, NO_SEQ);
    return rc;
}

int apc_entry_begin(apc_seg *seg, int table, const char *key, uint32_t klen,
                    uint64_t tid, uint64_t now, int64_t *out)
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_entry_begin(seg, table, key, klen, tid, now, out));
}

static int do_entry_end(apc_seg *seg, int64_t token, uint64_t tid)
{
    if (token < 0 || token >= APC_NELOCKS)
        return APC_E_ARG;
    int rc = wl_enter(seg, NO_SEQ);
    if (rc != APC_OK)
        return rc;
    apc_elock *e = &seg->hdr->elocks[token];
    if (e->pid == apc_pid() && e->tid == tid)
        e->pid = 0;
    else
        rc = APC_NOTFOUND;
    wl_leave(seg, NO_SEQ);
    return rc;
}

int apc_entry_end(apc_seg *seg, int64_t token, uint64_t tid)
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_entry_end(seg, token, tid));
}

static int do_entry_takeover(apc_seg *seg, int64_t token, int64_t dead_pid, uint64_t tid, uint64_t now)
{
    if (token < 0 || token >= APC_NELOCKS || dead_pid <= 0)
        return APC_E_ARG;
    now = apc_now(now);
    int rc = wl_enter(seg, NO_SEQ);
    if (rc != APC_OK)
        return rc;
    apc_elock *e = &seg->hdr->elocks[token];
    if (e->pid == dead_pid) {
        e->pid = apc_pid();
        e->tid = tid;
        e->since = now;
        e->start = apc_proc_start();
    } else {
        rc = APC_BUSY;
    }
    wl_leave(seg, NO_SEQ);
    return rc;
}

int apc_entry_takeover(apc_seg *seg, int64_t token, int64_t dead_pid, uint64_t tid, uint64_t now)
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_entry_takeover(seg, token, dead_pid, tid, now));
}


static int do_recover(apc_seg *seg, int64_t pid, uint64_t now)
{
    if (pid <= 0)
        return APC_E_ARG;
    now = apc_now(now);
    int rc = wl_enter(seg, APC_SEQ_ALL);
    if (rc != APC_OK)
        return rc;
    apc_header *h = seg->hdr;
    int n = 0;
    for (int i = 0; i < APC_NELOCKS; i++) {
        if (h->elocks[i].pid == pid) {
            h->elocks[i].pid = 0;
            n++;
        }
    }
    for (int i = 0; i < APC_NPINS; i++) {
        apc_pin_rec *r = &h->pins[i];
        int64_t p = LOAD(&r->pid);
        if (p == pid) {
            apc_off_t off = r->slot_off;
            uint64_t ident = r->pinword;
            STORE(&r->pid, 0);
            if ((off & 7) == 0 && apc_in_arena(seg, off, sizeof(apc_slot)))
                unpin((apc_slot *)APC_PTR(seg, off), ident);
            n++;
        } else if (p == -pid) {
            STORE(&r->pid, 0); /* died while claiming: no pin was counted */
        }
    }
    gc_sweep_al(seg, now);
    wl_leave(seg, APC_SEQ_ALL);
    return n;
}

/* Is the process generating entry() record token still the one that took
 * it?  (Its pid alive and started when it did.) */
static int do_entry_holder_alive(apc_seg *seg, int64_t token)
{
    if (token < 0 || token >= APC_NELOCKS)
        return APC_E_ARG;
    apc_elock *e = &seg->hdr->elocks[token];
    int64_t pid = LOADR(&e->pid);
    return pid == 0 ? 0 : apc_pid_alive_since(pid, LOADR(&e->start));
}

int apc_entry_holder_alive(apc_seg *seg, int64_t token)
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : (int)apc_seg_leave(seg, do_entry_holder_alive(seg, token));
}

int apc_recover(apc_seg *seg, int64_t pid, uint64_t now)
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_recover(seg, pid, now));
}

/* ------------------------------------------------------------ reporting */

static void rec_of(apc_seg *seg, apc_slot *s, uint64_t now, apc_entry_rec *r)
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

static int do_info_get(apc_seg *seg, int table, apc_info *o)
{
    if (bad_table(table) || !o)
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
    o->num_inserts = sum.num_inserts;
    o->expunges = LOADR(&st->expunges);
    o->evictions = LOADR(&st->evictions);
    o->expired = sum.expired;
    o->start_time = LOADR(&st->start_time);
    for (int i = 0; i < APC_NSTRIPES; i++) {
        o->num_hits += LOADR(&h->stripes[i].hits[table]);
        o->num_misses += LOADR(&h->stripes[i].misses[table]);
        o->corrupt_reads += LOADR(&h->stripes[i].corrupt[table]);
        o->waited_reads += LOADR(&h->stripes[i].waited[table]);
    }
    o->lock_steals = LOADR(&h->alock.steals);
    for (int i = 0; i < APC_NSEQ; i++)
        o->lock_steals += LOADR(&h->bstripes[i].lock.steals);
    o->checksums = seg->checksums;
    o->repairs = LOADR(&h->repairs);
    o->compactions = LOADR(&h->compactions);
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
        int lrc = wl_enter(seg, NO_SEQ);
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
        wl_leave(seg, NO_SEQ);
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
    int rc = wl_enter(seg, NO_SEQ);
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
    wl_leave(seg, NO_SEQ);
    return (int)(k > 0x7fffffff ? 0x7fffffff : k);
}

int apc_sma_info_get(apc_seg *seg, apc_sma_info *o, uint64_t *blocks, uint64_t cap)
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_sma_info_get(seg, o, blocks, cap));
}

static int do_key_info(apc_seg *seg, int table, const char *key, uint32_t klen,
                       uint64_t now, apc_entry_rec *out)
{
    if (!out)
        return APC_E_ARG;
    keyed k;
    int rc = keyed_begin(seg, table, key, klen, now, &k);
    if (rc != APC_OK)
        return rc;
    rc = k.found;
    if (rc == APC_OK) {
        if (!k.live)
            rc = APC_NOTFOUND;
        else
            rec_of(seg, k.s, k.now, out);
    }
    wl_leave(seg, NO_SEQ);
    return rc;
}

int apc_key_info(apc_seg *seg, int table, const char *key, uint32_t klen,
                 uint64_t now, apc_entry_rec *out)
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_key_info(seg, table, key, klen, now, out));
}

/* Copy out entries (records followed by their keys) in one lock hold.  If
 * cap is too small, returns APC_E_SMALL with the size needed in buf[0..8). */
static int64_t do_snapshot(apc_seg *seg, int table, uint64_t now, int flags, char *buf, uint64_t cap)
{
    if (bad_table(table) || !buf || cap < 8)
        return APC_E_ARG;
    now = apc_now(now);
    int rc = wl_enter(seg, NO_SEQ);
    if (rc != APC_OK)
        return rc;
    apc_header *h = seg->hdr;
    uint64_t used = 0;
    /* No more records than blocks: a damaged chain that loops is walked
     * (capped) once, not once per bucket that reaches it. */
    uint64_t left = apc_walk_cap(seg);
    apc_entry_rec r;
#define EMIT(s)                                                              \
    do {                                                                     \
        uint64_t sz = sizeof r + apc_key_pad((s)->key_len);                  \
        left--;                                                              \
        if (used + sz <= cap) {                                              \
            rec_of(seg, (s), now, &r);                                       \
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
    wl_leave(seg, NO_SEQ);
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
 * and stop after APC_CHUNK_RECORDS entries at a bucket's end, or when the
 * caller's buffer is full: the caller comes back for the rest, and writers
 * get the lock in between.  What comes out is a snapshot per chunk, not of
 * the whole table; an entry that moves between buckets cannot exist (a
 * bucket is its key's), so no live entry is reported twice.
 */
#define APC_CHUNK_RECORDS 2048

static int64_t do_snapshot_chunk(apc_seg *seg, int table, uint64_t now, uint64_t cursor[2],
                                 char *buf, uint64_t cap)
{
    if (bad_table(table) || !buf || !cursor || cap < 8)
        return APC_E_ARG;
    now = apc_now(now);
    int rc = wl_enter(seg, NO_SEQ);
    if (rc != APC_OK)
        return rc;
    apc_off_t *b = apc_buckets(seg, table);
    uint64_t nslots = seg->geom[table].nslots;
    uint64_t used = 0, records = 0, need = 0;
    uint64_t i = cursor[0];
    /* No more records in all than blocks fit in the arena: a damaged chain
     * that loops is walked (capped) once, not once per bucket reaching it. */
    uint64_t cap_all = apc_walk_cap(seg), done = cursor[1] < cap_all ? cursor[1] : cap_all;
    apc_entry_rec r;
    for (; i < nslots && records < APC_CHUNK_RECORDS && done + records < cap_all; i++) {
        uint64_t start = used, start_records = records, wcap = apc_walk_cap(seg);
        int full = 0;
        for (apc_off_t off = b[i]; off && --wcap && done + records < cap_all;) {
            apc_slot *s = apc_slot_at(seg, off);
            if (!s)
                break;
            uint64_t sz = sizeof r + apc_key_pad(s->key_len);
            if (used + sz > cap)
                full = 1;
            if (!full) {
                rec_of(seg, s, now, &r);
                memcpy(buf + used, &r, sizeof r);
                memcpy(buf + used + sizeof r, apc_slot_key(s), s->key_len);
            }
            used += sz;
            records++;
            off = s->next_off;
        }
        if (full) {
            if (start == 0)
                need = used; /* one bucket alone is more than the buffer */
            used = start;   /* this bucket goes in the next chunk */
            records = start_records;
            break;
        }
    }
    wl_leave(seg, NO_SEQ);
    if (need) {
        memcpy(buf, &need, sizeof need);
        return APC_E_SMALL;
    }
    cursor[0] = done + records >= cap_all ? nslots : i;
    cursor[1] = done + records;
    return (int64_t)used;
}

int64_t apc_snapshot_chunk(apc_seg *seg, int table, uint64_t now, uint64_t cursor[2], char *buf,
                           uint64_t cap)
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_snapshot_chunk(seg, table, now, cursor, buf, cap));
}

/* Entries that are not hard-expired at now, from bucket *cursor on, a
 * chunk at a time (see above). */
static int64_t do_count_live_chunk(apc_seg *seg, int table, uint64_t now, uint64_t cursor[2])
{
    if (bad_table(table) || !cursor)
        return APC_E_ARG;
    now = apc_now(now);
    int rc = wl_enter(seg, NO_SEQ);
    if (rc != APC_OK)
        return rc;
    int64_t n = 0;
    uint64_t seen = 0, nslots = seg->geom[table].nslots;
    uint64_t cap_all = apc_walk_cap(seg), done = cursor[1] < cap_all ? cursor[1] : cap_all;
    apc_off_t *b = apc_buckets(seg, table);
    uint64_t i = cursor[0];
    for (; i < nslots && seen < 4 * APC_CHUNK_RECORDS && done + seen < cap_all; i++) {
        uint64_t cap = apc_walk_cap(seg);
        for (apc_off_t off = b[i]; off && --cap && done + seen < cap_all; seen++) {
            apc_slot *s = apc_slot_at(seg, off);
            if (!s)
                break;
            n += !apc_expired(s, now);
            off = s->next_off;
        }
    }
    wl_leave(seg, NO_SEQ);
    cursor[0] = done + seen >= cap_all ? nslots : i;
    cursor[1] = done + seen;
    return n;
}

int64_t apc_count_live_chunk(apc_seg *seg, int table, uint64_t now, uint64_t cursor[2])
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_count_live_chunk(seg, table, now, cursor));
}

/* ------------------------------------------------------------- repair */

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
 * entry finds it there and frees nothing.  What cannot be settled that
 * way is left to a whole repair.
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
    int st = stripe_of(seg, table, h64);
    for (int tries = 0; tries < 64; tries++) {
        uint64_t sq;
        if (apc_seq_read_begin(seg, st, &sq) != APC_OK)
            return -1;
        int r = 0;
        uint64_t cap = apc_walk_cap(seg);
        for (apc_off_t o = LOAD(bucket_of(seg, table, h64)); o;) {
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
 * unlinked if it did not; and since it may have died between two of its
 * counter updates, count the stripe again.  Expects stripe i's lock, and
 * alock if have_alock.  APC_ESCALATE: a whole repair is owed first
 * (alock was lost to a dead holder, or an intent is not to be believed);
 * the intents wait for it.
 */
static int finish_intents(apc_seg *seg, int i, int have_alock)
{
    apc_lock *l = &seg->hdr->bstripes[i].lock;
    apc_off_t nw = LOADR(&l->intent_new), old = LOADR(&l->intent_old);
    apc_slot *ns = nw ? intent_slot(seg, nw) : NULL, *os = old ? intent_slot(seg, old) : NULL;
    if ((nw && (!ns || (LOADR(&ns->pin) & APC_PIN_REFS))) ||
        (old && (!os || stripe_of(seg, os->table, apc_slot_hash64(os)) != i)))
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
    if (nw && (ns->flags & APC_SLOT_PENDING) && !nw_parked)
        goto owed; /* another stripe's */
    if (nw && !nw_linked && !nw_parked) {
        uint64_t h64 = apc_slot_hash64(ns);
        if (stripe_of(seg, ns->table, h64) != i) {
            int r = linked_at(seg, ns->table, h64, nw);
            if (r != 0)
                goto owed;
        }
    }
    int free_new = nw && !nw_linked && !nw_parked;
    int retire_old = old && !old_linked && !old_parked && old != nw;
    if (free_new || retire_old || bs->lock.pending) {
        if (!have_alock && al_lock(seg) != APC_OK)
            return APC_ESCALATE;
        uint64_t now = apc_now(0);
        apc_seq_begin_wl(seg, i);
        drain_al(seg, i);
        if (free_new)
            apc_sma_free_wl(seg, nw); /* checks that it is a used block */
        if (retire_old)
            retire_al(seg, os, now);
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

/* Walk one chain, truncating it at the first link that fails its checks;
 * append what it keeps to live[]. */
static void collect_chain(apc_seg *seg, apc_off_t *link, int table, uint64_t bucket,
                          const uint64_t *bad, uint64_t nbad, apc_off_t *live, uint64_t *nlive,
                          uint64_t max)
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
 *      agree, big enough for its key and value, in the right bucket);
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
    apc_seq_begin_wl(seg, APC_SEQ_ALL);
    int rc = repair_wl(seg, now);
    apc_seq_end_wl(seg, APC_SEQ_ALL);
    return rc;
}

/* Does the header's set-once geometry differ from what this handle
 * validated at attach?  A few loads and compares per write section. */
static int geometry_scribbled(const apc_seg *seg)
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
    for (int pass = 0; pass < 8; pass++) {
        nlive = 0;
        for (int t = 0; t < APC_NTABLES; t++) {
            apc_off_t *b = apc_buckets(seg, t);
            for (uint64_t i = 0; i < seg->geom[t].nslots; i++)
                collect_chain(seg, &b[i], t, i, bad, nbad, live, &nlive, max);
        }
        collect_chain(seg, &h->gc_head, -1, 0, bad, nbad, live, &nlive, max);
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
            apc_stripe_stats *st = stats_of(seg, s->table, apc_slot_hash64(s));
            st->num_entries++;
            st->mem_size += apc_sma_block_size(seg, live[i]);
        }
    }
    STORER(&h->repair_due, 0);
    free(live);
    free(bad);
    return APC_OK;
}

#ifdef APC_DEBUG
/* Set the pin version counter (to test its wrap). */
int apc_debug_set_version(apc_seg *seg, uint64_t v)
{
    if (apc_seg_enter(seg) != APC_OK)
        return APC_E_CLOSED;
    int rc = apc_wl_lock(seg);
    if (rc == APC_OK) {
        seg->hdr->next_version = v;
        apc_wl_unlock(seg);
    }
    return (int)apc_seg_leave(seg, rc);
}
#else
int apc_debug_set_version(apc_seg *seg, uint64_t v)
{
    (void)seg;
    (void)v;
    return APC_E_ARG;
}
#endif
