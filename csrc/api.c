/*
 * api.c -- the engine's entry points: every read and every keyed write,
 * clear, entry() and recover, each a wrapper (apc_X) around a worker
 * (do_X) that runs with what its lock discipline asks.  The layers below:
 * lock.c (the locks), sma.c (blocks), chains.c (chains, pins, the GC and
 * pending lists, intents), room.c (sweeps, eviction, compaction) and
 * repair.c; report.c and check.c sit beside this file.
 *
 * HOW A READ WORKS
 *
 * A reader takes no lock.  It reads its stripe's seqlock word (waiting
 * while it is odd, at most APC_READ_WAIT_NS), walks the chain with every
 * offset bounds-checked and the walk capped, reads the found slot's pin
 * word, and checks that seq has not moved: if it has, everything it saw
 * may be freed memory, and it starts again.
 *
 * It pins the slot by CAS on exactly the word it saw, so a slot that was
 * retired or reused in the meantime cannot be pinned.  With the pin held it
 * copies the value and bumps the entry's hits and atime; then it unpins.
 *
 * A hot entry is read without the pin: one that the reader's own hit log
 * holds a record of (it read it again soon after, hits.c), of at most
 * APC_PEEK_MAX bytes, checksums off and its atime already this second.
 * The caller copies the value, and keeps the copy only if the stripe's seq
 * and the slot's pin word are what they were before it; the hit goes into
 * the record.  Such a read writes no line that another process reads, so
 * a key that every worker reads scales with them.  Readers never block
 * each other.
 *
 * HOW A WRITE WORKS
 *
 * A keyed write takes its key's stripe lock (see LOCKS in apc_internal.h)
 * and looks the key up: one prologue for every keyed write (keyed_begin).
 * It builds the new slot in full in a block that no reader can reach (one
 * from the stripe's pending list, or from the allocator under alock),
 * then publishes it with one atomic store into the link that pointed at
 * the old slot (or the bucket head), which unlinks the old slot in the
 * same store.  Only then, with seq odd, does it retire the old slot onto
 * the stripe's pending list.  Unlink, then free: a writer killed between
 * any two steps leaves either the old or the new entry reachable, and its
 * intents say what else it held (chains.c).  A write that needs more than
 * its stripe (a full arena, a broken chain, a repair owed) trades its
 * stripe for the whole lock and looks again (escalate).
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

/* ------------------------------------------------------------ lock-free */

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
        if (apc_int_sum(s, v) == sum) {
            *out = v;
            return APC_OK;
        }
        if (i >= 64) {
            uint64_t now = apc_mono_ns();
            if (!start)
                start = now;
            else if (now - start > APC_READ_WAIT_NS)
                return apc_sl_busy(seg, apc_stripe_of(seg, s->table, apc_slot_hash64(s))) ? APC_WAITED
                                                                            : APC_E_CORRUPT;
            sched_yield();
        }
        v = LOAD(apc_slot_ival(s));
    }
}

static int read_begin(apc_seg *seg, int st, uint64_t *sq, int nowait);

/* Find and pin.  Returns APC_OK with *out pinned, APC_NOTFOUND, APC_WAITED
 * (a writer held the bucket for longer than a reader waits), or
 * APC_E_CORRUPT; *ident is the pin word's tag|version.  With pk, an entry
 * that this process's hit log holds a record of (a hot one, hits.c) is
 * not pinned: FOUND_UNPINNED, with the seq it was found under in pk. */
