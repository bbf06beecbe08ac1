/*
 * segment.c -- formatting a fresh segment, and validating one on attach.
 *
 * The creator formats the segment in place and writes the magic word last,
 * with a release store: an attacher that sees the magic sees a finished
 * header.  Attaching checks everything the engine will later trust without
 * looking again: magic, format word, the ABI marks (endianness, the size of
 * the header), and that every region the header names lies inside the
 * mapping.  A segment that fails any of these is refused with a code that
 * says which; it is never "tried anyway".
 *
 * THE HANDLE'S LIFE
 *
 * apc_attach_fd maps the segment's file itself, and only apc_close unmaps
 * it.  Every entry point of the engine brackets its work with
 * apc_seg_enter/apc_seg_leave, which count the calls in flight on the
 * handle; apc_close makes new calls fail with APC_E_CLOSED, waits until
 * none is in flight (each is bounded: a writer by lock_timeout, a reader by
 * APC_READ_WAIT_NS), and only then unmaps.  The handle's own memory is
 * never freed: a thread that still holds the pointer gets APC_E_CLOSED,
 * not freed memory.
 *
 * TRUNCATION
 *
 * The owner of the segment's file can shorten it under every process that
 * maps it; the next access past the new end raises SIGBUS, which would kill
 * the process.  The engine installs a SIGBUS handler that knows the ranges
 * of every mapping of a segment in this process: a fault inside one is
 * answered by mapping a page of zeros over the faulting page and marking
 * the handle truncated, and the faulting instruction then completes on
 * zeros.  Every check in the engine treats zeros as what they are (no
 * entry, a broken chain), and apc_seg_leave turns the result of the call
 * into APC_E_TRUNCATED, as it does for every later call.  A fault anywhere
 * else goes to the handler that was there before (or kills the process, as
 * it would have).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>
#include "apc_internal.h"

const char *apc_strerror(int rc)
{
    switch (rc) {
    case APC_OK: return "ok";
    case APC_NOTFOUND: return "no such key";
    case APC_EXISTS: return "the key exists";
    case APC_BUSY: return "another process is generating this key";
    case APC_MISMATCH: return "the value is not the expected one";
    case APC_BUSY_SELF: return "this thread is already generating this key";
    case APC_E_NOMEM: return "no room in the cache";
    case APC_E_TOOBIG: return "larger than the cache";
    case APC_E_TYPE: return "the value is not an int";
    case APC_E_OVERFLOW: return "the result leaves the int64 range";
    case APC_E_MAGIC: return "not an apccache segment";
    case APC_E_FORMAT: return "an apccache segment of another layout version";
    case APC_E_TRUNCATED: return "the segment is shorter than its header says";
    case APC_E_CORRUPT: return "the segment is corrupted";
    case APC_E_ARG: return "invalid argument";
    case APC_E_LOCK: return "the segment's lock could not be taken";
    case APC_E_SMALL: return "buffer too small";
    case APC_E_NOTREADY: return "the segment is still being created";
    case APC_E_SYS: return "system error";
    case APC_E_CLOSED: return "operation on a closed cache";
    case APC_E_BUSY: return "another process has held a lock for longer than the lock timeout";
    case APC_WAITED: return "a writer held the entry's bucket for longer than a reader waits";
    case APC_AGAIN: return "the entry changed while it was read without a pin: read it again";
    default: return "unknown error";
    }
}

uint64_t apc_next_prime(uint64_t n)
{
    if (n <= 2)
        return 2;
    if (!(n & 1))
        n++;
    for (;; n += 2) {
        int prime = 1;
        for (uint64_t d = 3; d * d <= n; d += 2) {
            if (n % d == 0) {
                prime = 0;
                break;
            }
        }
        if (prime)
            return n;
    }
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) & ~(a - 1); }

/* Offsets of the regions for a given geometry. */
typedef struct layout {
    apc_off_t aux_off;
    apc_off_t buckets_off[APC_NTABLES];
    apc_off_t arena_off;
} layout;

static layout compute_layout(uint64_t nslots_user, uint64_t nslots_files)
{
    layout l;
    l.aux_off = align_up(sizeof(apc_header), 4096);
    l.buckets_off[0] = l.aux_off + APC_AUX_SIZE;
    l.buckets_off[1] = align_up(l.buckets_off[0] + nslots_user * sizeof(apc_off_t), 64);
    l.arena_off = align_up(l.buckets_off[1] + nslots_files * sizeof(apc_off_t), 4096);
    return l;
}

/* Bytes taken before the arena for a given table geometry. */
uint64_t apc_layout_size(uint64_t nslots_user, uint64_t nslots_files)
{
    return compute_layout(nslots_user, nslots_files).arena_off;
}

