/*
 * lock.c -- the write lock, the seqlock, and what happens when a holder dies.
 *
 * The write lock is a process-shared robust mutex: when its owner dies, the
 * kernel hands the next locker EOWNERDEAD instead of leaving it locked.
 * That locker (there is exactly one) repairs the segment with
 * apc_repair_wl() and then calls pthread_mutex_consistent(); all of that
 * is in apc_wl_lock(), the one function that handles a dead owner.
 *
 * Readers do not lock.  They read the seqlock word, walk, and check that it
 * did not move.  If it stays odd for long, its writer may be dead with the
 * segment half changed: the reader then takes the write lock (which repairs
 * if needed) and drops it again, and retries.
 *
 * Lock order: wlock, then seq.  There is no other lock.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
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

/* Spins before a reader that sees an odd seq goes to the lock. */
#define APC_SEQ_SPINS 4096

uint64_t apc_now(uint64_t now)
{
    if (now)
        return now;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return (uint64_t)ts.tv_sec;
}

/* The one place a dead lock holder is dealt with: repair the structure,
 * then finish the write section it left open. */
static void repair_dead_owner_wl(apc_seg *seg)
{
    apc_repair_wl(seg, 0);
    for (int i = 0; i < APC_NSEQ; i++) {
        uint64_t s = LOADR(&seg->hdr->seq[i].v);
        if (s & 1)
            STORE(&seg->hdr->seq[i].v, s + 1);
    }
}

/* getpid() is a system call; the hot paths that record who holds a pin
 * ask this instead.  A fork handler keeps it right in children. */
static int64_t cached_pid;
static pthread_once_t pid_once = PTHREAD_ONCE_INIT;

static void pid_after_fork(void) { cached_pid = (int64_t)getpid(); }

static void pid_init(void)
{
    cached_pid = (int64_t)getpid();
    pthread_atfork(NULL, NULL, pid_after_fork);
}

int64_t apc_pid(void)
{
    pthread_once(&pid_once, pid_init);
    return cached_pid;
}

int apc_wl_lock(apc_seg *seg)
{
    int rc = pthread_mutex_lock(&seg->hdr->wlock.m);
    memset(seg->seq_depth, 0, sizeof seg->seq_depth);
    if (rc == 0)
        return APC_OK;
    if (rc == EOWNERDEAD) {
        /* The previous holder died inside a write section. */
        repair_dead_owner_wl(seg);
        if (pthread_mutex_consistent(&seg->hdr->wlock.m) != 0) {
            pthread_mutex_unlock(&seg->hdr->wlock.m);
            return APC_E_LOCK;
        }
        return APC_OK;
    }
    return APC_E_LOCK;
}

void apc_wl_unlock(apc_seg *seg)
{
    pthread_mutex_unlock(&seg->hdr->wlock.m);
}

/* Only meaningful in debug builds: is the write lock held by someone?  (A
 * robust mutex's owner field is not portable to read, so we only ask
 * whether trylock fails.) */
int apc_wl_held(apc_seg *seg)
{
    int rc = pthread_mutex_trylock(&seg->hdr->wlock.m);
    if (rc == 0) {
        pthread_mutex_unlock(&seg->hdr->wlock.m);
        return 0;
    }
    return 1;
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
    uint64_t s = LOADR(&seg->hdr->seq[i].v);
    if (s & 1) /* left odd by a writer that died; repair already ran */
        s++;
    STORER(&seg->hdr->seq[i].v, s + 1);
}

static void seq_end_one(apc_seg *seg, int i)
{
    APC_ASSERT(seg->seq_depth[i] > 0);
    if (--seg->seq_depth[i])
        return;
    uint64_t s = LOADR(&seg->hdr->seq[i].v);
    STORE(&seg->hdr->seq[i].v, (s | 1) + 1);
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

uint64_t apc_seq_read_begin(apc_seg *seg, int stripe)
{
    unsigned spins = 0;
    for (;;) {
        uint64_t s = LOAD(&seg->hdr->seq[stripe].v);
        if (!(s & 1))
            return s;
        if (++spins < 64) {
            cpu_relax();
        } else if (spins < APC_SEQ_SPINS) {
            sched_yield();
        } else {
            /* The writer is slow or dead: wait on its lock (repairing if it
             * died), then look again. */
            if (apc_wl_lock(seg) == APC_OK) {
                if (LOADR(&seg->hdr->seq[stripe].v) & 1) {
                    /* We hold the lock and the stripe is still odd: the
                     * section was never finished.  Repair, which evens it. */
                    repair_dead_owner_wl(seg);
                }
                apc_wl_unlock(seg);
            }
            spins = 0;
        }
    }
}

int apc_seq_read_valid(apc_seg *seg, int stripe, uint64_t s)
{
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return LOADR(&seg->hdr->seq[stripe].v) == s;
}

/* ------------------------------------------------------ fault injection */

#ifdef APC_DEBUG
static char fault_name[64];

void apc_fault_point(const char *name)
{
    if (fault_name[0] && strcmp(fault_name, name) == 0) {
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
