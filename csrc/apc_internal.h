/*
 * apc_internal.h -- the segment's structures, the lock order, the offset
 * macros and the helpers that every engine file shares.
 *
 * LOCKS, AND THE ORDER IN WHICH THEY ARE TAKEN
 *
 * Writers do not serialise each other: each key's writes take the lock of
 * its bucket stripe, and only allocating and freeing take the allocator's.
 *
 *   1. hdr->bstripes[i].lock   one lock per stripe of buckets (bucket index
 *                   % APC_NSEQ, in both tables).  It guards the chains of
 *                   those buckets, the slots reachable from them (their
 *                   link, ival, ttl, mtime), the stripe's seq word and the
 *                   stripe's share of the counters.  store, add, delete,
 *                   inc, dec, cas and touch take only their key's stripe
 *                   (and the allocator lock, briefly, to allocate or free).
 *   2. hdr->alock   the allocator lock: the free lists and their counters,
 *                   the GC list, next_version, the pin and entry() tables,
 *                   and the whole-table counters.  Held for an allocation
 *                   or a free, never while a value is copied.
 *   3. hdr->bstripes[i].lock.seq  the seqlock words, one per stripe, in
 *                   the line of the stripe's lock, written only by the
 *                   holder of stripe i's lock.  A writer that unlinks or
 *                   frees memory reachable from a bucket makes that
 *                   bucket's stripe odd first and even again when done.
 *                   Readers walk chains optimistically and throw away what
 *                   they saw if seq moved.  Building a slot in free memory
 *                   and publishing it with one atomic store needs no bump:
 *                   a reader that could still hold a pointer into that
 *                   memory started before the section that freed it, whose
 *                   bump already dooms its validation.  A reader waits for
 *                   an odd stripe at most APC_READ_WAIT_NS, then takes a
 *                   miss (APC_WAITED).
 *
 * Order: stripe locks in ascending index, then alock, then seq.  A keyed
 * write holds one stripe; what touches every chain (making room by
 * eviction or compaction, clear, repair, check, the info walks, entry()
 * and the pin table) takes every stripe in order and then alock: "the
 * whole lock" (apc_wl_lock), under which the _wl functions run.  A keyed
 * write that finds it needs the whole lock (a full arena, a broken chain,
 * a repair owed) lets its stripe go and takes the whole lock from the
 * start: it never waits for a lower stripe while holding a higher one.
 *
 * Every lock is our own robust futex lock (lock.c).  A waiter takes over a
 * lock whose holder died, and repairs what that lock guards:
 *
 *   - a stripe lock: the dead holder's INTENTS (below) are finished, and
 *     the stripe's seq is made even.  Nothing else was in its hands.
 *   - alock: the free lists may be half-spliced, so a whole repair is owed
 *     (hdr->repair_due): the taker lets go, and the next holder of the
 *     whole lock rebuilds the allocator from the reachable entries.
 *   - the whole lock, taken over from a holder of it: a whole repair.
 *
 * INTENTS
 *
 * A stripe holder records in its lock what an allocation or a free in
 * flight would leave unreachable if it died: intent_new, a block it
 * allocated (written in the same alock section as the allocation, or taken
 * from the stripe's pending list) until it is published; intent_old, a
 * slot it is about to unlink, until it is parked on the stripe's pending
 * list (PENDING in chains.c).  Whoever takes the stripe lock next with an
 * intent set frees intent_new if no chain holds it and retires intent_old
 * if none holds it any more and it was not parked: a block is never lost,
 * and never freed twice.  Both naming the same slot mean it is being
 * rewritten in place (a same-size replace, api.c): the next holder keeps
 * it if its pin word is live, and unlinks and frees it if the pin word is
 * still DEAD (its value may be half written); the whole repair drops it
 * likewise.
 *
 * PINS
 *
 * A reader that has found an entry pins it (slot->pin += 1, by CAS against
 * the exact tag|version word it saw under a valid seq) before it copies the
 * value or touches the entry's counters.  A writer never frees a pinned
 * slot: it unlinks it, then tries to retire the pin word by CAS from
 * (version, 0 refs) to DEAD; if that fails the slot goes to the GC list.
 * Since the word includes a per-slot version and a 16-bit tag, a stale
 * reader's CAS on memory that has been reused fails.
 *
 * An entry that a process reads often (its hit log holds a record of it,
 * hits.c) is read without a pin, as a seqlock reads: the copy is kept only
 * if the stripe's seq and the pin word are unchanged after it, checked
 * under the log's lk, and the hit goes into the record.  Such a read
 * writes only lines of its own process's.  A log's lk is taken by CAS and
 * never waited on by a reader (who counts in the entry instead); it is not
 * in the lock order above, and its holder takes no other lock.
 *
 * TRUST
 *
 * Nothing read from the segment is trusted before it is checked: every
 * offset is bounds-checked before it is followed, every walk is capped,
 * lengths are checked against the block that holds them, and with
 * checksums on, an entry's value, type and length against its checksum.  A
 * reader that finds a broken claim counts a corrupt read, returns a miss
 * and sets hdr->repair_due; the next writer to take the lock repairs.  A
 * SIGBUS on a mapping of the segment (its file was truncated under us) is
 * caught: the page is replaced by zeros, the handle is marked truncated,
 * and every call on it from then on fails with APC_E_TRUNCATED (segment.c).
 *
 * CAVEATS
 *
 * - A process that dies holding a lock leaves its tid in the word; the
 *   next locker finds it dead, takes the word over and repairs (above).
 *   The whole repair rebuilds the allocator from the set of reachable
 *   entries, so a writer killed at any instruction leaves at worst lost
 *   entries, never lost memory.
 * - A process that dies holding a pin leaves refs > 0.  The entry still
 *   serves reads; once it is deleted or replaced it waits on the GC list and
 *   is freed after gc_ttl seconds.  apc_recover(pid) releases the pins that
 *   are recorded in the pin table (large values) straight away.
 * - A reader that finds seq odd for long takes the stripe's lock without
 *   waiting if it is free or its holder dead (which repairs), and otherwise
 *   takes a miss.
 * - A reader killed folding its hit log may lose the hits of the one record
 *   it was at; whoever takes the log over folds the rest.
 */
