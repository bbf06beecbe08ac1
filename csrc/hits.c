/*
 * hits.c -- the hit logs: an entry's exact hit count, without a write to
 * the entry on every read.
 *
 * Counting a hit in the entry writes the entry's line on every read, and
 * processes reading the same key pass that line back and forth between
 * their cores: a key that every worker reads (a configuration, a flag)
 * makes them all queue on one line.  So a process that reads an entry a
 * second time while its first read is still in the process's hints
 * (apc_hit_seen) gives it a record in its own hit log (apc_internal.h, "A
 * hit log"), and from then on reads it without a pin and counts its hits
 * in the record (apc_hit_note): lines no other process writes.  An entry
 * read once gets no record: a large set read evenly would fill the log
 * with records of one hit each, and folding them would cost more than
 * counting in the entries.  A full log is folded into its entries, each
 * record with one pin, one add and one unpin, with the lines fetched ahead
 * so that their transfers overlap.
 *
 * An entry's count is then its own plus its records in every log.  The
 * readers of counts (key_info, the listings) read both under the logs'
 * seq words, so a fold never shows a hit twice or not at all.  What makes
 * a record stale is what makes the count go: the entry deleted, replaced
 * or rewritten gets a new version or none.  What moves an entry and keeps
 * its count (compaction, the rebuild) makes every stripe odd and then folds
 * every log, under the whole lock; a reader notes a hit only if its
 * stripe's seq and its entry's version are still what it read, checked
 * under the log's lk: so no record outlives the move of its entry.
 *
 * Locks: lk is taken with CAS and never waited on (a reader that finds it
 * taken counts in the entry), so it is outside the lock order; a fold
 * pins entries, as readers do.  The whole lock's fold waits for a live
 * holder of lk, who holds it for a few instructions and takes no lock
 * inside it.
 */
#include <sched.h>
#include <stdlib.h>

#include "apc_internal.h"

#define APC_HITREC_MAX 0xFFFFFFFFu

static apc_hitlog *log_at(apc_seg *seg, int j) { return &seg->hdr->hitlogs[j]; }

static uint32_t ver_of(uint64_t ident) { return (uint32_t)(ident >> 16); }

/* The slot a record names, if it can be one. */
static apc_slot *rec_slot(apc_seg *seg, apc_off_t off)
{
    if ((off & 7) || !apc_in_arena(seg, off, sizeof(apc_slot)))
        return NULL;
    return (apc_slot *)APC_PTR(seg, off);
}

/* Add c to a pinned slot's hits, stopping at APC_HITS_MAX. */
static void add_hits(apc_slot *s, uint64_t c)
{
    uint32_t h = LOADR(&s->hits);
    for (;;) {
        if (h >= APC_HITS_MAX)
            return;
        uint32_t nh = c < APC_HITS_MAX - h ? h + (uint32_t)c : APC_HITS_MAX;
        if (CAS(&s->hits, &h, nh))
            return;
    }
}

/* Add c to the hits of slot s if it still has version ident, pinned
 * meanwhile (a slot that nobody pins may be freed under us). */
static void add_if_same(apc_slot *s, uint64_t ident, uint64_t c)
{
    uint64_t w = LOAD(&s->pin);
    while ((w & ~APC_PIN_REFS) == ident && (w & APC_PIN_REFS) != APC_PIN_REFS) {
        if (CAS(&s->pin, &w, w + 1)) {
            add_hits(s, c);
            apc_unpin(s, ident);
            return;
        }
    }
}

static void add_to_slot(apc_seg *seg, apc_off_t off, uint32_t ver, uint64_t c)
{
    apc_slot *s = rec_slot(seg, off);
    if (s && c)
        add_if_same(s, APC_PIN_MAKE(ver), c);
}

void apc_hit_direct(apc_slot *s, uint64_t ident) { add_if_same(s, ident, 1); }

/* Fold records [from, n) of a log whose lk we hold, seq odd. */
static void fold_range(apc_seg *seg, apc_hitlog *lg, uint32_t from, uint32_t n)
{
    for (uint32_t i = from; i < n; i++) {
        apc_slot *s = rec_slot(seg, LOADR(&lg->rec[i].off));
        if (s)
            __builtin_prefetch(s, 1, 3);
    }
    for (uint32_t i = from; i < n; i++) {
        APC_FAULT("hits.fold");
        apc_hitrec *r = &lg->rec[i];
        add_to_slot(seg, LOADR(&r->off), LOADR(&r->ver), LOADR(&r->count));
        APC_FAULT("hits.fold_added");
        STORER(&lg->done, i + 1);
    }
}

