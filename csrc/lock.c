/*
 * lock.c -- the segment's locks (one per bucket stripe, and the
 * allocator's), the seqlock, and what happens when a holder dies, stalls,
 * or was never there.  Which lock guards what, and their order, are in
 * apc_internal.h (LOCKS); what a taken-over lock's next holder repairs is
 * api.c's business: here a lock only reports that it was taken over.
 *
 * A LOCK
 *
 * Each is our own lock on a 32-bit futex word in the segment, not a
 * pthread mutex, because every word of it is then a claim this file can
 * check:
 *
 *   word == 0                      free
 *   word == tid | APC_LOCK_WAITERS held by thread tid (the kernel's id of
 *                                  the thread), and someone may sleep on it
 *
 * Taking it is one compare-and-swap from 0 to our tid.  Dropping it is one
 * compare-and-swap back to 0 (a lock that was taken over from us, because
 * we were believed dead, is left alone), and a FUTEX_WAKE if the waiters bit
 * was set.  Beside the word the holder records who it is (pid, tid and the
 * thread's start time, from /proc) and since when.
 *
 * A waiter spins briefly, then sleeps on the futex in short slices, and
 * between slices asks whether the holder still exists:
 *
 *   - no such thread, a zombie, or a thread whose start time is not the one
 *     recorded (its tid was reused): the holder is dead.  The waiter takes
 *     the word over by compare-and-swap (exactly one waiter wins), and goes
 *     on as the holder, told that it took the lock over;
 *   - a word that cannot be a thread id, or the waiters bit alone: the word
 *     is garbage, and is taken over the same way;
 *   - a live holder: the waiter keeps waiting, up to the handle's
 *     lock_timeout.  Then it checks that the holder maps this very segment
 *     (/proc/PID/maps, by device and inode): a process that does not cannot
 *     hold its lock, so the word is garbage and is taken over.  Otherwise
 *     the waiter gives up with APC_E_BUSY and the holder's pid
 *     (apc_last_busy_pid).
 *
 * So a writer never waits for a dead holder, and waits for a live one at
 * most lock_timeout.
 *
 * READERS
 *
 * Readers do not lock.  They read a seqlock word, walk, and check that it
 * did not move.  While a stripe stays odd they spin, then yield, for at most
 * APC_READ_WAIT_NS; then they give up with APC_WAITED (api.c first takes
 * the stripe's lock without waiting if it is free or its holder dead, and
 * looks once more), which every read turns into a miss.  A reader never
 * waits on a writer longer than that.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "apc_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define cpu_relax() ((void)0)
#endif

#define APC_TID_MAX 4194304u /* PID_MAX_LIMIT on 64-bit Linux */

uint64_t apc_now(uint64_t now)
{
    if (now)
        return now;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return (uint64_t)ts.tv_sec;
}

uint64_t apc_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------ who we are */

/* getpid() and gettid() are system calls; the hot paths ask these instead.
 * A fork handler bumps fork_gen, which makes every thread look itself up
 * again in the child. */
int64_t apc_cached_pid; /* what apc_pid() returns (apc_internal.h) */
static uint64_t fork_gen = 1;
/* initial-exec: a few bytes of static TLS, read without a call to
 * __tls_get_addr (which a shared object's thread-locals cost otherwise, on
 * every lock taken). */
#define APC_TLS __thread __attribute__((tls_model("initial-exec")))
static APC_TLS uint64_t tls_gen;
static APC_TLS uint32_t tls_tid;
static APC_TLS int64_t tls_pid;
static APC_TLS uint64_t tls_start;
static APC_TLS int64_t tls_busy_pid;
static uint64_t proc_start, proc_start_gen;

static void pid_after_fork(void)
{
    __atomic_store_n(&apc_cached_pid, (int64_t)getpid(), __ATOMIC_RELAXED);
    __atomic_add_fetch(&fork_gen, 1, __ATOMIC_RELAXED);
}

/* At load, before any call into the engine. */
__attribute__((constructor)) static void pid_init(void)
{
    __atomic_store_n(&apc_cached_pid, (int64_t)getpid(), __ATOMIC_RELAXED);
    pthread_atfork(NULL, NULL, pid_after_fork);
}