#ifndef APC_INTERNAL_H
#define APC_INTERNAL_H

#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include "apc.h"

/* ------------------------------------------------------------------ sizes */

#define APC_MAGIC_U64 0x4548434143435041ULL /* "APCCACHE", little-endian */
#define APC_ENDIAN_MARK 0x01020304u
#define APC_NTABLES 2
#define APC_NCLASSES 64
#define APC_NSTRIPES 64 /* counter stripes: one per live process, claimed (apc_my_stripe) */
#define APC_NPINS 256
#define APC_NSEQ 64 /* seqlock stripes; a bucket's stripe is its index % APC_NSEQ */
#define APC_SEQ_ALL (-1)
#define APC_NELOCKS 256
#define APC_AUX_SIZE 65536
#define APC_ALIGN 8 /* blocks and their payloads */
#define APC_BLOCK_MIN 32
#define APC_MIN_ARENA 65536

/* ---------------------------------------------------------------- offsets */

typedef uint64_t apc_off_t; /* an offset from the segment base; 0 means none */

#define APC_PTR(seg, off) ((void *)((char *)(seg)->base + (off)))
#define APC_OFF(seg, ptr) ((apc_off_t)((char *)(ptr) - (char *)(seg)->base))

/* --------------------------------------------------------------- the slot */

/*
 * One cache entry, 48 bytes.  A used arena block is
 *
 *   [header word | apc_slot | ival? | sum? | key bytes | value bytes | pad to 8]
 *
 * with no footer (see sma.c); the slot's offset is the block's offset + 8,
 * so slots are 8-byte aligned.  The optional words follow the slot, 8-byte
 * aligned: ival (an int entry's value, atomic, updated in place) when
 * APC_SLOT_IVAL is set, then sum (the checksum) when APC_SLOT_SUM is set
 * (every slot of a segment with checksums on, none otherwise).  The key
 * follows them and the value follows the key, unpadded.
 *
 * Times are seconds (the engine's clock), 32 bits: until 2106.  hash is
 * the low 32 bits of the key's XXH3-64; the bucket is the full XXH3-64
 * modulo the slot count, so a check of an entry's bucket rehashes its key
 * (apc_slot_hash64).
 */
typedef struct apc_slot {
    /* Atomics written by readers (only while they hold a pin).  Together
     * at the front, in 16 bytes, so that a read writes one cache line of
     * the slot, not two (only a slot starting 8 bytes before a line's end
     * splits them). */
    uint64_t pin; /* APC_PIN_TAG | version << 16 | refs */
    uint32_t atime;
    uint32_t hits; /* saturating */

    /* Guarded by the stripe's lock; read by optimistic readers with
     * atomic loads. */
    apc_off_t next_off; /* chain link, or GC list link when on the GC list */

    /* Set once before the slot is published; read-only while reachable
     * (compaction may move the whole slot, under the whole lock, seq odd). */
    uint32_t hash;    /* the low 32 bits of the key's XXH3-64 */
    uint32_t val_len; /* values of 4 GiB and more are refused (APC_E_TOOBIG) */
    uint32_t ctime;
    uint32_t ttl; /* touch() rewrites it, atomically */

    /* Guarded by the stripe's lock.  On the GC list or the pending list it
     * is the deletion time (dtime). */
    uint32_t mtime;

    uint16_t key_len;
    uint8_t type;
    uint8_t table : 2;
    uint8_t flags : 6; /* APC_SLOT_GC, APC_SLOT_SUM, APC_SLOT_IVAL */
} apc_slot;

_Static_assert(sizeof(apc_slot) == 48, "apc_slot is 48 bytes");
_Static_assert(__builtin_offsetof(apc_slot, type) + 1 == 47, "table and flags share byte 47");

#define APC_SLOT_GC 1   /* on the GC list; mtime is its deletion time */
#define APC_SLOT_PENDING 2 /* unlinked, on its stripe's pending list */
#define APC_SLOT_SUM 4  /* a checksum word follows the slot (and ival) */
#define APC_SLOT_IVAL 8 /* an int entry's value word follows the slot */
/* The byte holding table and flags, for the layout map. */
#define APC_SLOT_BITS_OFF 47