static inline uint32_t log_n(apc_hitlog *lg)
{
    uint32_t n = LOADR(&lg->n);
    return n < APC_HITLOG_N ? n : APC_HITLOG_N;
}

/* Fold a log whose lk we hold.  A holder killed in here leaves seq odd
 * and done at the record it was at (rescue, below). */
static uint32_t fold(apc_seg *seg, apc_hitlog *lg)
{
    uint32_t n = log_n(lg);
    uint64_t sq = LOADR(&lg->seq) & ~1ULL;
    STORER(&lg->done, 0);
    STORE(&lg->seq, sq + 1);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    fold_range(seg, lg, 0, n);
    STORE(&lg->n, 0);
    STORER(&lg->done, 0);
    STORER(&lg->folds, LOADR(&lg->folds) + 1);
    STORE(&lg->seq, sq + 2);
    return n;
}

/* Repair a log taken over from a dead holder: a fold it was in is
 * finished, without the record it was at (added or not: dropping it may
 * lose that record's count, and never counts it twice). */
static void repair(apc_seg *seg, apc_hitlog *lg)
{
    uint64_t sq = LOADR(&lg->seq);
    if (!(sq & 1))
        return; /* killed noting a hit: the records are whole (n moves last) */
    uint32_t n = log_n(lg), done = LOADR(&lg->done);
    if (done < n)
        fold_range(seg, lg, done + 1, n);
    STORE(&lg->n, 0);
    STORER(&lg->done, 0);
    STORE(&lg->seq, sq + 1);
}

/* Take log lg's lk from a dead holder and repair it; 1 if it is free now. */
static int rescue(apc_seg *seg, apc_hitlog *lg)
{
    int64_t h = LOAD(&lg->lk);
    if (h == 0)
        return 1;
    if (h == apc_pid() || apc_pid_alive(h))
        return 0;
    if (!CAS(&lg->lk, &h, apc_pid()))
        return 0;
    repair(seg, lg);
    STORE(&lg->lk, 0);
    return 1;
}

int apc_hits_rescue(apc_seg *seg, int j)
{
    apc_hitlog *lg = log_at(seg, j);
    return LOAD(&lg->lk) != 0 && rescue(seg, lg);
}

/* The hint of a slot: the top byte of its offset times the golden ratio. */
static unsigned hint_of(apc_off_t off)
{
    return (unsigned)(((uint64_t)off * 0x9E3779B97F4A7C15ULL) >> 56);
}

/* Does record pos (1-based) of lg name (off, ver)?  Read racily: what it
 * says is checked again under lk before it is written. */
static inline int rec_is(apc_hitlog *lg, uint32_t pos, apc_off_t off, uint32_t ver)
{
    if (!pos || pos > log_n(lg))
        return 0;
    apc_hitrec *r = &lg->rec[pos - 1];
    return LOADR(&r->off) == off && LOADR(&r->ver) == ver;
}

int apc_hit_hot(apc_seg *seg, apc_slot *s, uint64_t ident)
{
    apc_off_t off = APC_OFF(seg, s);
    struct apc_hint *h = &seg->hint[hint_of(off)];
    if (LOADR(&h->off) != off)
        return 0;
    uint32_t pos = LOADR(&h->pos);
    return rec_is(apc_my_log(seg), pos, off, ver_of(ident)) ? (int)pos : 0;
}

/* Append a record of (off, ver) with count c to a log whose lk we hold,
 * folding it first if it is full; its position. */
static uint32_t append(apc_seg *seg, apc_hitlog *lg, apc_off_t off, uint32_t ver, uint32_t c)
{
    uint32_t n = log_n(lg);
    if (n == APC_HITLOG_N)
        n = (fold(seg, lg), 0);
    apc_hitrec *r = &lg->rec[n];
    STORER(&r->off, off);
    STORER(&r->ver, ver);
    STORER(&r->count, c);
    STORE(&lg->n, n + 1);
    struct apc_hint *h = &seg->hint[hint_of(off)];
    STORER(&h->off, off);
    STORER(&h->pos, n + 1);
    return n + 1;
}