/* Field 22 (starttime) and field 3 (state) of /proc/<tid>/stat, or of
 * /proc/thread-self/stat for tid 0.  Returns 0 if there is no such thread;
 * *zombie is set for a thread that has exited but not been reaped. */
static int read_stat(uint32_t tid, uint64_t *start, int *zombie)
{
    char path[64], buf[512];
    if (tid)
        snprintf(path, sizeof path, "/proc/%u/stat", tid);
    else
        snprintf(path, sizeof path, "/proc/thread-self/stat");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT || errno == ESRCH ? 0 : -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return n < 0 && errno == ESRCH ? 0 : -1;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ')
        return -1;
    *zombie = p[2] == 'Z' || p[2] == 'X';
    /* p + 2 is field 3; starttime is field 22, 19 fields on. */
    char *q = p + 2;
    for (int f = 3; f < 22 && q; f++) {
        q = strchr(q, ' ');
        if (q)
            q++;
    }
    *start = q ? strtoull(q, NULL, 10) : 0;
    return 1;
}

static void self_refresh(void)
{
    uint64_t g = __atomic_load_n(&fork_gen, __ATOMIC_RELAXED);
    if (tls_gen == g)
        return;
    tls_tid = (uint32_t)syscall(SYS_gettid);
    tls_pid = (int64_t)getpid();
    int z;
    if (read_stat(0, &tls_start, &z) != 1)
        tls_start = 0;
    tls_gen = g;
}

static inline uint32_t self_tid(void)
{
    if (__builtin_expect(tls_gen != __atomic_load_n(&fork_gen, __ATOMIC_RELAXED), 0))
        self_refresh();
    return tls_tid;
}

int64_t apc_last_busy_pid(void) { return tls_busy_pid; }

/* This process's start time (clock ticks since boot), as /proc says. */
uint64_t apc_proc_start(void)
{
    uint64_t g = __atomic_load_n(&fork_gen, __ATOMIC_RELAXED);
    if (__atomic_load_n(&proc_start_gen, __ATOMIC_ACQUIRE) != g) {
        uint64_t start = 0;
        int zombie;
        if (read_stat((uint32_t)apc_pid(), &start, &zombie) != 1)
            start = 0;
        __atomic_store_n(&proc_start, start, __ATOMIC_RELAXED);
        __atomic_store_n(&proc_start_gen, g, __ATOMIC_RELEASE);
    }
    return __atomic_load_n(&proc_start, __ATOMIC_RELAXED);
}

/* Is pid a running process, and (start != 0) the one that started at
 * start?  A zombie (killed, not yet reaped) is not; nor is a process that
 * got the pid of one that died. */
int apc_pid_alive_since(int64_t pid, uint64_t start)
{
    if (pid <= 0 || pid > APC_TID_MAX)
        return 0;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
        return 0;
    uint64_t now_start = 0;
    int zombie = 0;
    int r = read_stat((uint32_t)pid, &now_start, &zombie);
    if (r == 0 || (r == 1 && zombie))
        return 0;
    return !(r == 1 && start && now_start != start);
}

int apc_pid_alive(int64_t pid) { return apc_pid_alive_since(pid, 0); }

/* A counter stripe for this process (see apc_my_stripe): the first, from
 * pid % APC_NSTRIPES on, that is this process's already, nobody's, or a
 * dead process's (taken by CAS; its counts stay, since the totals are
 * sums).  Threads of one process racing here scan in the same order and
 * settle on the same stripe.  With every stripe owned by a live process,
 * pid % APC_NSTRIPES, shared.  A pid reused by another process keeps a
 * stripe from being claimed: one fewer to go round, nothing worse. */
apc_stripe *apc_claim_stripe(apc_seg *seg)
{
    int64_t pid = apc_pid();
    apc_stripe *st = seg->hdr->stripes;
    apc_stripe *mine = &st[(uint64_t)pid % APC_NSTRIPES];
    for (uint64_t n = 0; n < APC_NSTRIPES; n++) {
        apc_stripe *s = &st[((uint64_t)pid + n) % APC_NSTRIPES];
        int64_t o = LOAD(&s->owner);
        if (o != pid && o != 0 && apc_pid_alive(o))
            continue;
        if (o == pid || CAS(&s->owner, &o, pid) || o == pid) {
            mine = s;
            if (o != pid && o != 0)
                (void)apc_hits_rescue(seg, (int)(s - st)); /* its dead owner's log */
            break;
        }
    }
    STORER(&seg->my_stripe, mine);
    STORER(&seg->my_log, &seg->hdr->hitlogs[mine - st]);
    STORE(&seg->stripe_pid, pid);
    return mine;
}