#define APC_HITS_MAX 0xFFFF0000u /* hits stop counting here (concurrent adds stay below 2^32) */
#define APC_VAL_MAX 0xFFFFFFFFULL

#define APC_PIN_TAG 0xA9C0000000000000ULL
#define APC_PIN_TAGMASK 0xFFFF000000000000ULL
#define APC_PIN_REFS 0xFFFFULL
#define APC_PIN_DEAD APC_PIN_TAG /* version 0: retired, never pinnable */
#define APC_PIN_MAKE(ver) (APC_PIN_TAG | ((uint64_t)((ver) & 0xFFFFFFFFu) << 16))

/* A fresh live pin word (refs 0) for a slot being published or moved.
 * Versions run 1 .. 2^32-1 and wrap to 1: version 0 is APC_PIN_DEAD.  The
 * one place they are handed out (the caller holds alock). */
#define apc_fresh_pin(h)                                                  \
    __extension__({                                                       \
        uint64_t v_ = (h)->next_version;                                  \
        if (v_ == 0 || v_ > 0xFFFFFFFFu)                                  \
            v_ = 1; /* wrapped, or a damaged counter */                   \
        (h)->next_version = v_ + 1;                                       \
        APC_PIN_MAKE(v_);                                                 \
    })

/* The table/flags byte, read once (a torn or racing read must not give
 * two different extents to a bounds check and the pointer it guards). */
static inline unsigned apc_slot_bits(const apc_slot *s)
{
    return __atomic_load_n((const uint8_t *)s + APC_SLOT_BITS_OFF, __ATOMIC_RELAXED);
}
static inline unsigned apc_bits_flags(unsigned bits) { return bits >> 2; }
/* The optional words' size for a slot with these flags. */
static inline uint64_t apc_slot_ext_of(unsigned flags)
{
    return ((flags & APC_SLOT_IVAL) ? 8 : 0) + ((flags & APC_SLOT_SUM) ? 8 : 0);
}
static inline uint64_t apc_slot_ext(const apc_slot *s)
{
    return apc_slot_ext_of(apc_bits_flags(apc_slot_bits(s)));
}
static inline int64_t *apc_slot_ival(const apc_slot *s) { return (int64_t *)(s + 1); }
static inline uint64_t *apc_slot_sum(const apc_slot *s)
{
    return (uint64_t *)((char *)(s + 1) + ((s->flags & APC_SLOT_IVAL) ? 8 : 0));
}
static inline char *apc_slot_key(const apc_slot *s) { return (char *)(s + 1) + apc_slot_ext(s); }
static inline char *apc_slot_val(const apc_slot *s) { return apc_slot_key(s) + s->key_len; }
/* The key's padding in a snapshot record (not in the arena). */
static inline uint64_t apc_key_pad(uint32_t klen) { return ((uint64_t)klen + 7) & ~7ULL; }
/* The bytes a slot with these lengths and flags needs (its block adds the
 * header word and the rounding). */
static inline uint64_t apc_slot_need(uint32_t klen, uint64_t vlen, unsigned flags)
{
    return sizeof(apc_slot) + apc_slot_ext_of(flags) + klen + vlen;
}
/* The full XXH3-64 of a slot's key (its bucket), for the checks that the
 * slot is in the right bucket.  The key's extent must have been checked. */
static inline uint64_t apc_slot_hash64(const apc_slot *s)
{
    return apc_xxh3_64(apc_slot_key(s), s->key_len);
}

/* ------------------------------------------------------------ the header */

typedef struct apc_table_geom {
    apc_off_t buckets_off;
    uint64_t nslots;
} apc_table_geom;

/* Whole-table counters, written with every lock held (eviction, clear). */
typedef struct apc_table_stats {
    uint64_t expunges;
    uint64_t evictions;
    uint64_t start_time;
} apc_table_stats;

/* A bucket stripe's share of a table's counters, written by the holder of
 * the stripe's lock; a table's figure is the sum over stripes.  A store
 * that replaces an entry with one of the same size writes none of them
 * (inserts are counted per process, in apc_stripe). */
typedef struct apc_stripe_stats {
    uint64_t num_entries;
    uint64_t mem_size;
    uint64_t expired;
} apc_stripe_stats;

/* A pin held across a call boundary (values too large for the caller's
 * buffer).  pid > 0: held; pid < 0: being claimed; 0: free. */
typedef struct apc_pin_rec {
    int64_t pid;
    apc_off_t slot_off;
    uint64_t pinword; /* tag|version of the slot that is pinned */
    uint64_t since;
} apc_pin_rec;

/* An entry() in progress: the key's hash and table, and who generates it. */
typedef struct apc_elock {
    uint64_t hash;
    int64_t pid; /* 0: free */
    uint64_t tid;
    uint64_t since;
    uint32_t table;
    uint32_t pad_;
    uint64_t start; /* the generating process's start time: a reused pid is not it */
} apc_elock;

