/*
 * apc.h -- the engine's public interface.
 *
 * apccache keeps an APC-style cache inside one shared-memory segment that
 * every process on the host may map, each at its own address.  This header
 * is the whole contract between the C engine and its Python binding: the
 * part between CDEF BEGIN and CDEF END is read verbatim by cffi, so it holds
 * only plain declarations.
 *
 * What crosses the boundary is deliberately dull: byte strings, integers and
 * flat structs.  The engine hashes keys (XXH3-64) and owns the segment's
 * structure; serialising values and every policy decision that is not about
 * that structure live in Python.
 *
 * THE SEGMENT
 *
 *   0            +--------------------------------------------+
 *                | apc_header   magic "APCCACHE", format word |
 *                |              geometry (set once)           |
 *                |              stripe locks, each with its   |
 *                |                seqlock word                |
 *                |              alock, allocator roots        |
 *                |              entry() locks, pin records     |
 *                |              striped hit/miss counters     |
 *                |              hit logs, one per stripe      |
 *                |                (hits.c)                    |
 *   aux_off      +--------------------------------------------+
 *                | aux area (64 KiB, Python-owned: the        |
 *                |   supervisor's scoreboard)                 |
 *   buckets_off  +--------------------------------------------+
 *                | table 0 (user cache): nslots bucket heads  |
 *                | table 1 (file cache): nslots bucket heads  |
 *   arena_off    +--------------------------------------------+
 *                | arena: tagged blocks (sma.c); each used     |
 *                | block holds one slot (entry): apc_slot,     |
 *                | its optional words, key bytes, value bytes  |
 *   seg_size     +--------------------------------------------+
 *
 * Everything inside is addressed by offsets from the segment's base.  The
 * format word (APC_FORMAT) changes whenever any of this layout does; a
 * segment of another format is refused with APC_E_FORMAT, never read.
 *
 * Return codes: every function returns 0 or a negative apc_rc; the fetch
 * family returns a non-negative "meta" word on a hit (see apc_fetch).
 */
#ifndef APC_H
#define APC_H

#include <stdint.h>
#include <stddef.h>

/* CDEF BEGIN */
#define APC_FORMAT 5
#define APC_TABLE_USER 0
#define APC_TABLE_FILES 1
#define APC_MAX_KEY 65535
/* The value type tags, the one definition (the fast path and the Python
 * binding use these).  The engine itself knows only APC_T_INT: inc, dec
 * and cas work on it, and its value lives in the slot.  0 is bytes, so
 * that a plain bytes hit is told with one test. */
#define APC_T_BYTES 0
#define APC_T_STR 2
#define APC_T_INT 3
#define APC_T_FLOAT 4
#define APC_T_TRUE 5
#define APC_T_FALSE 6
#define APC_T_NONE 7
#define APC_T_SER 8
#define APC_FETCH_PINNED 128
#define APC_ADD 1
#define APC_FMT_CHECKSUMS 1
/* Or'ed into fetch_ref's table: return APC_WAITED at once, uncounted,
 * where the read would have to wait for a writer (to let go of the GIL
 * first, then ask again without it). */
#define APC_NOWAIT 256
/* Or'ed into fetch_ref's table: a small value that this process reads
 * often may be handed back without a pin (the read then writes nothing
 * shared); apc_ref_release says whether what the caller copied holds
 * (APC_OK) or must be thrown away and read again (APC_AGAIN). */
#define APC_PEEK 512