/* ---------------------------------------------------------- the futex */

static long futex(uint32_t *w, int op, uint32_t val, const struct timespec *ts)
{
    return syscall(SYS_futex, w, op, val, ts, NULL, 0);
}

/* Does the thread that the word names still exist, as the holder recorded
 * itself?  1 alive, 0 dead or garbage. */
static int holder_alive(apc_lock *l, uint32_t w)
{
    uint32_t tid = w & APC_LOCK_TIDMASK;
    if (tid == 0 || tid > APC_TID_MAX)
        return 0;
    if (kill((pid_t)tid, 0) != 0 && errno == ESRCH)
        return 0;
    uint64_t start = 0;
    int zombie = 0;
    int r = read_stat(tid, &start, &zombie);
    if (r == 0 || (r == 1 && zombie))
        return 0;
    if (r == 1 && LOAD(&l->tid) == tid && LOADR(&l->start) && start != LOADR(&l->start))
        return 0; /* the tid was reused by another thread */
    return 1;
}

/* Does process pid map the segment (by device and inode)?  1 yes, 0 no, and
 * 1 when we cannot tell (no fd, or its maps are not readable to us).  An
 * empty maps file that we could read is a thread with no memory of its own
 * (a kernel thread): it maps nothing, so it holds nothing. */
static int holder_maps_segment(apc_seg *seg, int64_t pid)
{
    if (seg->ino == 0 || pid <= 0 || pid > APC_TID_MAX)
        return 1;
    char path[64];
    snprintf(path, sizeof path, "/proc/%lld/maps", (long long)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return errno == ENOENT ? 0 : 1;
    char line[512];
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long long lo, hi, off, ino;
        unsigned maj, mnr;
        char perms[8];
        if (sscanf(line, "%llx-%llx %7s %llx %x:%x %llu", &lo, &hi, perms, &off, &maj, &mnr, &ino) ==
                7 &&
            ino == seg->ino && maj == seg->dev_major && mnr == seg->dev_minor) {
            found = 1;
            break;
        }
    }
    fclose(f);
    return found;
}

static void record_owner(apc_lock *l)
{
    STORER(&l->pid, tls_pid);
    STORER(&l->start, tls_start);
    STORE(&l->tid, tls_tid);
}

/* Take over a word whose holder is gone: CAS from exactly what we saw. */
static int steal(apc_lock *l, uint32_t seen, uint32_t me)
{
    if (!CAS32(&l->word, &seen, me | APC_LOCK_WAITERS))
        return 0;
    ADD(&l->steals, 1);
    record_owner(l);
    return 1;
}

int apc_lock_try(apc_seg *seg, apc_lock *l, int *stolen)
{
    (void)seg;
    uint32_t me = self_tid();
    uint32_t w = 0;
    *stolen = 0;
    if (CAS32(&l->word, &w, me)) {
        record_owner(l);
        return APC_OK;
    }
    /* The engine never takes the lock twice: a word naming this very
     * thread is garbage, like one naming a dead thread. */
    if (((w & APC_LOCK_TIDMASK) == me || !holder_alive(l, w)) && steal(l, w, me)) {
        *stolen = 1;
        return APC_OK;
    }
    return APC_E_BUSY;
}