typedef struct apc_stripe {
    uint64_t hits[APC_NTABLES];
    uint64_t misses[APC_NTABLES];
    uint64_t corrupt[APC_NTABLES]; /* reads that met a broken claim */
    uint64_t waited[APC_NTABLES];  /* reads that gave up on a writer */
    uint64_t inserts[APC_NTABLES]; /* stores, adds and entry() results */
    /* The process that claimed it (0: nobody yet), in what was padding:
     * a segment made before it was added reads 0 and is claimed as it is. */
    int64_t owner;
} __attribute__((aligned(64))) apc_stripe;

/*
 * A hit log (hits.c): where a process notes the hits of the entries it
 * reads without a pin, so that a read writes no line another process
 * reads.  Log j belongs to counter stripe j (its claimer).  Records are
 * (slot, version, count); the entry's hit count is slot->hits plus the
 * counts of every record that names its slot and version, in any log.
 * A full log is folded: each record is added to its slot (pinned for it)
 * if the slot still has that version, and dropped if not (the entry is
 * gone, and its hits with it).
 *
 *   lk     0, or the pid of the process in the log (CAS, never waited on:
 *          a reader that finds it taken counts its hit in the entry).
 *   seq    odd while a fold runs; readers of the counts retry on a change.
 *   n      records in use; rec[n] is written before n moves past it.
 *   done   in a fold: the records folded so far.  A holder killed in a
 *          fold leaves seq odd: whoever takes the log over from it drops
 *          the record it was at (it may or may not have been added) and
 *          folds the rest.
 */
#define APC_HITLOG_N 64
typedef struct apc_hitrec {
    apc_off_t off;
    uint32_t ver;
    uint32_t count;
} apc_hitrec;

typedef struct apc_hitlog {
    int64_t lk;
    uint64_t seq;
    uint32_t n;
    uint32_t done;
    uint64_t folds;
    uint64_t hits[APC_NTABLES]; /* the hits noted here, per table (info()'s num_hits) */
    uint64_t pad_[2];
    apc_hitrec rec[APC_HITLOG_N];
} __attribute__((aligned(64))) apc_hitlog;

/* A lock (lock.c).  word: 0 free, or the holder's tid with
 * APC_LOCK_WAITERS when someone may sleep on it.  The rest is the holder's
 * own record of itself, written after it took the word, and (for a bucket
 * stripe's lock) what it was in the middle of: see INTENTS above. */
#define APC_LOCK_WAITERS 0x80000000u
#define APC_LOCK_TIDMASK 0x3FFFFFFFu
typedef struct apc_lock {
    uint32_t word;
    uint32_t tid;      /* the holder's tid, once recorded; 0 after release */
    int64_t pid;       /* the holder's process */
    uint64_t start;    /* the holder thread's start time (clock ticks since boot) */
    uint32_t steals;   /* times it was taken over from a dead or vanished holder */
    /* A bucket stripe's lock only, guarded by it: */
    uint32_t npending;       /* slots on the pending list */
    apc_off_t intent_new;    /* a block allocated for a slot not yet published */
    apc_off_t intent_old;    /* a slot being unlinked, not yet retired;
                                both the same slot: rewritten in place */
    apc_off_t pending;       /* the slots its writers unlinked and have not yet
                                retired, linked by next_off, at most
                                APC_PENDING_MAX (see PENDING in chains.c) */
    /* A bucket stripe's seqlock word (3. in LOCKS), written only by the
     * holder.  It shares the lock's line: a store writes one line where it
     * would write two, and readers of a stripe nobody writes keep the line
     * shared. */
    uint64_t seq;
} __attribute__((aligned(64))) apc_lock;
_Static_assert(sizeof(apc_lock) == 64, "a lock and its seq word fill one cache line");
#define APC_PENDING_MAX 32

/* A bucket stripe: its lock (with what a writer of it is in the middle
 * of), and its share of the counters: a store writes these two cache
 * lines and no other line of the header. */
typedef struct apc_bstripe {
    apc_lock lock;
    apc_stripe_stats st[APC_NTABLES];
} apc_bstripe;

typedef struct apc_header {
    /* Set once at create, read-only afterwards.  magic is written last. */
    uint64_t magic;
    uint32_t format;
    uint32_t header_size;
    uint32_t flags; /* APC_FMT_CHECKSUMS */
    uint32_t endian;
    uint64_t seg_size;
    uint64_t create_time;
    int64_t creator_pid;
    uint64_t ttl;
    uint64_t gc_ttl;
    apc_off_t aux_off;
    uint64_t aux_size;
    apc_off_t arena_off;
    uint64_t arena_size;
    apc_table_geom geom[APC_NTABLES];

    /* The locks: one per bucket stripe, then the allocator's. */
    apc_bstripe bstripes[APC_NSEQ] __attribute__((aligned(64)));
    apc_lock alock __attribute__((aligned(64)));
    uint64_t repair_due __attribute__((aligned(64))); /* a whole repair is owed */

    /* Guarded by alock. */
    apc_off_t free_head[APC_NCLASSES] __attribute__((aligned(64)));
    uint64_t free_map; /* bit c set: free_head[c] is not empty */
    uint64_t free_bytes;
    uint64_t nfree;
    uint64_t nused;
    apc_off_t gc_head;
    uint64_t gc_count;
    uint64_t next_version;
    uint64_t repairs;
    uint64_t compactions;
    uint64_t wl_hold_max_ns; /* the longest any holder kept the whole lock */
    apc_table_stats stats[APC_NTABLES];
    apc_elock elocks[APC_NELOCKS];

    /* Claimed and released by readers with CAS; swept under the whole lock. */
    apc_pin_rec pins[APC_NPINS] __attribute__((aligned(64)));

    /* Atomic counters, may be slightly stale; summed on read. */
    apc_stripe stripes[APC_NSTRIPES] __attribute__((aligned(64)));

    /* One per counter stripe (hits.c). */
    apc_hitlog hitlogs[APC_NSTRIPES] __attribute__((aligned(64)));
} apc_header;