enum apc_rc {
    APC_OK = 0,
    APC_NOTFOUND = -1,      /* no live entry under that key */
    APC_EXISTS = -2,        /* add: a live entry exists; entry_begin: the value is there */
    APC_BUSY = -3,          /* entry_begin: another process is generating the key */
    APC_MISMATCH = -4,      /* cas: the current value is not the expected one */
    APC_BUSY_SELF = -5,     /* entry_begin: this very thread is generating the key */
    APC_WAITED = -6,        /* a reader gave up on a writer after APC_READ_WAIT_NS: a miss */
    APC_AGAIN = -7,         /* ref_release of a peek: the entry changed under the copy: read again */
    APC_E_NOMEM = -10,      /* no room even after expiry, eviction and compaction */
    APC_E_TOOBIG = -11,     /* larger than the whole arena: can never fit */
    APC_E_TYPE = -12,       /* inc/dec on a value that is not an int */
    APC_E_OVERFLOW = -13,   /* inc/dec would leave int64 */
    APC_E_MAGIC = -14,      /* not an apccache segment */
    APC_E_FORMAT = -15,     /* an apccache segment of another layout version */
    APC_E_TRUNCATED = -16,  /* the mapping is shorter than the header says */
    APC_E_CORRUPT = -17,    /* an offset or a chain failed its bounds check */
    APC_E_ARG = -18,        /* a malformed argument (the binding validates first) */
    APC_E_LOCK = -19,       /* a lock could not be taken or repaired */
    APC_E_SMALL = -20,      /* the output buffer is too small */
    APC_E_NOTREADY = -21,   /* the creator has not finished formatting the segment */
    APC_E_SYS = -22,        /* a system call failed; see errno */
    APC_E_CLOSED = -23,     /* the handle is NULL or closed */
    APC_E_BUSY = -24        /* a live process held a lock past the lock timeout */
};

typedef struct apc_seg apc_seg;

typedef struct apc_info {
    uint64_t format;
    uint64_t seg_size;
    uint64_t arena_size;
    uint64_t create_time;
    int64_t creator_pid;
    uint64_t ttl;
    uint64_t gc_ttl;
    uint64_t num_slots;
    uint64_t num_entries;
    uint64_t mem_size;
    uint64_t num_hits;
    uint64_t num_misses;
    uint64_t num_inserts;
    uint64_t expunges;
    uint64_t evictions;
    uint64_t expired;
    uint64_t start_time;
    uint64_t gc_entries;
    uint64_t gc_mem_size;
    uint64_t gc_oldest;
    uint64_t repairs;
    uint64_t compactions;
    uint64_t entry_locks;
    uint64_t pins;
    uint64_t corrupt_reads;  /* reads that found a broken claim: counted as misses */
    uint64_t waited_reads;   /* reads that gave up on a writer: counted as misses */
    uint64_t lock_steals;    /* locks taken over from a dead or vanished holder */
    uint64_t checksums;      /* 1: every entry carries a checksum, verified on read */
    uint64_t wl_hold_max_ns; /* the longest the whole lock was held (every writer waited) */
} apc_info;

typedef struct apc_sma_info {
    uint64_t arena_size;
    uint64_t avail;
    uint64_t used;
    uint64_t largest_free;
    uint64_t nfree;
    uint64_t nused;
} apc_sma_info;

/* One entry as apc_snapshot and apc_key_info copy it out; in a snapshot the
 * key's bytes follow each record, padded to a multiple of 8. */
typedef struct apc_entry_rec {
    uint64_t hash;
    uint64_t ctime;
    uint64_t mtime;
    uint64_t atime;
    uint64_t dtime;
    uint64_t ttl;
    uint64_t hits;
    uint64_t mem_size;
    uint64_t val_len;
    uint64_t offset;
    uint32_t refs;
    uint32_t key_len;
    uint32_t type;
    uint32_t flags;
} apc_entry_rec;

#define APC_SNAP_LIVE 1
#define APC_SNAP_DELETED 2
#define APC_REC_DELETED 1
#define APC_REC_EXPIRED 2

/* The binding's per-thread copy-out buffer for apc_fetch (the Python path;
 * the fast path copies straight from the entry).  A value larger than
 * APC_IO_BUF is fetched again into a buffer of its size. */
#define APC_IO_BUF 16384
typedef struct apc_io {
    char buf[APC_IO_BUF];
} apc_io;