int apc_lock_acquire(apc_seg *seg, apc_lock *l, uint64_t timeout_ns, int *stolen)
{
    uint32_t me = self_tid();
    uint32_t w = 0;
    *stolen = 0;
    if (__builtin_expect(CAS32(&l->word, &w, me), 1)) {
        record_owner(l);
        return APC_OK;
    }
    if ((w & APC_LOCK_TIDMASK) == me && steal(l, w, me)) {
        *stolen = 1; /* see apc_lock_try */
        return APC_OK;
    }

    /* A holder usually keeps the lock for a microsecond: spin first. */
    for (int i = 0; i < 200; i++) {
        cpu_relax();
        w = LOADR(&l->word);
        if (w == 0) {
            if (CAS32(&l->word, &w, me)) {
                record_owner(l);
                return APC_OK;
            }
        }
    }

    uint64_t start = apc_mono_ns(), now = start, last_check = start;
    uint64_t slice = 200000; /* ns: 0.2 ms, growing to 10 ms */
    int checked_maps = 0;
    for (;;) {
        w = LOAD(&l->word);
        if ((w & APC_LOCK_TIDMASK) == 0) {
            if (w != 0 && (w & ~APC_LOCK_WAITERS)) {
                /* Bits where none may be: garbage. */
                if (steal(l, w, me)) {
                    *stolen = 1;
                    return APC_OK;
                }
                continue;
            }
            /* Free (w == 0), or the waiters bit alone (garbage, or a
             * holder that died between its two steps: cannot happen with
             * one CAS, so garbage).  Take it with the waiters bit: others
             * may be asleep. */
            uint32_t seen = w;
            if (CAS32(&l->word, &seen, me | APC_LOCK_WAITERS)) {
                record_owner(l);
                if (w != 0) {
                    ADD(&l->steals, 1);
                    *stolen = 1;
                }
                return APC_OK;
            }
            continue;
        }
        if (now - last_check >= 1000000) {
            last_check = now;
            if (!holder_alive(l, w)) {
                if (steal(l, w, me)) {
                    *stolen = 1;
                    return APC_OK;
                }
                continue;
            }
        }
        if (now - start >= timeout_ns) {
            int64_t pid = LOAD(&l->tid) == (w & APC_LOCK_TIDMASK) ? LOADR(&l->pid)
                                                                  : (int64_t)(w & APC_LOCK_TIDMASK);
            if (!checked_maps) {
                checked_maps = 1;
                if (!holder_maps_segment(seg, pid)) {
                    if (steal(l, w, me)) {
                        *stolen = 1;
                        return APC_OK;
                    }
                    continue;
                }
            }
            tls_busy_pid = pid;
            return APC_E_BUSY;
        }
        if (!(w & APC_LOCK_WAITERS)) {
            uint32_t seen = w;
            if (!CAS32(&l->word, &seen, w | APC_LOCK_WAITERS))
                continue;
            w |= APC_LOCK_WAITERS;
        }
        uint64_t left = timeout_ns - (now - start);
        uint64_t d = slice < left ? slice : left;
        struct timespec ts = {(time_t)(d / 1000000000ULL), (long)(d % 1000000000ULL)};
        futex(&l->word, FUTEX_WAIT, w, &ts);
        if (slice < 10000000)
            slice *= 2;
        now = apc_mono_ns();
    }
}

void apc_lock_release(apc_lock *l)
{
    uint32_t me = tls_tid;
    uint32_t w = LOADR(&l->word);
    if ((w & APC_LOCK_TIDMASK) == me) {
        /* Leave no trace of us: a lock that is free reads as zeros. */
        STORER(&l->tid, 0);
        STORER(&l->pid, 0);
        STORER(&l->start, 0);
    }
    for (;;) {
        if ((w & APC_LOCK_TIDMASK) != me)
            return; /* taken over while we were believed dead: not ours */
        if (CAS32(&l->word, &w, 0))
            break;
    }
    if (w & APC_LOCK_WAITERS)
        futex(&l->word, FUTEX_WAKE, 1, NULL);
}

/* ---------------------------------------------- the segment's locks */

/* What a lock guards is repaired by the caller (api.c), which knows what
 * that is; here a taken-over lock only reports *stolen and, for a stripe,
 * has its seq word made even. */

/* Stripe i's seqlock word, in its lock's cache line. */
static inline uint64_t *seq_of(apc_seg *seg, int i) { return &seg->hdr->bstripes[i].lock.seq; }

static void seq_even(apc_seg *seg, int i)
{
    uint64_t s = LOADR(seq_of(seg, i));
    if (s & 1)
        STORE(seq_of(seg, i), s + 1);
}

static apc_lock *stripe_lock(apc_seg *seg, int i) { return &seg->hdr->bstripes[i].lock; }

int apc_sl_acquire(apc_seg *seg, int i, int *stolen)
{
    int rc = apc_lock_acquire(seg, stripe_lock(seg, i), seg->lock_timeout_ns, stolen);
    if (rc == APC_OK)
        seg->seq_depth[i] = 0;
    return rc;
}