#define FOUND_UNPINNED 1
static int find_entry(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t hash,
                      apc_slot **out, uint64_t *ident, int nowait, apc_ref *pk)
{
    int st = apc_stripe_of(seg, table, hash);
    for (unsigned tries = 0;; tries++) {
        uint64_t sq;
        int rc = read_begin(seg, st, &sq, nowait);
        if (rc != APC_OK)
            return rc;
        apc_off_t off = 0;
        rc = apc_chain_walk(seg, table, key, klen, hash, &off);
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
        if (pk && (pk->pos = apc_hit_hot(seg, s, id)) > 0) {
            *out = s;
            *ident = id;
            pk->seq = sq;
            pk->stripe = st;
            return FOUND_UNPINNED;
        }
        for (;;) {
            if ((w & APC_PIN_REFS) == APC_PIN_REFS)
                return APC_WAITED; /* 65535 pins: come back later */
            if (CAS(&s->pin, &w, w + 1)) {
                if (!apc_slot_fits(seg, s)) {
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
/* Pin an entry found unpinned: APC_OK, APC_AGAIN (it changed: look
 * again) or APC_WAITED (65535 pins). */
static int pin_found(apc_slot *s, uint64_t ident)
{
    uint64_t w = LOAD(&s->pin);
    while ((w & ~APC_PIN_REFS) == ident) {
        if ((w & APC_PIN_REFS) == APC_PIN_REFS)
            return APC_WAITED;
        if (CAS(&s->pin, &w, w + 1))
            return APC_OK;
    }
    return APC_AGAIN;
}

/* Can a hot entry found unpinned be read so (HOW A READ WORKS)?  Then
 * fill pk for the caller's copy. */
static int peekable(apc_seg *seg, apc_slot *s, uint64_t ident, uint64_t now, int table, apc_ref *pk)
{
    if (seg->checksums || LOADR(&s->atime) != (uint32_t)now || apc_expired(s, now))
        return 0;
    /* Its lengths were checked (apc_slot_fits) when it got its record, for
     * this version, and a version's are set once: what is read here is
     * either those or, if the entry changed, thrown away by peek_end.
     * Bounded meanwhile, so that a copy of a changing entry stays in the
     * arena. */
    uint64_t type = s->type, len = type == APC_T_INT ? 8 : LOADR(&s->val_len);
    const char *val = type == APC_T_INT ? (const char *)apc_slot_ival(s) : apc_slot_val(s);
    if (len > APC_PEEK_MAX || !apc_in_arena(seg, APC_OFF(seg, val), len))
        return 0;
    pk->ptr = val;
    pk->len = len;
    pk->ival = type == APC_T_INT ? LOAD((const int64_t *)val) : 0;
    pk->slot = s;
    pk->ident = ident;
    pk->rec = APC_REF_PEEK;
    pk->table = table;
    return 1;
}

/* What both fetches share: check the key and table, read the clock (into
 * *now), find and pin a live entry, check it, count a miss.
 * On APC_OK the caller owns one pin on *out (ident for the unpin) and *ival
 * is an int entry's checked value.  With pk, a hot entry may come back
 * unpinned instead: FOUND_UNPINNED, pk filled for the caller's copy and
 * peek_end. */
static int fetch_pinned(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t *now,
                        apc_slot **out, uint64_t *ident, int64_t *ival, apc_ref *pk)
{
    int nowait = table & APC_NOWAIT;
    table &= ~APC_NOWAIT;
    if (apc_bad_table(table) || klen > APC_MAX_KEY)
        return APC_E_ARG;
    *now = apc_now(*now);
    uint64_t hash = apc_xxh3_64(key, klen);
    apc_slot *s;
    int rc;
    for (;;) {
        rc = find_entry(seg, table, key, klen, hash, &s, ident, nowait, pk);
        if (rc != FOUND_UNPINNED)
            break;
        if (peekable(seg, s, *ident, *now, table, pk)) {
            *out = s;
            return FOUND_UNPINNED;
        }
        rc = pin_found(s, *ident);
        if (rc == APC_OK && !apc_slot_fits(seg, s)) {
            apc_unpin(s, *ident);
            rc = APC_E_CORRUPT;
        }
        if (rc != APC_AGAIN)
            break;
        pk = NULL; /* it changed under us: look again, and pin */
    }
    if (rc == APC_WAITED && nowait)
        return rc; /* the caller asks again, waiting */
    if (rc != APC_OK)
        return count_failed_read(seg, table, rc);
    if (apc_expired(s, *now)) {
        apc_unpin(s, *ident);
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
        apc_unpin(s, *ident);
        return count_failed_read(seg, table, rc);
    }
    APC_FAULT("fetch.pinned");
    *out = s;
    return APC_OK; /* the caller counts the hit once it has the value */
}

/* After the caller's copy of an unpinned read: APC_OK (the copy holds,
 * and the hit is counted) or APC_AGAIN. */
static int64_t peek_end(apc_seg *seg, apc_ref *ref)
{
    apc_slot *s = ref->slot;
    int64_t rc = apc_hit_note(seg, s, ref->ident, ref->stripe, ref->seq, (uint32_t)ref->pos,
                              ref->table);
    if (rc == APC_BUSY) {
        /* The log is another thread's just now: count in the entry. */
        rc = apc_seq_read_valid(seg, ref->stripe, ref->seq) &&
                     (LOAD(&s->pin) & ~APC_PIN_REFS) == ref->ident
                 ? APC_OK
                 : APC_AGAIN;
        if (rc == APC_OK) {
            apc_hit_direct(s, ref->ident);
            ADD(&apc_my_stripe(seg)->hits[ref->table], 1);
        }
    }
    ref->slot = NULL;
    ref->rec = -1;
    return rc;
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
    apc_ref ref, *pk = &ref;
    int rc;
    for (int tries = 1;; tries++) {
        rc = fetch_pinned(seg, table, key, klen, &now, &s, &ident, &ival, pk);
        if (rc != FOUND_UNPINNED)
            break;
        uint64_t type = s->type, vlen = ref.len;
        if (type != APC_T_INT && vlen > cap) {
            /* The caller asks again with a buffer this size (and that call
             * counts the hit). */
            if (apc_seq_read_valid(seg, ref.stripe, ref.seq)) {
                memcpy(buf, &vlen, sizeof vlen);
                return APC_E_SMALL;
            }
        } else {
            memcpy(buf, type == APC_T_INT ? (const char *)&ref.ival : ref.ptr, vlen);
            if (peek_end(seg, &ref) == APC_OK)
                return (int64_t)((vlen << 8) | type);
        }
        if (tries == APC_PEEK_TRIES)
            pk = NULL;
    }
    if (rc != APC_OK)
        return rc;
    uint64_t type = s->type;
    uint64_t vlen = s->val_len;
    if (vlen > cap && type != APC_T_INT) {
        /* The caller tries again with a buffer of this size (and that
         * call counts the hit). */
        apc_unpin(s, ident);
        memcpy(buf, &vlen, sizeof vlen);
        return APC_E_SMALL;
    }
    count_hit(seg, table, s, now);
    if (type == APC_T_INT) {
        memcpy(buf, &ival, sizeof ival);
        vlen = 8;
    } else {
        /* A large copy keeps its pin on record, so that apc_recover() can
         * release it if this process dies while copying. */
        int r = vlen > APC_IO_BUF ? record_pin(seg, s, ident, now) : -1;
        memcpy(buf, apc_slot_val(s), vlen);
        unrecord_pin(seg, r);
    }
    apc_unpin(s, ident);
    apc_hit_seen(seg, s, ident); /* unpinned: a reader dying in here holds nothing */
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
 * caller dies while copying.  With APC_PEEK, a small value may come back
 * unpinned (apc.h). */
int64_t apc_fetch_ref(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t now,
                      apc_ref *ref)
{
    int64_t rc = apc_seg_enter(seg);
    if (rc != APC_OK)
        return rc;
    if (!ref)
        return apc_seg_leave(seg, APC_E_ARG);
    ref->slot = NULL;
    int peek = table & APC_PEEK;
    table &= ~APC_PEEK;
    apc_slot *s;
    uint64_t ident;
    int64_t ival;
    rc = fetch_pinned(seg, table, key, klen, &now, &s, &ident, &ival, peek ? ref : NULL);
    if (rc == FOUND_UNPINNED)
        return (int64_t)((ref->len << 8) | s->type); /* still in flight */
    if (rc != APC_OK)
        return apc_seg_leave(seg, rc);
    count_hit(seg, table & ~APC_NOWAIT, s, now);
    uint64_t type = s->type;
    ref->pos = peek != 0; /* the release notes the read (apc_hit_seen) */
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

int64_t apc_ref_release(apc_seg *seg, apc_ref *ref)
{
    if (!ref->slot)
        return APC_OK;
    if (ref->rec == APC_REF_PEEK)
        return apc_seg_leave(seg, peek_end(seg, ref));
    if (ref->rec >= 0) {
        apc_pin_rec *r = &seg->hdr->pins[ref->rec];
        if (LOAD(&r->pid) == apc_pid())
            STORE(&r->pid, 0);
    }
    apc_unpin((apc_slot *)ref->slot, ref->ident);
    if (ref->pos)
        apc_hit_seen(seg, ref->slot, ref->ident);
    ref->slot = NULL;
    ref->rec = -1;
    return apc_seg_leave(seg, APC_OK);
}

static int do_exists(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t now)
{
    if (apc_bad_table(table) || klen > APC_MAX_KEY)
        return APC_E_ARG;
    uint64_t hash = apc_xxh3_64(key, klen);
    now = apc_now(now);
    int st = apc_stripe_of(seg, table, hash);
    for (;;) {
        uint64_t sq;
        int rc = read_begin(seg, st, &sq, 0);
        if (rc != APC_OK)
            break;
        apc_off_t off = 0;
        rc = apc_chain_walk(seg, table, key, klen, hash, &off);
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

#define APC_RETRY_OP (-1001) /* the key changed while the lock was traded: decide again */

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
    if (stolen || (repair && (LOADR(&seg->hdr->repair_due) || apc_geometry_scribbled(seg)))) {
        apc_repair_wl(seg, 0);
        apc_whole_seq_reset(seg);
    }
    for (int i = 0; i < APC_NSEQ; i++) {
        apc_bstripe *bs = &seg->hdr->bstripes[i];
        if (LOADR(&bs->lock.intent_new) | LOADR(&bs->lock.intent_old))
            apc_finish_intents(seg, i, 1);
        else if (bs->lock.pending)
            apc_drain_al(seg, i);
    }
    return APC_OK;
}

int apc_wl_lock(apc_seg *seg) { return whole_lock(seg, 1); }
int apc_wl_lock_for_check(apc_seg *seg) { return whole_lock(seg, 0); }

int apc_wl_enter(apc_seg *seg, int stripe)
{
    int rc = whole_lock(seg, 1);
    if (rc == APC_OK && stripe != NO_SEQ)
        apc_seq_begin_wl(seg, stripe);
    return rc;
}

void apc_wl_leave(apc_seg *seg, int stripe)
{
    if (stripe != NO_SEQ)
        apc_seq_end_wl(seg, stripe);
    apc_whole_release(seg);
}

void apc_wl_leave_ro(apc_seg *seg) { apc_whole_release_ro(seg); }

/* Stripe i's lock for a keyed write, with what its last holder left
 * finished.  APC_ESCALATE (nothing held): a whole repair is owed first. */
static int stripe_lock(apc_seg *seg, int i, int stolen)
{
    /* A stripe taken from a dead holder whose alock is orphaned too: it
     * died in the allocator, or doing the whole lock's work (a compaction,
     * say, with every stripe odd).  That is the whole repair's, and the
     * stripe's seq stays odd until it has run. */
    if (__builtin_expect(stolen, 0) && apc_lock_orphaned(&seg->hdr->alock))
        apc_repair_later(seg);
    if (__builtin_expect(LOADR(&seg->hdr->repair_due) || apc_geometry_scribbled(seg), 0)) {
        apc_sl_release(seg, i);
        return APC_ESCALATE;
    }
    apc_lock *l = &seg->hdr->bstripes[i].lock;
    if (__builtin_expect(stolen | LOADR(&l->intent_new) | LOADR(&l->intent_old), 0)) {
        int rc = apc_finish_intents(seg, i, 0);
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
 * finish what the writer left (by the whole repair, if that is what it
 * left), and let the reader look again: 1.  A live writer is left alone: 0. */
static int stripe_rescue(apc_seg *seg, int i)
{
    int stolen;
    if (apc_sl_try(seg, i, &stolen) != APC_OK)
        return 0;
    int rc = stripe_lock(seg, i, stolen);
    if (rc == APC_OK) {
        apc_sl_seq_reset(seg, i); /* odd with the lock free: garbage */
        apc_sl_release(seg, i);
    } else if (rc == APC_ESCALATE && whole_lock(seg, 1) == APC_OK) {
        apc_whole_release(seg);
    }
    return 1;
}

/* A walk's lock for one bucket of stripe i (report.c): the stripe's, or
 * the whole lock when its last holder left what only a whole repair
 * finishes.  *whole says which apc_walk_leave lets go. */
int apc_walk_enter(apc_seg *seg, int i, int *whole)
{
    int stolen;
    *whole = 0;
    int rc = apc_sl_acquire(seg, i, &stolen);
    if (rc != APC_OK)
        return rc;
    if (__builtin_expect(stripe_lock(seg, i, stolen) != APC_ESCALATE, 1))
        return APC_OK;
    *whole = 1; /* stripe_lock let the stripe go */
    return whole_lock(seg, 1);
}

void apc_walk_leave(apc_seg *seg, int i, int whole)
{
    if (whole)
        apc_whole_release(seg);
    else
        apc_sl_release(seg, i);
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

static void keyed_find(apc_seg *seg, const char *key, uint32_t klen, keyed *k)
{
    k->found = apc_find_locked(seg, k->table, key, klen, k->hash, &k->link, &k->s);
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
    if (apc_bad_table(table) || klen > APC_MAX_KEY)
        return APC_E_ARG;
    k->hash = apc_xxh3_64(key, klen);
    k->now = apc_now(now);
    k->table = table;
    k->stripe = apc_stripe_of(seg, table, k->hash);
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
    if (apc_bad_table(table) || klen > APC_MAX_KEY || (klen && !key))
        return APC_E_ARG;
    int rc = apc_seg_enter(seg);
    return rc ? rc : (int)apc_seg_leave(seg, apc_stripe_of(seg, table, apc_xxh3_64(key, klen)));
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

/* Retire a slot a keyed write has unlinked (its intent_old), with its
 * stripe odd: onto the stripe's pending list, or (under the whole lock)
 * at once. */
static void retire_kl(apc_seg *seg, const keyed *k, apc_slot *s, uint64_t now)
{
    APC_ASSERT(k->whole ? apc_wl_held(seg) : apc_sl_held(seg, k->stripe));
    apc_bstripe *bs = &seg->hdr->bstripes[k->stripe];
    if (k->whole) {
        apc_retire_al(seg, s, now);
    } else {
        s->flags |= APC_SLOT_PENDING;
        s->mtime = (uint32_t)now; /* its deletion time */
        STORE(&s->next_off, bs->lock.pending);
        STORER(&bs->lock.pending, APC_OFF(seg, s));
        bs->lock.npending++;
    }
    APC_FAULT("retire.parked");
    STORER(&bs->lock.intent_old, 0);
    if (!k->whole && bs->lock.npending >= APC_PENDING_MAX && apc_al_lock(seg) == APC_OK) {
        apc_drain_al(seg, k->stripe);
        APC_FAULT("drain.locked");
        apc_al_release(seg);
    }
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

/* The pin word after w for a slot that a stripe's writer hands on
 * without alock (which the counter of apc_fresh_pin needs): w's version
 * plus one, which no reader of w can mistake for it; 0 wraps to 1. */
static uint64_t next_pin(uint64_t w)
{
    uint32_t v = (uint32_t)((w >> 16) + 1);
    return APC_PIN_MAKE(v ? v : 1);
}

/* What a store says of its entry besides the key and the value bytes: a
 * new entry's times, TTL, type and length, a hit count of 0, an int's
 * value. */
static void describe_entry(apc_slot *s, uint64_t now, int type, uint64_t vlen, int64_t ival,
                           uint64_t ttl, unsigned flags)
{
    s->ctime = (uint32_t)now;
    s->ttl = ttl > UINT32_MAX ? UINT32_MAX : (uint32_t)ttl;
    s->val_len = (uint32_t)vlen;
    s->type = (uint8_t)type;
    s->mtime = (uint32_t)now;
    s->atime = (uint32_t)now;
    s->hits = 0;
    if (flags & APC_SLOT_IVAL)
        *apc_slot_ival(s) = ival;
}

/* A block about to be this write's intent_new says whose it is (its
 * slot's hash and table, no key yet: see INTENTS in chains.c) before the
 * intent names it. */
static void claim_identity(apc_slot *s, const keyed *k)
{
    s->hash = (uint32_t)k->hash;
    s->table = (uint8_t)k->table & 3;
    s->key_len = 0;
    s->val_len = 0;
}

/* A block just allocated, made this write's intent_new, with a pin word
 * nobody holds.  Returns the pin word.  Expects alock. */
static uint64_t claim_block(apc_seg *seg, const keyed *k, apc_lock *rec, apc_off_t off)
{
    apc_slot *s = (apc_slot *)APC_PTR(seg, off);
    uint64_t pin = apc_fresh_pin(seg->hdr);
    claim_identity(s, k);
    s->flags = 0;
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
    APC_ASSERT(k->whole ? apc_wl_held(seg) : apc_sl_held(seg, k->stripe));
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
            claim_identity(s, k); /* flags keep PENDING while it is listed */
            STORER(&bs->lock.intent_new, off);
            APC_FAULT("reuse.claimed");
            *link = s->next_off;
            bs->lock.npending--;
            s->flags = 0;
            *pin = next_pin(w);
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
    APC_ASSERT(k->whole ? apc_wl_held(seg) : apc_sl_held(seg, k->stripe));
    apc_header *h = seg->hdr;
    apc_lock *rec = keyed_lock_rec(seg, k);
    if (!k->whole && h->bstripes[k->stripe].lock.pending) {
        apc_off_t off = reuse_kl(seg, k, apc_sma_block_for(need), pin);
        if (off)
            return off;
    }
    for (;;) {
        if (!k->whole) {
            *rc = apc_al_lock(seg);
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
            apc_gc_sweep_al(seg, k->now);
        if (h->bstripes[k->stripe].lock.pending)
            apc_drain_al(seg, k->stripe);
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
    apc_off_t off = 0;
    if (LOADR(&h->repair_due)) { /* the allocator found itself broken */
        apc_repair_wl(seg, k->now);
        off = apc_sma_alloc_wl(seg, need);
    }
    if (!off) {
        apc_seq_begin_wl(seg, APC_SEQ_ALL);
        *rc = apc_make_room_wl(seg, need, k->now, k->table);
        apc_seq_end_wl(seg, APC_SEQ_ALL);
        if (*rc != APC_OK)
            return 0;
        if (!(off = apc_sma_alloc_wl(seg, need))) {
            *rc = APC_E_NOMEM;
            return 0;
        }
    }
    *pin = claim_block(seg, k, rec, off);
    return off;
}

/* Give back a block this write allocated and never published. */
static void unalloc_kl(apc_seg *seg, const keyed *k, apc_off_t off)
{
    APC_ASSERT(k->whole ? apc_wl_held(seg) : apc_sl_held(seg, k->stripe));
    if (!k->whole && apc_al_lock(seg) != APC_OK)
        return; /* the stripe's next holder frees it (intent_new) */
    apc_sma_free_wl(seg, off); /* never reachable: no reader can see it */
    STORER(&keyed_lock_rec(seg, k)->intent_new, 0);
    if (!k->whole)
        apc_al_release(seg);
}

/*
 * A store that replaces an entry with one of the same block size and
 * layout, a small value and nobody pinning the entry, rewrites the entry
 * where it is: the bucket's link, a new block and the stripe's pending
 * list stay as they are, so a second core loses none of those lines to
 * the write.  With the stripe odd (readers look again), the slot's pin
 * word goes by CAS from (version, no refs) to DEAD, which no reader can
 * pin; the slot is rewritten (its key stays); the next version is
 * published.  A reader that pinned it first makes the CAS fail, and the
 * store takes the usual path.  The slot is both intents meanwhile (see
 * INTENTS): a successor that finds its pin still DEAD unlinks and frees
 * it, since its value may be half written; one that finds a live pin keeps
 * it, old value or new.  1 if done, 0 if the caller must build a new slot.
 */
#define APC_IN_PLACE_MAX 1024 /* bytes of value copied with the stripe odd */

static int replace_in_place_kl(apc_seg *seg, keyed *k, int type, const char *val, uint64_t vlen,
                               int64_t ival, uint64_t ttl, unsigned flags, uint64_t need)
{
    APC_ASSERT(k->whole ? apc_wl_held(seg) : apc_sl_held(seg, k->stripe));
    apc_slot *s = k->s;
    if (k->whole || k->found != APC_OK || vlen > APC_IN_PLACE_MAX || (s->flags & 63) != flags)
        return 0;
    apc_off_t off = APC_OFF(seg, s);
    uint64_t w = LOAD(&s->pin);
    if ((w & APC_PIN_REFS) || (w & APC_PIN_TAGMASK) != APC_PIN_TAG || w == APC_PIN_DEAD ||
        apc_sma_block_size(seg, off) != apc_sma_block_for(need))
        return 0;
    /* Every store sweeps the GC list while it holds anything, as one that
     * allocates does (alloc_kl). */
    if (LOADR(&seg->hdr->gc_head)) {
        if (apc_al_lock(seg) != APC_OK)
            return 0; /* the usual path meets the same, and escalates */
        if (seg->hdr->gc_head)
            apc_gc_sweep_al(seg, k->now);
        apc_al_release(seg);
    }
    apc_lock *rec = keyed_lock_rec(seg, k);
    int was_expired = apc_expired(s, k->now);
    apc_seq_begin_wl(seg, k->stripe);
    STORER(&rec->intent_new, off);
    STORER(&rec->intent_old, off);
    int done = CAS(&s->pin, &w, APC_PIN_DEAD);
    if (done) {
        APC_FAULT("store.in_place");
        describe_entry(s, k->now, type, vlen, ival, ttl, flags);
        if (vlen)
            memcpy(apc_slot_val(s), val, vlen);
        if (flags & APC_SLOT_SUM)
            *apc_slot_sum(s) = apc_entry_sum(s, val);
        STORER(&s->pin, next_pin(w));
        APC_FAULT("store.in_place_published");
    }
    STORER(&rec->intent_new, 0);
    STORER(&rec->intent_old, 0);
    apc_seq_end_wl(seg, k->stripe);
    if (!done)
        return 0;
    ADD(&apc_my_stripe(seg)->inserts[k->table], 1);
    if (was_expired)
        seg->hdr->bstripes[k->stripe].st[k->table].expired++;
    return 1;
}

/* Insert or replace k's key with a fully built slot.  Expects the key's
 * lock (keyed_begin).  The slot is built outside alock. */
static int insert_kl(apc_seg *seg, const char *key, uint32_t klen, int type, const char *val,
                     uint64_t vlen, int64_t ival, uint64_t ttl, keyed *k, int absent_only)
{
    APC_ASSERT(k->whole ? apc_wl_held(seg) : apc_sl_held(seg, k->stripe));
    int table = k->table;
    uint64_t hash = k->hash, now = k->now;
    apc_header *h = seg->hdr;
    apc_lock *rec = keyed_lock_rec(seg, k);
    unsigned flags = (seg->checksums ? APC_SLOT_SUM : 0) | (type == APC_T_INT ? APC_SLOT_IVAL : 0);
    uint64_t need = apc_slot_need(klen, vlen, flags);
    uint64_t repairs = h->repairs;
    int moved = 0, rc = APC_OK; /* did entries move or go since k's lookup? */
    uint64_t pin = 0;
    if (replace_in_place_kl(seg, k, type, val, vlen, ival, ttl, flags, need))
        return APC_OK;
    apc_off_t off = alloc_kl(seg, key, klen, k, need, &pin, &moved, &rc);
    if (!off)
        return rc;
    APC_FAULT("store.after_alloc");

    apc_slot *s = (apc_slot *)APC_PTR(seg, off);
    s->hash = (uint32_t)hash;
    s->key_len = (uint16_t)klen;
    s->table = (uint8_t)table & 3;
    s->flags = flags & 63;
    describe_entry(s, now, type, vlen, ival, ttl, flags);
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
    apc_off_t *bucket = apc_bucket_of(seg, table, hash);
    if (old)
        STORER(&rec->intent_old, APC_OFF(seg, old));
    s->next_off = old ? old->next_off : *bucket;
    STORE(old ? k->link : bucket, off);
    STORER(&rec->intent_new, 0);
    APC_FAULT("store.after_publish");

    /* The stripe's counters are written only when they change: a store
     * that replaces an entry with one of the same size leaves their line
     * alone. */
    ADD(&apc_my_stripe(seg)->inserts[table], 1);
    apc_stripe_stats *st = &h->bstripes[k->stripe].st[table];
    uint64_t size = apc_sma_block_size(seg, off);
    if (!old) {
        st->num_entries++;
        APC_FAULT("store.mid_count");
        st->mem_size += size;
    } else {
        if (apc_expired(old, now))
            st->expired++;
        uint64_t was = apc_sma_block_size(seg, APC_OFF(seg, old));
        if (size != was)
            st->mem_size += size - was;
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
        apc_unlink_counted(seg, k.link, k.s, k.stripe);
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
                    STORE(apc_slot_sum(s), apc_int_sum(s, v));
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
                STORE(apc_slot_sum(s), apc_int_sum(s, new_));
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
    if (apc_bad_table(table))
        return APC_E_ARG;
    now = apc_now(now);
    int rc = apc_wl_enter(seg, APC_SEQ_ALL);
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
            apc_remove_wl(seg, &b[i], s, now);
            APC_FAULT("clear.mid");
        }
    }
    apc_gc_sweep_al(seg, now);
    apc_table_stats *st = &h->stats[table];
    st->expunges = 0;
    st->start_time = now;
    for (int i = 0; i < APC_NSTRIPES; i++) {
        STORER(&h->stripes[i].hits[table], 0);
        STORER(&h->stripes[i].misses[table], 0);
        STORER(&h->stripes[i].inserts[table], 0);
    }
    apc_hits_reset_wl(seg, table);
    apc_wl_leave(seg, APC_SEQ_ALL);
    return APC_OK;
}

int apc_clear(apc_seg *seg, int table, uint64_t now)
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_clear(seg, table, now));
}

/* One key's record, as apcstat and key_info() show it. */
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
        else {
            apc_rec_of(seg, k.s, k.now, out);
            out->hits = apc_hits_of(seg, k.s);
        }
    }
    keyed_end(seg, &k);
    return rc;
}

int apc_key_info(apc_seg *seg, int table, const char *key, uint32_t klen,
                 uint64_t now, apc_entry_rec *out)
{
    int rc = apc_seg_enter(seg);
    return rc ? rc : apc_seg_leave(seg, do_key_info(seg, table, key, klen, now, out));
}

/* ------------------------------------------------------------ entry() */

static int do_entry_begin(apc_seg *seg, int table, const char *key, uint32_t klen,
                    uint64_t tid, uint64_t now, int64_t *out)
{
    if (klen > APC_MAX_KEY)
        return APC_E_ARG;
    uint64_t hash = apc_xxh3_64(key, klen);
    if (apc_bad_table(table) || !out)
        return APC_E_ARG;
    now = apc_now(now);
    int rc = apc_wl_enter(seg, NO_SEQ);
    if (rc != APC_OK)
        return rc;
    apc_header *h = seg->hdr;
    apc_off_t *link;
    apc_slot *s;
    rc = apc_find_locked(seg, table, key, klen, hash, &link, &s);
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
    apc_wl_leave(seg, NO_SEQ);
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
    int rc = apc_wl_enter(seg, NO_SEQ);
    if (rc != APC_OK)
        return rc;
    apc_elock *e = &seg->hdr->elocks[token];
    if (e->pid == apc_pid() && e->tid == tid)
        e->pid = 0;
    else
        rc = APC_NOTFOUND;
    apc_wl_leave(seg, NO_SEQ);
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
    int rc = apc_wl_enter(seg, NO_SEQ);
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
    apc_wl_leave(seg, NO_SEQ);
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
    int rc = apc_wl_enter(seg, APC_SEQ_ALL);
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
                apc_unpin((apc_slot *)APC_PTR(seg, off), ident);
            n++;
        } else if (p == -pid) {
            STORE(&r->pid, 0); /* died while claiming: no pin was counted */
        }
    }
    for (int j = 0; j < APC_NSTRIPES; j++)
        if (LOAD(&h->hitlogs[j].lk) == pid)
            n += apc_hits_rescue(seg, j); /* it died in its hit log */
    apc_gc_sweep_al(seg, now);
    apc_wl_leave(seg, APC_SEQ_ALL);
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

#ifdef APC_DEBUG
/* Set the pin version counter (to test its wrap). */
int apc_debug_set_version(apc_seg *seg, uint64_t v)
{
    if (apc_seg_enter(seg) != APC_OK)
        return APC_E_CLOSED;
    int rc = apc_wl_lock(seg);
    if (rc == APC_OK) {
        seg->hdr->next_version = v;
        apc_whole_release(seg);
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