/* A value held in place: what apc_fetch_ref hands back.  ptr stays valid
 * (the entry is pinned) until apc_ref_release, which must follow at once:
 * nothing that can block or run user code may come between.  Asked with
 * APC_PEEK, a small value may come back unpinned (rec == APC_REF_PEEK): ptr
 * may then change under the caller, who copies it and keeps the copy only
 * if apc_ref_release returns APC_OK (APC_AGAIN: throw it away, ask again). */
#define APC_REF_PEEK -2
typedef struct apc_ref {
    const char *ptr;
    uint64_t len;
    int64_t ival;
    void *slot;
    uint64_t ident;
    int64_t rec;  /* the pin record (large values), -1, or APC_REF_PEEK */
    uint64_t seq; /* a peek: the key's bucket stripe's seq when it was found, */
    int32_t stripe; /* that stripe, */
    int32_t table;
    int64_t pos;  /* and where the reader's hit log holds its record (1-based) */
} apc_ref;

int64_t apc_fetch_ref(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t now,
                      apc_ref *ref);
int64_t apc_ref_release(apc_seg *seg, apc_ref *ref);

/* Where the header keeps what a listing reads from the file without
 * attaching (apcstat --list): byte offsets into apc_header. */
typedef struct apc_header_map {
    uint64_t header_size;
    uint64_t free_bytes_off;
    uint64_t num_entries_off; /* of the user table, in the first bucket stripe */
    uint64_t bstripe_size;    /* ... and the next stripe's, this far on */
    uint64_t nstripes;
    /* The entry record (apc_slot), for tools and tests that must find
     * its fields in a segment: its size and field offsets.  An int's
     * value and the checksum are optional words after the slot (in that
     * order; apc_internal.h): slot_ival_off is exact for an int entry,
     * slot_sum_off for any other; the key follows them, the value the key. */
    uint64_t slot_size;
    uint64_t slot_hash_off;
    uint64_t slot_val_len_off;
    uint64_t slot_key_len_off;
    uint64_t slot_type_off;
    uint64_t slot_sum_off;
    uint64_t slot_next_off;
    uint64_t slot_ival_off;
    uint64_t slot_pin_off;
    uint64_t alock_off; /* the allocator lock: its futex word, then its record */
    uint64_t slock_off; /* the first bucket stripe's lock (bstripe_size apart) */
    uint64_t elocks_off; /* the entry() records: APC_NELOCKS of elock_size */
    uint64_t elock_size;
    uint64_t elock_pid_off;
    uint64_t elock_start_off;
} apc_header_map;
void apc_header_map_get(apc_header_map *out);

const char *apc_strerror(int rc);
uint64_t apc_next_prime(uint64_t n);
uint64_t apc_layout_size(uint64_t nslots_user, uint64_t nslots_files);
int apc_format_segment(void *base, uint64_t size, uint64_t nslots_user,
                       uint64_t nslots_files, uint64_t ttl, uint64_t gc_ttl,
                       uint64_t now, int64_t pid, int flags);
/* Map the segment's file (fd is duplicated: the caller may close its own),
 * validate it and return a handle.  The engine owns this mapping: only
 * apc_close unmaps it, once no call is in flight. */
int apc_attach_fd(int fd, apc_seg **out);
/* Make new calls fail with APC_E_CLOSED, wait for those in flight, unmap.
 * The handle's memory is kept (a thread may still hold the pointer): every
 * later call on it answers APC_E_CLOSED. */
void apc_close(apc_seg *seg);
void apc_set_lock_timeout(apc_seg *seg, uint64_t ns);
/* The engine's own descriptor of the segment's file (-1: none). */
int apc_fd(apc_seg *seg);
/* The pid that held the lock when this thread last got APC_E_BUSY. */
int64_t apc_last_busy_pid(void);
/* The bucket stripe (whose lock a write of it takes) of a key, 0..63. */
int apc_key_stripe(apc_seg *seg, int table, const char *key, uint32_t klen);
/* A value read from the segment failed to decode: count it as corruption. */
void apc_count_corrupt(apc_seg *seg, int table);
/* Guard [base, base+size) of another mapping of seg's file (the binding's)
 * against SIGBUS as the engine's own mapping is; 0 size: stop guarding. */