int apc_format_segment(void *base, uint64_t size, uint64_t nslots_user,
                       uint64_t nslots_files, uint64_t ttl, uint64_t gc_ttl,
                       uint64_t now, int64_t pid, int flags)
{
    if (!base || nslots_user < 1 || nslots_files < 1 || nslots_user > (1ULL << 32) ||
        nslots_files > (1ULL << 32))
        return APC_E_ARG;
    layout l = compute_layout(nslots_user, nslots_files);
    uint64_t arena_end = size & ~(uint64_t)(APC_ALIGN - 1);
    if (arena_end < l.arena_off + APC_MIN_ARENA)
        return APC_E_ARG;

    apc_header *h = (apc_header *)base;
    memset(h, 0, sizeof *h);
    h->format = APC_FORMAT;
    h->header_size = sizeof(apc_header);
    h->flags = (uint32_t)flags & APC_FMT_CHECKSUMS;
    h->endian = APC_ENDIAN_MARK;
    h->seg_size = size;
    h->create_time = apc_now(now);
    h->creator_pid = pid;
    h->ttl = ttl;
    h->gc_ttl = gc_ttl;
    h->aux_off = l.aux_off;
    h->aux_size = APC_AUX_SIZE;
    h->arena_off = l.arena_off;
    h->arena_size = arena_end - l.arena_off;
    h->geom[0].buckets_off = l.buckets_off[0];
    h->geom[0].nslots = nslots_user;
    h->geom[1].buckets_off = l.buckets_off[1];
    h->geom[1].nslots = nslots_files;
    h->next_version = 1;
    for (int t = 0; t < APC_NTABLES; t++)
        h->stats[t].start_time = h->create_time;
    memset((char *)base + l.aux_off, 0, l.arena_off - l.aux_off);
    /* Every lock is free as zeroed (lock.c). */

    apc_seg tmp = {.base = base, .hdr = h, .size = size, .arena_off = l.arena_off, .arena_end = arena_end};
    apc_sma_init_wl(&tmp);

    __atomic_store_n(&h->magic, APC_MAGIC_U64, __ATOMIC_RELEASE);
    return APC_OK;
}

uint64_t apc_peek_format(void *base, uint64_t mapped_size)
{
    if (mapped_size < 16)
        return 0;
    return ((apc_header *)base)->format;
}

static int validate(const apc_header *h, uint64_t mapped)
{
    if (mapped < sizeof(uint64_t))
        return APC_E_MAGIC;
    uint64_t magic = __atomic_load_n(&h->magic, __ATOMIC_ACQUIRE);
    if (magic == 0)
        return APC_E_NOTREADY;
    if (magic != APC_MAGIC_U64)
        return APC_E_MAGIC;
    if (mapped < sizeof(apc_header))
        return APC_E_TRUNCATED;
    if (h->format != APC_FORMAT || h->header_size != sizeof(apc_header) ||
        h->endian != APC_ENDIAN_MARK)
        return APC_E_FORMAT;
    if (h->flags & ~(uint32_t)APC_FMT_CHECKSUMS)
        return APC_E_CORRUPT;
    if (h->seg_size > mapped)
        return APC_E_TRUNCATED;
    uint64_t size = h->seg_size;
    if (h->aux_off < sizeof(apc_header) || h->aux_size != APC_AUX_SIZE ||
        h->aux_off > size || h->aux_size > size - h->aux_off)
        return APC_E_CORRUPT;
    for (int t = 0; t < APC_NTABLES; t++) {
        const apc_table_geom *g = &h->geom[t];
        if (g->nslots < 1 || g->nslots > (1ULL << 32) || (g->buckets_off & 7) ||
            g->buckets_off < h->aux_off + h->aux_size || g->buckets_off > h->arena_off ||
            g->nslots * sizeof(apc_off_t) > h->arena_off - g->buckets_off)
            return APC_E_CORRUPT;
    }
    if ((h->arena_off & (APC_ALIGN - 1)) || h->arena_size < APC_MIN_ARENA ||
        (h->arena_size & (APC_ALIGN - 1)) || h->arena_off > size ||
        h->arena_size > size - h->arena_off)
        return APC_E_CORRUPT;
    return APC_OK;
}

/* ------------------------------------------------------------ SIGBUS */

#define APC_NGUARDS 128

static struct guard {
    char *base; /* 0: a free entry */
    uint64_t size;
    apc_seg *seg;
} guards[APC_NGUARDS];
static pthread_mutex_t guards_mu = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction old_bus;
static long page_size;