/* The process-local handle. */
#define APC_PAGE 4096 /* the unit of write_value's page map */

struct apc_seg {
    /* In-flight calls and the close that waits for them (segment.c). */
    int64_t inflight;
    int closing;
    int truncated; /* set by the SIGBUS handler */
    void *base;
    apc_header *hdr;
    uint64_t size;
    uint64_t map_size; /* what apc_attach_fd mapped */
    uint64_t lock_timeout_ns;
    uint64_t wl_since; /* when this process took the whole lock (its holder's) */
    int checksums;
    unsigned dev_major, dev_minor; /* of the segment's file, for the lock's */
    uint64_t ino;                  /* check of a holder's /proc/PID/maps */
    apc_off_t arena_off;
    apc_off_t arena_end;
    apc_table_geom geom[APC_NTABLES]; /* copied at open: a later scribble on the
                                         header cannot send a walk astray */
    unsigned char seq_depth[APC_NSEQ]; /* nesting of seq-odd sections per stripe;
                                          valid under the stripe's lock */
    /* How large values are written (see write_value in api.c): the
     * segment's file (-1: by memcpy only), and a bit per page of the
     * segment that this process has written before.  A forked child's
     * page tables start empty, so the map belongs to seen_pid only.
     * Threads of one process write it under different stripes: atomics. */
    int fd;
    int64_t seen_pid;
    uint64_t seen_pages;
    uint8_t *seen;
    /* This process's counter stripe (apc_my_stripe), claimed by
     * stripe_pid: a forked child claims one of its own. */
    int64_t stripe_pid;
    apc_stripe *my_stripe;
    apc_hitlog *my_log; /* the hit log of that stripe */
    /* The entries this process read last, by a hash of the slot's
     * offset: the slot, and where its record lies in the process's hit log
     * (1-based; 0: none yet).  Hints only, checked against the log's
     * record before they are believed (hits.c). */
    struct apc_hint {
        apc_off_t off;
        uint32_t pos;
        uint32_t pad_;
    } hint[256];
};

/* ---------------------------------------------------------------- atomics */