void apc_hit_seen(apc_seg *seg, apc_slot *s, uint64_t ident)
{
    apc_off_t off = APC_OFF(seg, s);
    struct apc_hint *h = &seg->hint[hint_of(off)];
    if (LOADR(&h->off) != off) {
        /* Read once: a candidate.  Most entries of a large, evenly read
         * set never come back before their hint is taken, and never get a
         * record, whose fold would cost more than counting in the entry. */
        STORER(&h->off, off);
        STORER(&h->pos, 0);
        return;
    }
    apc_hitlog *lg = apc_my_log(seg);
    int64_t free_ = 0;
    if (!CAS(&lg->lk, &free_, LOADR(&seg->stripe_pid)))
        return;
    uint32_t ver = ver_of(ident);
    if (!rec_is(lg, LOADR(&h->pos), off, ver) && (LOAD(&s->pin) & ~APC_PIN_REFS) == ident)
        append(seg, lg, off, ver, 0);
    STORE(&lg->lk, 0);
}

int apc_hit_note(apc_seg *seg, apc_slot *s, uint64_t ident, int stripe, uint64_t sq, uint32_t pos,
                 int table)
{
    apc_hitlog *lg = apc_my_log(seg);
    int64_t free_ = 0;
    if (!CAS(&lg->lk, &free_, LOADR(&seg->stripe_pid)))
        return APC_BUSY;
    APC_FAULT("hits.note");
    /* Is what was read still there?  (apc_seq_read_valid orders the
     * copy's loads before its own.)  The seq also keeps a record from
     * outliving its entry's move: compaction makes every stripe odd before
     * it folds the logs, so a hit noted after that fold is not noted. */
    if (!apc_seq_read_valid(seg, stripe, sq) || (LOAD(&s->pin) & ~APC_PIN_REFS) != ident) {
        STORE(&lg->lk, 0);
        return APC_AGAIN;
    }
    apc_off_t off = APC_OFF(seg, s);
    uint32_t ver = ver_of(ident);
    uint32_t c;
    if (rec_is(lg, pos, off, ver) && (c = LOADR(&lg->rec[pos - 1].count)) < APC_HITREC_MAX)
        STORER(&lg->rec[pos - 1].count, c + 1);
    else
        append(seg, lg, off, ver, 1); /* folded meanwhile, or full */
    STORER(&lg->hits[table], LOADR(&lg->hits[table]) + 1);
    STORE(&lg->lk, 0);
    return APC_OK;
}

/* Take lk of log lg, waiting for a live holder (who holds it for a few
 * instructions) and taking it over from a dead one.  0 if a holder kept it
 * past *start + the read wait (stopped, a reused pid, or a scribbled word):
 * the log is passed over.  One *start for the logs of one pass, so that a
 * pass waits that long in all. */
static int take_waiting(apc_seg *seg, apc_hitlog *lg, uint64_t *start)
{
    for (unsigned spins = 0;; spins++) {
        int64_t free_ = 0;
        if (CAS(&lg->lk, &free_, apc_pid()))
            return 1;
        if (spins < 64)
            continue;
        uint64_t t = apc_mono_ns();
        if (!*start)
            *start = t;
        else if (t - *start > APC_READ_WAIT_NS)
            return 0;
        if (spins % 64 == 0)
            (void)rescue(seg, lg);
        sched_yield();
    }
}

static void fold_log(apc_seg *seg, apc_hitlog *lg, uint64_t *start)
{
    if (!take_waiting(seg, lg, start))
        return;
    repair(seg, lg);
    if (log_n(lg))
        fold(seg, lg);
    STORE(&lg->lk, 0);
}

void apc_hits_fold_all_wl(apc_seg *seg)
{
    APC_ASSERT(apc_wl_held(seg));
    uint64_t start = 0;
    for (int j = 0; j < APC_NSTRIPES; j++)
        if (LOAD(&log_at(seg, j)->n) || LOAD(&log_at(seg, j)->lk))
            fold_log(seg, log_at(seg, j), &start);
}

void apc_hits_reset_wl(apc_seg *seg, int table)
{
    APC_ASSERT(apc_wl_held(seg));
    uint64_t start = 0;
    for (int j = 0; j < APC_NSTRIPES; j++) {
        apc_hitlog *lg = log_at(seg, j);
        int held = take_waiting(seg, lg, &start); /* its holder adds to it unlocked */
        STORER(&lg->hits[table], 0);
        if (held) {
            repair(seg, lg);
            STORE(&lg->lk, 0);
        }
    }
}