int apc_guard_range(apc_seg *seg, void *base, uint64_t size);
uint64_t apc_peek_format(void *base, uint64_t mapped_size);
uint64_t apc_aux_offset(apc_seg *seg);
uint64_t apc_aux_size(apc_seg *seg);

int64_t apc_fetch(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t now, char *buf, uint64_t cap);
int apc_exists(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t now);
int apc_store(apc_seg *seg, int table, const char *key, uint32_t klen, int type, const char *val, uint64_t vlen,
              int64_t ival, uint64_t ttl, uint64_t now, int flags);
int apc_delete(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t now);
int apc_inc(apc_seg *seg, int table, const char *key, uint32_t klen, int64_t step, uint64_t ttl, uint64_t now,
            int64_t *out);
int apc_cas(apc_seg *seg, int table, const char *key, uint32_t klen, int64_t old, int64_t new_, uint64_t now);
int apc_clear(apc_seg *seg, int table, uint64_t now);
int apc_touch(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t ttl,
              uint64_t now);

int apc_entry_begin(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t tid, uint64_t now, int64_t *out);
int apc_entry_end(apc_seg *seg, int64_t token, uint64_t tid);
int apc_entry_takeover(apc_seg *seg, int64_t token, int64_t dead_pid,
                       uint64_t tid, uint64_t now);
int apc_pid_alive(int64_t pid);
/* 1 if the process that holds entry() record token is alive (compared by
 * pid and start time, so a reused pid is not), 0 if not. */
int apc_entry_holder_alive(apc_seg *seg, int64_t token);
int apc_recover(apc_seg *seg, int64_t pid, uint64_t now);

int apc_info_get(apc_seg *seg, int table, apc_info *out);
int apc_sma_info_get(apc_seg *seg, apc_sma_info *out, uint64_t *blocks,
                     uint64_t cap);
int apc_key_info(apc_seg *seg, int table, const char *key, uint32_t klen, uint64_t now, apc_entry_rec *out);
int64_t apc_snapshot(apc_seg *seg, int table, uint64_t now, int flags,
                     char *buf, uint64_t cap);
/* The live entries from bucket cursor[0] on, as apc_snapshot gives them, a
 * bounded chunk per call (one short lock hold).  cursor starts {0, 0}; it
 * moves on (cursor[1] counts the entries so far), and cursor[0] is the
 * table's slot count when the walk is done. */
int64_t apc_snapshot_chunk(apc_seg *seg, int table, uint64_t now, uint64_t cursor[2],
                           char *buf, uint64_t cap);
int64_t apc_count_live_chunk(apc_seg *seg, int table, uint64_t now, uint64_t cursor[2]);
int64_t apc_check(apc_seg *seg, char *buf, uint64_t cap);
/* The counter stripe (0..63) this process counts its hits and misses in,
 * claimed if it has none yet; for tests. */
int apc_counter_stripe(apc_seg *seg);
/* Fold this process's hit log into its entries' hit counts now (the
 * engine does it when the log fills); the records it folded.  For tests. */
int apc_hits_fold(apc_seg *seg);

uint64_t apc_xxh3_64(const void *data, size_t len);
int apc_debug_build(void);
int apc_fault_arm(const char *name);
/* Debug builds: set the next pin version (to test its wrap); APC_E_ARG in release. */
int apc_debug_set_version(apc_seg *seg, uint64_t v);
/* Where a named field lies, for tests that damage the segment on purpose:
 * "hdr.<field>" is a byte offset into apc_header, "slot.<field>" one into
 * an entry's slot, "sizeof.<struct>" a size; -1 for an unknown name. */
int64_t apc_layout_offset(const char *name);
/* CDEF END */

#endif