static void on_sigbus(int sig, siginfo_t *info, void *ctx)
{
    char *addr = info ? (char *)info->si_addr : NULL;
    for (int i = 0; addr && i < APC_NGUARDS; i++) {
        char *b = __atomic_load_n(&guards[i].base, __ATOMIC_ACQUIRE);
        if (!b || addr < b ||
            (uint64_t)(addr - b) >= __atomic_load_n(&guards[i].size, __ATOMIC_RELAXED))
            continue;
        apc_seg *seg = __atomic_load_n(&guards[i].seg, __ATOMIC_RELAXED);
        void *page = (void *)((uintptr_t)addr & ~(uintptr_t)(page_size - 1));
        if (mmap(page, (size_t)page_size, PROT_READ | PROT_WRITE,
                 MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == MAP_FAILED)
            break;
        if (seg)
            __atomic_store_n(&seg->truncated, 1, __ATOMIC_RELAXED);
        return; /* the access completes, on zeros */
    }
    /* Not ours. */
    if (old_bus.sa_flags & SA_SIGINFO) {
        if (old_bus.sa_sigaction) {
            old_bus.sa_sigaction(sig, info, ctx);
            return;
        }
    } else if (old_bus.sa_handler != SIG_DFL && old_bus.sa_handler != SIG_IGN) {
        old_bus.sa_handler(sig);
        return;
    }
    /* The default action: the instruction faults again, and that kills. */
    signal(SIGBUS, SIG_DFL);
}

static void install_sigbus(void)
{
    page_size = sysconf(_SC_PAGESIZE);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &old_bus);
}

static int guard_set(apc_seg *seg, void *base, uint64_t size)
{
    int rc = APC_E_SYS;
    pthread_mutex_lock(&guards_mu);
    if (size) {
        /* Ours, or put back in front of whatever replaced it since (say
         * faulthandler.enable()), which then gets what is not ours. */
        struct sigaction cur;
        if (sigaction(SIGBUS, NULL, &cur) == 0 &&
            (!(cur.sa_flags & SA_SIGINFO) || cur.sa_sigaction != on_sigbus))
            install_sigbus();
    }
    for (int i = 0; i < APC_NGUARDS; i++) {
        if (guards[i].base == base) {
            /* Stop guarding (or guard anew): clear the entry first. */
            __atomic_store_n(&guards[i].base, NULL, __ATOMIC_RELEASE);
            guards[i].size = 0;
            guards[i].seg = NULL;
        }
    }
    if (!size) {
        rc = APC_OK;
    } else {
        for (int i = 0; i < APC_NGUARDS; i++) {
            if (!guards[i].base) {
                guards[i].size = size;
                guards[i].seg = seg;
                __atomic_store_n(&guards[i].base, (char *)base, __ATOMIC_RELEASE);
                rc = APC_OK;
                break;
            }
        }
    }
    pthread_mutex_unlock(&guards_mu);
    return rc;
}

int apc_guard_range(apc_seg *seg, void *base, uint64_t size)
{
    if (!base)
        return APC_E_ARG;
    return guard_set(seg, base, size);
}

/* In a forked child, the calls that were in flight in other threads of the
 * parent do not exist. */
static void after_fork_child(void)
{
    pthread_mutex_init(&guards_mu, NULL);
    for (int i = 0; i < APC_NGUARDS; i++) {
        apc_seg *seg = guards[i].base ? guards[i].seg : NULL;
        if (seg)
            seg->inflight = 0;
    }
}

/* ----------------------------------------------------------- the handle */

#define APC_LOCK_TIMEOUT_NS 5000000000ULL

static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static void fork_init(void) { pthread_atfork(NULL, NULL, after_fork_child); }