#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define LOADR(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define STORER(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)
#define CAS(p, expp, v) \
    __atomic_compare_exchange_n((p), (expp), (v), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
#define CAS32(p, expp, v) \
    __atomic_compare_exchange_n((p), (expp), (uint32_t)(v), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)

/* ---------------------------------------------------------- debug support */

#ifdef APC_DEBUG
#include <assert.h>
#define APC_ASSERT(x) assert(x)
void apc_fault_point(const char *name);
#define APC_FAULT(name) apc_fault_point(name)
#else
#define APC_ASSERT(x) ((void)0)
#define APC_FAULT(name) ((void)0)
#endif

/* ------------------------------------------------------ bounds-checked use */

/* Is [off, off+len) inside the arena?  Overflow-safe. */
static inline int apc_in_arena(const apc_seg *seg, apc_off_t off, uint64_t len)
{
    return off >= seg->arena_off && off <= seg->arena_end && len <= seg->arena_end - off;
}

/* A slot offset read from shared memory: aligned, inside the arena with its
 * fixed part, its optional words, the key and the value; its optional
 * words the ones its type and the segment say it has. */
static inline apc_slot *apc_slot_at(const apc_seg *seg, apc_off_t off)
{
    if ((off & 7) != 0 || !apc_in_arena(seg, off, sizeof(apc_slot)))
        return NULL;
    apc_slot *s = (apc_slot *)APC_PTR(seg, off);
    uint32_t klen = LOADR(&s->key_len);
    uint64_t vlen = LOADR(&s->val_len);
    unsigned bits = apc_slot_bits(s), flags = apc_bits_flags(bits);
    if (!apc_in_arena(seg, off, apc_slot_need(klen, vlen, flags)) || (bits & 3) >= APC_NTABLES ||
        !(flags & APC_SLOT_SUM) != !seg->checksums ||
        !(flags & APC_SLOT_IVAL) != (s->type != APC_T_INT))
        return NULL;
    return s;
}

static inline apc_off_t *apc_buckets(const apc_seg *seg, int table)
{
    return (apc_off_t *)APC_PTR(seg, seg->geom[table].buckets_off);
}

/* The most blocks the arena can hold: every walk of a chain or a list
 * stops there (a cycle in the segment is a claim too). */
static inline uint64_t apc_walk_cap(const apc_seg *seg)
{
    return (seg->arena_end - seg->arena_off) / APC_BLOCK_MIN + 1;
}

static inline int apc_bad_table(int table) { return table < 0 || table >= APC_NTABLES; }

/* The bucket a key's XXH3-64 falls in, and the stripe (of locks and seqs)
 * that guards it. */
static inline apc_off_t *apc_bucket_of(const apc_seg *seg, int table, uint64_t hash)
{
    return &apc_buckets(seg, table)[hash % seg->geom[table].nslots];
}

static inline int apc_stripe_of(const apc_seg *seg, int table, uint64_t hash)
{
    return (int)((hash % seg->geom[table].nslots) % APC_NSEQ);
}

static inline apc_stripe_stats *apc_stats_of(apc_seg *seg, int table, uint64_t hash)
{
    return &seg->hdr->bstripes[apc_stripe_of(seg, table, hash)].st[table];
}

/* Where the aux area starts: right after the header, page-aligned (as
 * segment.c lays it out). */
#define APC_AUX_OFF ((sizeof(apc_header) + 4095) & ~(uint64_t)4095)

/* ctime + ttl < now, without the sum: both are claims read from the
 * segment, and a wrapped sum would expire a huge ttl at once. */
static inline int apc_expired(const apc_slot *s, uint64_t now)
{
    uint64_t ttl = LOADR(&s->ttl), ctime = s->ctime;
    return ttl > 0 && now > ctime && now - ctime > ttl;
}

/* The free-list class of a block size: four classes per power of two from
 * 32 bytes, the last class taking everything from 1 MiB up. */
static inline unsigned apc_class_of(uint64_t size)
{
    unsigned lg = 63u - (unsigned)__builtin_clzll(size);
    if (lg < 5)
        return 0;
    unsigned c = (lg - 5) * 4 + (unsigned)((size >> (lg - 2)) & 3);
    return c < APC_NCLASSES - 1 ? c : APC_NCLASSES - 1;
}

/* A table's counters: the sum of its stripes' shares. */
static inline apc_stripe_stats apc_table_sum(const apc_seg *seg, int t)
{
    apc_stripe_stats sum = {0, 0, 0};
    for (int i = 0; i < APC_NSEQ; i++) {
        const apc_stripe_stats *st = &seg->hdr->bstripes[i].st[t];
        sum.num_entries += LOADR(&st->num_entries);
        sum.mem_size += LOADR(&st->mem_size);
        sum.expired += LOADR(&st->expired);
    }
    return sum;
}

uint64_t apc_now(uint64_t now);
uint64_t apc_mono_ns(void);
/* This process's pid, kept by lock.c (set at load and after a fork). */
extern int64_t apc_cached_pid;
static inline int64_t apc_pid(void) { return __atomic_load_n(&apc_cached_pid, __ATOMIC_RELAXED); }
uint64_t apc_proc_start(void);
int apc_pid_alive_since(int64_t pid, uint64_t start);

/* This process's stripe of the hit and miss counters.  Each process
 * claims one the first time it counts (apc_claim_stripe, lock.c), and its
 * forked children claim their own: up to APC_NSTRIPES live processes each
 * write a line of their own, where pid % APC_NSTRIPES made two of 32
 * workers share one almost surely.  Beyond that many, processes share. */
apc_stripe *apc_claim_stripe(apc_seg *seg);

static inline apc_stripe *apc_my_stripe(apc_seg *seg)
{
    if (__builtin_expect(LOAD(&seg->stripe_pid) == apc_pid(), 1))
        return LOADR(&seg->my_stripe);
    return apc_claim_stripe(seg);
}

/* This process's hit log (hits.c): its counter stripe's. */
static inline apc_hitlog *apc_my_log(apc_seg *seg)
{
    if (__builtin_expect(LOAD(&seg->stripe_pid) != apc_pid(), 0))
        apc_claim_stripe(seg);
    return LOADR(&seg->my_log);
}

/* How long a reader waits for an odd seq stripe before it takes a miss. */
#define APC_READ_WAIT_NS 10000000ULL
/* Values of at most this many bytes are read without a pin (api.c); a read
 * that finds its entry changing tries this many times, then pins. */
#define APC_PEEK_MAX 4096
#define APC_PEEK_TRIES 3

/* segment.c: every entry point brackets its work with these.  seg_enter
 * fails (APC_E_CLOSED, APC_E_TRUNCATED) on a handle that is closing or was
 * truncated; apc_close waits until inflight is 0. */
static inline int apc_seg_enter(apc_seg *seg)
{
    if (__builtin_expect(!seg, 0))
        return APC_E_CLOSED;
    __atomic_add_fetch(&seg->inflight, 1, __ATOMIC_SEQ_CST);
    if (__builtin_expect(__atomic_load_n(&seg->closing, __ATOMIC_SEQ_CST) |
                             __atomic_load_n(&seg->truncated, __ATOMIC_RELAXED),
                         0)) {
        __atomic_sub_fetch(&seg->inflight, 1, __ATOMIC_RELEASE);
        return seg->closing ? APC_E_CLOSED : APC_E_TRUNCATED;
    }
    return APC_OK;
}

/* Leave; a result computed while the file was being truncated under us is
 * not to be believed. */
static inline int64_t apc_seg_leave(apc_seg *seg, int64_t rc)
{
    if (__builtin_expect(__atomic_load_n(&seg->truncated, __ATOMIC_RELAXED), 0))
        rc = APC_E_TRUNCATED;
    __atomic_sub_fetch(&seg->inflight, 1, __ATOMIC_RELEASE);
    return rc;
}

/* lock.c: the locks themselves.  A lock taken over from a dead holder
 * reports *stolen; repairing what it guards is the caller's (api.c). */
int apc_lock_acquire(apc_seg *seg, apc_lock *l, uint64_t timeout_ns, int *stolen);
int apc_lock_try(apc_seg *seg, apc_lock *l, int *stolen);
void apc_lock_release(apc_lock *l);
int apc_lock_orphaned(apc_lock *l);
int apc_sl_acquire(apc_seg *seg, int stripe, int *stolen);
int apc_sl_try(apc_seg *seg, int stripe, int *stolen);
void apc_sl_release(apc_seg *seg, int stripe);
void apc_sl_seq_reset(apc_seg *seg, int stripe);
int apc_sl_busy(apc_seg *seg, int stripe);
int apc_al_acquire(apc_seg *seg, int *stolen);
void apc_al_release(apc_seg *seg);
int apc_whole_acquire(apc_seg *seg, int *stolen);
void apc_whole_release(apc_seg *seg);
void apc_whole_release_ro(apc_seg *seg);
void apc_whole_seq_reset(apc_seg *seg);
int apc_sl_held(apc_seg *seg, int stripe);
int apc_al_held(apc_seg *seg);
int apc_wl_held(apc_seg *seg);
void apc_repair_later(apc_seg *seg);
void apc_seq_begin_wl(apc_seg *seg, int stripe);
void apc_seq_end_wl(apc_seg *seg, int stripe);
int apc_seq_read_begin(apc_seg *seg, int stripe, uint64_t *out);
int apc_seq_read_begin_opt(apc_seg *seg, int stripe, uint64_t *out, int nowait);
int apc_seq_read_valid(apc_seg *seg, int stripe, uint64_t s);

/* Not an error: let go, and take the whole lock instead (api.c). */
#define APC_ESCALATE (-1000)

/* api.c: the whole lock, with its repairs (see LOCKS). */
int apc_wl_lock(apc_seg *seg);
int apc_wl_lock_for_check(apc_seg *seg);

/* sma.c: the block format.  Only sma.c knows the tag bits; these decode
 * them for the checker, the repair and the reports.
 *
 * apc_blk_at: the block at b, for a walk of the arena (the first is at
 * arena_off, the next at b + size).  APC_BLK_OK; APC_BLK_END at the
 * arena's end; APC_BLK_BADSIZE if b or its size lies outside the arena
 * (the walk cannot go on); APC_BLK_BADFOOTER for a free block whose footer
 * disagrees with its header (size is filled: a checker may go on). */
typedef struct apc_blk {
    apc_off_t b;
    uint64_t size;
    int used;
    int prev_used; /* what its header says of the block before it */
} apc_blk;
#define APC_BLK_OK 1
#define APC_BLK_END 0
#define APC_BLK_BADSIZE (-1)
#define APC_BLK_BADFOOTER (-2)
int apc_blk_at(const apc_seg *seg, apc_off_t b, apc_blk *out);
/* The payload of a block is at its offset + 8. */
static inline apc_off_t apc_blk_payload(apc_off_t b) { return b + 8; }
static inline apc_off_t apc_blk_of(apc_off_t payload) { return payload - 8; }
/* The size of the used block holding payload, checked (aligned, inside the
 * arena, used, and the block after it agreeing that it is), or 0. */
uint64_t apc_sma_used_block(const apc_seg *seg, apc_off_t payload);
/* The same from the header alone, for lock-free readers: 0 if not used or
 * outside the arena. */
uint64_t apc_sma_used_size(const apc_seg *seg, apc_off_t payload);
/* Is b a free block (tags agreeing)?  Its list links. */
int apc_sma_free_ok(const apc_seg *seg, apc_off_t b);
void apc_sma_free_links(const apc_seg *seg, apc_off_t b, apc_off_t *next, apc_off_t *prev);

/* sma.c: the block allocator; every function expects alock held (or the
 * whole lock, for compaction and the rebuild). */
void apc_sma_init_wl(apc_seg *seg);
apc_off_t apc_sma_alloc_wl(apc_seg *seg, uint64_t need);
void apc_sma_free_wl(apc_seg *seg, apc_off_t payload);
uint64_t apc_sma_block_size(apc_seg *seg, apc_off_t payload);
uint64_t apc_sma_largest_wl(apc_seg *seg);
uint64_t apc_sma_block_for(uint64_t need);
int apc_sma_rebuild_wl(apc_seg *seg, apc_off_t *live, uint64_t nlive);
/* Compaction moves used blocks; which may move, and what points at them,
 * is for the layer above (room.c) to say. */
typedef struct apc_mover {
    /* The payload may move: its pin word is retired, and the link that
     * points at it returned.  NULL: it stays where it is. */
    apc_off_t *(*take)(apc_seg *seg, apc_off_t payload);
    /* It moved to payload: give it a fresh pin word and point link at it. */
    void (*moved)(apc_seg *seg, apc_off_t *link, apc_off_t payload);
} apc_mover;
int apc_sma_compact_wl(apc_seg *seg, const apc_mover *m);

/* ------------------------------------------------ the layers' interfaces */

/* lock.c: alock for a holder of a stripe (or of nothing); APC_ESCALATE
 * (nothing held) while a whole repair is owed. */
int apc_al_lock(apc_seg *seg);

/* hits.c: the hit logs.  Is the entry hot for this process (its log
 * holds a record of it)?  The record's position (1-based) or 0. */
int apc_hit_hot(apc_seg *seg, apc_slot *s, uint64_t ident);
/* A hit counted in the (pinned) entry: read again soon, the entry gets a
 * record, and is read without a pin from then on. */
void apc_hit_seen(apc_seg *seg, apc_slot *s, uint64_t ident);
/* A hit read without a pin, noted in this process's log (in record pos if
 * it is still the entry's) while the key's stripe seq is still sq and the
 * entry still has version ident: APC_OK; APC_AGAIN if not (read again);
 * APC_BUSY if the log is taken (count it in the entry: apc_hit_direct). */
int apc_hit_note(apc_seg *seg, apc_slot *s, uint64_t ident, int stripe, uint64_t sq, uint32_t pos,
                 int table);
/* Count a hit in the entry itself, if it still has version ident. */
void apc_hit_direct(apc_slot *s, uint64_t ident);
/* The entry's hits: its own count and every log's records of it, read
 * consistently.  The caller keeps the slot from being freed meanwhile. */
uint64_t apc_hits_of(apc_seg *seg, apc_slot *s);
/* Fold every log (before compaction or a rebuild moves or renumbers
 * entries: the records name slots by offset and version). */
void apc_hits_fold_all_wl(apc_seg *seg);
/* clear(): the hits noted in the logs, counted from zero again. */
void apc_hits_reset_wl(apc_seg *seg, int table);
/* A log whose holder is dead, taken over and repaired (apc_claim_stripe,
 * apc_recover); 1 if it was. */
int apc_hits_rescue(apc_seg *seg, int log);
/* Which slots the logs hold records of, sorted, for a walk that reports
 * many entries (report.c): apc_hitsnap_hits() reads a slot's hits exactly
 * (apc_hits_of) only if it has records. */
typedef struct apc_hitsnap {
    uint64_t stalled; /* logs seen stopped in a fold: not waited for again */
    uint32_t n;
    apc_off_t off[APC_NSTRIPES * APC_HITLOG_N];
} apc_hitsnap;
void apc_hitsnap_take(apc_seg *seg, apc_hitsnap *hs);
uint64_t apc_hitsnap_hits(apc_seg *seg, apc_hitsnap *hs, apc_slot *s);

/* chains.c */
int apc_chain_walk(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t hash,
                   apc_off_t *out);
int apc_slot_fits(apc_seg *seg, apc_slot *s);
uint64_t apc_entry_sum(const apc_slot *s, const char *val);
uint64_t apc_int_sum(const apc_slot *s, int64_t v);
void apc_unpin(apc_slot *s, uint64_t ident);
int apc_find_locked(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t hash,
                apc_off_t **linkp, apc_slot **out);
apc_off_t *apc_find_link_locked(apc_seg *seg, apc_off_t slot_off);
int apc_slot_movable_wl(apc_seg *seg, apc_slot *s);
void apc_retire_al(apc_seg *seg, apc_slot *s, uint64_t now);
void apc_drain_al(apc_seg *seg, int stripe);
void apc_unlink_counted(apc_seg *seg, apc_off_t *link, apc_slot *s, int stripe);
void apc_remove_wl(apc_seg *seg, apc_off_t *link, apc_slot *s, uint64_t now);
void apc_gc_sweep_al(apc_seg *seg, uint64_t now);
int apc_finish_intents(apc_seg *seg, int stripe, int have_alock);
void apc_rec_of(apc_seg *seg, apc_slot *s, uint64_t now, apc_entry_rec *r);

/* room.c */
int apc_make_room_wl(apc_seg *seg, uint64_t need, uint64_t now, int table);

/* repair.c */
int apc_repair_wl(apc_seg *seg, uint64_t now);
int apc_geometry_scribbled(const apc_seg *seg);

/* api.c: the whole lock's section, for the walks (report.c); NO_SEQ for
 * one that frees nothing readers can reach. */
#define NO_SEQ (-2)
int apc_wl_enter(apc_seg *seg, int stripe);
void apc_wl_leave(apc_seg *seg, int stripe);
void apc_wl_leave_ro(apc_seg *seg);
int apc_walk_enter(apc_seg *seg, int stripe, int *whole);
void apc_walk_leave(apc_seg *seg, int stripe, int whole);

#endif