int apc_hits_fold(apc_seg *seg)
{
    int rc = apc_seg_enter(seg);
    if (rc != APC_OK)
        return rc;
    apc_hitlog *lg = apc_my_log(seg);
    uint32_t n = 0;
    uint64_t start = 0;
    if (take_waiting(seg, lg, &start)) {
        repair(seg, lg);
        n = fold(seg, lg);
        STORE(&lg->lk, 0);
    }
    return (int)apc_seg_leave(seg, (int64_t)n);
}

/* Wait until no log is in a fold; the seq words then.  A fold whose
 * holder died is finished (rescue).  One that outlasts the read wait (its
 * holder stopped) is read through, and the log marked in *stalled, so that
 * a walk waits for it once, not at every entry: its records may then be
 * counted once too few or too many until the holder goes on. */
static void seqs_even(apc_seg *seg, uint64_t *sq, uint64_t *stalled)
{
    uint64_t start = 0;
    for (int j = 0; j < APC_NSTRIPES; j++) {
        apc_hitlog *lg = log_at(seg, j);
        for (unsigned spins = 0;; spins++) {
            sq[j] = LOAD(&lg->seq);
            if (!(sq[j] & 1) || (*stalled >> j & 1))
                break;
            if (spins < 64)
                continue;
            uint64_t t = apc_mono_ns();
            if (!start) {
                start = t;
            } else if (t - start > APC_READ_WAIT_NS) {
                *stalled |= 1ULL << j;
                break;
            }
            (void)rescue(seg, lg);
            sched_yield();
        }
    }
}

static int seqs_same(apc_seg *seg, const uint64_t *sq, uint64_t stalled)
{
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    for (int j = 0; j < APC_NSTRIPES; j++)
        if (!(stalled >> j & 1) && LOADR(&log_at(seg, j)->seq) != sq[j])
            return 0;
    return 1;
}

static uint64_t cap_hits(uint64_t h) { return h < APC_HITS_MAX ? h : APC_HITS_MAX; }

static uint64_t hits_of(apc_seg *seg, apc_slot *s, uint64_t *stalled)
{
    apc_off_t off = APC_OFF(seg, s);
    uint32_t ver = ver_of(LOAD(&s->pin));
    uint64_t sq[APC_NSTRIPES], h = 0;
    for (int tries = 0; tries < 100; tries++) {
        seqs_even(seg, sq, stalled);
        h = LOAD(&s->hits);
        for (int j = 0; j < APC_NSTRIPES; j++) {
            apc_hitlog *lg = log_at(seg, j);
            uint32_t n = LOAD(&lg->n);
            for (uint32_t i = 0; i < n && i < APC_HITLOG_N; i++)
                if (LOADR(&lg->rec[i].off) == off && LOADR(&lg->rec[i].ver) == ver)
                    h += LOADR(&lg->rec[i].count);
        }
        if (seqs_same(seg, sq, *stalled))
            break;
    }
    return cap_hits(h);
}

uint64_t apc_hits_of(apc_seg *seg, apc_slot *s)
{
    uint64_t stalled = 0;
    return hits_of(seg, s, &stalled);
}

static int off_cmp(const void *a, const void *b)
{
    apc_off_t x = *(const apc_off_t *)a, y = *(const apc_off_t *)b;
    return x < y ? -1 : x > y;
}

void apc_hitsnap_take(apc_seg *seg, apc_hitsnap *hs)
{
    uint32_t k = 0;
    hs->stalled = 0;
    for (int j = 0; j < APC_NSTRIPES; j++) {
        apc_hitlog *lg = log_at(seg, j);
        uint32_t n = LOAD(&lg->n);
        for (uint32_t i = 0; i < n && i < APC_HITLOG_N; i++)
            hs->off[k++] = LOADR(&lg->rec[i].off);
    }
    hs->n = k;
    qsort(hs->off, k, sizeof hs->off[0], off_cmp);
}

uint64_t apc_hitsnap_hits(apc_seg *seg, apc_hitsnap *hs, apc_slot *s)
{
    apc_off_t off = APC_OFF(seg, s);
    uint32_t lo = 0, hi = hs->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (hs->off[mid] < off)
            lo = mid + 1;
        else
            hi = mid;
    }
    /* No record of it when the walk began: its own count is all of it, as
     * of then or later (a record made since is a later hit, and a fold of
     * one moves it whole). */
    if (lo == hs->n || hs->off[lo] != off)
        return cap_hits(LOAD(&s->hits));
    return hits_of(seg, s, &hs->stalled);
}