int apc_attach_fd(int fd, apc_seg **out)
{
    pthread_once(&fork_once, fork_init);
    *out = NULL;
    struct stat st;
    if (fstat(fd, &st) != 0)
        return APC_E_SYS;
    if (!S_ISREG(st.st_mode) || st.st_size < (off_t)sizeof(uint64_t))
        return APC_E_MAGIC;
    uint64_t mapped = (uint64_t)st.st_size;
    void *base = mmap(NULL, (size_t)mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        return APC_E_SYS;
    apc_seg *seg = calloc(1, sizeof *seg);
    if (!seg) {
        munmap(base, (size_t)mapped);
        return APC_E_SYS;
    }
    seg->base = base;
    seg->size = mapped;
    seg->fd = -1;
    /* Guard first: validating reads the header, which may be cut short. */
    guard_set(seg, base, mapped);
    apc_header *h = (apc_header *)base;
    int rc = validate(h, mapped);
    if (rc == APC_OK && seg->truncated)
        rc = APC_E_TRUNCATED;
    if (rc != APC_OK) {
        guard_set(seg, base, 0);
        munmap(base, (size_t)mapped);
        free(seg);
        return rc;
    }
    seg->hdr = h;
    seg->map_size = mapped;
    seg->size = h->seg_size;
    seg->arena_off = h->arena_off;
    seg->arena_end = h->arena_off + h->arena_size;
    seg->checksums = (h->flags & APC_FMT_CHECKSUMS) != 0;
    seg->lock_timeout_ns = APC_LOCK_TIMEOUT_NS;
    seg->dev_major = major(st.st_dev);
    seg->dev_minor = minor(st.st_dev);
    seg->ino = (uint64_t)st.st_ino;
    for (int t = 0; t < APC_NTABLES; t++)
        seg->geom[t] = h->geom[t]; /* validated above; never re-read */
    /* Large values are written through the file where that saves page
     * faults (api.c), with a map of the pages this process has written. */
    uint64_t pages = (seg->size + APC_PAGE - 1) / APC_PAGE;
    seg->seen = calloc((pages + 7) / 8, 1);
    if (seg->seen) {
        seg->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        seg->seen_pages = pages;
        seg->seen_pid = apc_pid();
    }
    *out = seg;
    return APC_OK;
}

void apc_set_lock_timeout(apc_seg *seg, uint64_t ns)
{
    if (seg)
        seg->lock_timeout_ns = ns;
}

int apc_fd(apc_seg *seg) { return seg ? seg->fd : -1; }

void apc_close(apc_seg *seg)
{
    if (!seg || __atomic_exchange_n(&seg->closing, 1, __ATOMIC_SEQ_CST))
        return;
    /* Every call in flight is bounded (by lock_timeout or the reader's
     * wait); so is this wait. */
    while (__atomic_load_n(&seg->inflight, __ATOMIC_ACQUIRE) > 0) {
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
    guard_set(seg, seg->base, 0);
    munmap(seg->base, (size_t)seg->map_size);
    if (seg->fd >= 0)
        close(seg->fd);
    seg->fd = -1;
    free(seg->seen);
    seg->seen = NULL;
    /* seg itself stays: see THE HANDLE'S LIFE. */
}

void apc_count_corrupt(apc_seg *seg, int table)
{
    if (apc_seg_enter(seg) != APC_OK)
        return;
    if (table >= 0 && table < APC_NTABLES)
        ADD(&apc_my_stripe(seg)->corrupt[table], 1);
    apc_seg_leave(seg, APC_OK);
}

void apc_header_map_get(apc_header_map *out)
{
    out->header_size = sizeof(apc_header);
    out->free_bytes_off = offsetof(apc_header, free_bytes);
    out->num_entries_off = offsetof(apc_header, bstripes[0].st[APC_TABLE_USER].num_entries);
    out->bstripe_size = sizeof(apc_bstripe);
    out->nstripes = APC_NSEQ;
    out->slot_size = sizeof(apc_slot);
    out->slot_hash_off = offsetof(apc_slot, hash);
    out->slot_val_len_off = offsetof(apc_slot, val_len);
    out->slot_key_len_off = offsetof(apc_slot, key_len);
    out->slot_type_off = offsetof(apc_slot, type);
    out->slot_sum_off = sizeof(apc_slot); /* of an entry that is not an int */
    out->slot_next_off = offsetof(apc_slot, next_off);
    out->slot_ival_off = sizeof(apc_slot); /* of an int entry */
    out->slot_pin_off = offsetof(apc_slot, pin);
    out->alock_off = offsetof(apc_header, alock);
    out->slock_off = offsetof(apc_header, bstripes[0].lock);
    out->elocks_off = offsetof(apc_header, elocks);
    out->elock_size = sizeof(apc_elock);
    out->elock_pid_off = offsetof(apc_elock, pid);
    out->elock_start_off = offsetof(apc_elock, start);
}

/* Validated at attach and never changed: read once, from a live handle. */
uint64_t apc_aux_offset(apc_seg *seg)
{
    if (apc_seg_enter(seg) != APC_OK)
        return 0;
    return (uint64_t)apc_seg_leave(seg, (int64_t)seg->hdr->aux_off);
}

uint64_t apc_aux_size(apc_seg *seg)
{
    if (apc_seg_enter(seg) != APC_OK)
        return 0;
    return (uint64_t)apc_seg_leave(seg, (int64_t)seg->hdr->aux_size);
}

/* The longest chain (or list) any walk will follow: more links than blocks
 * can exist means a cycle. */