int apc_sl_try(apc_seg *seg, int i, int *stolen)
{
    int rc = apc_lock_try(seg, stripe_lock(seg, i), stolen);
    if (rc == APC_OK)
        seg->seq_depth[i] = 0;
    return rc;
}

void apc_sl_release(apc_seg *seg, int i)
{
    APC_ASSERT(seg->seq_depth[i] == 0);
    apc_lock_release(stripe_lock(seg, i));
}

/* A dead holder's stripe section will never end: make it even.  For the
 * caller, after it has finished the holder's intents. */
void apc_sl_seq_reset(apc_seg *seg, int i) { seq_even(seg, i); }

int apc_al_acquire(apc_seg *seg, int *stolen)
{
    return apc_lock_acquire(seg, &seg->hdr->alock, seg->lock_timeout_ns, stolen);
}

void apc_al_release(apc_seg *seg) { apc_lock_release(&seg->hdr->alock); }

/* The whole lock: every stripe in order, then alock.  *stolen if any of
 * them was taken over.  On failure nothing is held. */
int apc_whole_acquire(apc_seg *seg, int *stolen)
{
    *stolen = 0;
    for (int i = 0; i < APC_NSEQ; i++) {
        int st;
        int rc = apc_sl_acquire(seg, i, &st);
        if (rc != APC_OK) {
            while (i-- > 0)
                apc_lock_release(stripe_lock(seg, i));
            return rc;
        }
        *stolen |= st;
    }
    int st;
    int rc = apc_al_acquire(seg, &st);
    if (rc != APC_OK) {
        for (int i = APC_NSEQ; i-- > 0;)
            apc_lock_release(stripe_lock(seg, i));
        return rc;
    }
    *stolen |= st;
    seg->wl_since = apc_mono_ns();
    return APC_OK;
}

/* After a whole repair: every section the dead left open is closed. */
void apc_whole_seq_reset(apc_seg *seg)
{
    for (int i = 0; i < APC_NSEQ; i++)
        seq_even(seg, i);
}

static void whole_release(apc_seg *seg)
{
    apc_al_release(seg);
    for (int i = APC_NSEQ; i-- > 0;)
        apc_sl_release(seg, i);
}

/* Every writer waits while the whole lock is held: the longest hold is
 * kept (under alock) for info(), so a stall has a number. */
void apc_whole_release(apc_seg *seg)
{
    uint64_t held = apc_mono_ns() - seg->wl_since;
    if (held > seg->hdr->wl_hold_max_ns)
        STORER(&seg->hdr->wl_hold_max_ns, held);
    whole_release(seg);
}

/* After a section that only read (info, check, sma_info): an inspection
 * leaves no byte of the segment changed, this record included. */
void apc_whole_release_ro(apc_seg *seg) { whole_release(seg); }

/* alock, for a holder of a stripe (or of nothing).  One taken over from a
 * dead holder means half-spliced free lists: a whole repair is owed, and
 * the caller, told APC_ESCALATE, goes without (nothing is held).  So does
 * every later taker until the repair has run: the owed flag is set before
 * the lock is let go, and read after it is taken. */
int apc_al_lock(apc_seg *seg)
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

/* Debug builds: does this thread hold the lock? */
static int held(apc_lock *l) { return (LOADR(&l->word) & APC_LOCK_TIDMASK) == self_tid(); }
int apc_sl_held(apc_seg *seg, int i) { return held(stripe_lock(seg, i)); }
int apc_al_held(apc_seg *seg) { return held(&seg->hdr->alock); }
int apc_wl_held(apc_seg *seg) { return held(&seg->hdr->alock) && held(stripe_lock(seg, APC_NSEQ - 1)); }

/* Is the lock held by a holder that is gone (dead, reused, garbage)? */
int apc_lock_orphaned(apc_lock *l)
{
    uint32_t w = LOAD(&l->word);
    return w != 0 && !holder_alive(l, w);
}

/* Is stripe i's lock word set at all (a writer may be inside)? */
int apc_sl_busy(apc_seg *seg, int i) { return LOADR(&stripe_lock(seg, i)->word) != 0; }

/* A reader found something broken under a valid seq: the next holder of
 * the whole lock repairs it. */
void apc_repair_later(apc_seg *seg)
{
    STORER(&seg->hdr->repair_due, 1);
}

/*
 * Write sections that make seq odd may nest (an insert that has to evict
 * inside a store); only the outermost begin and end touch seq.  The depth
 * lives in the handle and is reset whenever the lock is taken, since it
 * means something only while the lock is held.
 */
static void seq_begin_one(apc_seg *seg, int i)
{
    if (seg->seq_depth[i]++)
        return;
    uint64_t s = LOADR(seq_of(seg, i));
    if (s & 1) /* left odd by a writer that died; repair already ran */
        s++;
    STORER(seq_of(seg, i), s + 1);
}

static void seq_end_one(apc_seg *seg, int i)
{
    APC_ASSERT(seg->seq_depth[i] > 0);
    if (--seg->seq_depth[i])
        return;
    uint64_t s = LOADR(seq_of(seg, i));
    STORE(seq_of(seg, i), (s | 1) + 1);
}

void apc_seq_begin_wl(apc_seg *seg, int stripe)
{
    if (stripe == APC_SEQ_ALL)
        for (int i = 0; i < APC_NSEQ; i++)
            seq_begin_one(seg, i);
    else
        seq_begin_one(seg, stripe);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

void apc_seq_end_wl(apc_seg *seg, int stripe)
{
    __atomic_thread_fence(__ATOMIC_RELEASE);
    if (stripe == APC_SEQ_ALL)
        for (int i = 0; i < APC_NSEQ; i++)
            seq_end_one(seg, i);
    else
        seq_end_one(seg, stripe);
}

int apc_seq_read_begin(apc_seg *seg, int stripe, uint64_t *out)
{
    return apc_seq_read_begin_opt(seg, stripe, out, 0);
}

/* nowait: give up (APC_WAITED) after the spins, before yielding: the
 * caller has something to let go of before it waits (the GIL). */
int apc_seq_read_begin_opt(apc_seg *seg, int stripe, uint64_t *out, int nowait)
{
    uint64_t s = LOAD(seq_of(seg, stripe));
    if (__builtin_expect(!(s & 1), 1)) {
        *out = s;
        return APC_OK;
    }
    uint64_t start = 0;
    for (unsigned spins = 1;; spins++) {
        s = LOAD(seq_of(seg, stripe));
        if (!(s & 1)) {
            *out = s;
            return APC_OK;
        }
        if (spins < 64) {
            cpu_relax();
            continue;
        }
        if (nowait)
            return APC_WAITED;
        /* The clock after every yield: on a busy machine one yield can
         * give the CPU away for a whole time slice. */
        uint64_t now = apc_mono_ns();
        if (!start)
            start = now;
        if (now - start < APC_READ_WAIT_NS) {
            sched_yield();
            continue;
        }
        return APC_WAITED;
    }
}

int apc_seq_read_valid(apc_seg *seg, int stripe, uint64_t s)
{
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return LOADR(seq_of(seg, stripe)) == s;
}

/* ------------------------------------------------------ fault injection */

#ifdef APC_DEBUG
static char fault_name[64];
static int fault_stop;

void apc_fault_point(const char *name)
{
    if (fault_name[0] && strcmp(fault_name, name) == 0) {
        if (fault_stop) {
            /* Stop exactly here, holding whatever is held, until SIGCONT;
             * once: a point inside a loop does not stop again. */
            fault_name[0] = 0;
            kill(getpid(), SIGSTOP);
            return;
        }
        /* Die exactly here, holding whatever is held. */
        kill(getpid(), SIGKILL);
        for (;;)
            pause();
    }
}

int apc_fault_arm(const char *name)
{
    if (!name)
        name = "";
    fault_stop = strncmp(name, "stop:", 5) == 0;
    if (fault_stop)
        name += 5;
    if (strlen(name) >= sizeof(fault_name))
        return APC_E_ARG;
    strcpy(fault_name, name);
    return APC_OK;
}

int apc_debug_build(void) { return 1; }

#else
int apc_fault_arm(const char *name)
{
    (void)name;
    return APC_E_ARG;
}

int apc_debug_build(void) { return 0; }
#endif
