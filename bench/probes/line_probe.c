/*
 * line_probe.c -- what it costs this machine's cores to share a cache line.
 *
 * Not apccache: a probe of the machine under bench/multiproc.py.  Each
 * round times one process and then two, each picking random 128-byte
 * entries of a 10,000-entry array and reading two words of each, in one of
 * three modes:
 *
 *   0  the array is shared (MAP_SHARED) and only read;
 *   1  shared, and each read also adds 1 to the entry's first word (one
 *      atomic write per read, as a hit count in the entry is);
 *   2  each process has its own copy, read and added to.
 *
 * It prints each round's two-process / one-process ratio.  Build and run:
 *
 *     cc -O2 -o /tmp/line_probe bench/probes/line_probe.c
 *     for m in 0 1 2; do /tmp/line_probe $m 12; done
 *
 * On a machine whose two cores pass lines cheaply every mode reads about
 * 2.0x.  On this project's VM modes 0 and 2 do, and mode 1 falls, in some
 * rounds, to 0.5x: the write, not the sharing, is what costs (bench/README.md,
 * "What the dict cannot show").
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define N 10000
#define LINE 128

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t run(char *base, int add, double dur, uint64_t seed)
{
    uint64_t x = seed | 1, ops = 0, sum = 0;
    double end = now() + dur;
    for (;;) {
        for (int i = 0; i < 1000; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            uint64_t *e = (uint64_t *)(base + (x % N) * LINE);
            if (add)
                __atomic_fetch_add(e, 1, __ATOMIC_SEQ_CST);
            sum += e[2] + e[5];
        }
        ops += 1000;
        if (now() > end)
            break;
    }
    return ops + (sum & 0);
}

static char *array(int shared)
{
    char *p = mmap(NULL, (size_t)N * LINE, PROT_READ | PROT_WRITE,
                   (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    memset(p, 1, (size_t)N * LINE);
    return p;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODE(0|1|2) ROUNDS\n", argv[0]);
        return 2;
    }
    int mode = atoi(argv[1]), rounds = atoi(argv[2]);
    double dur = 0.3;
    char *shared = array(1);
    uint64_t *res = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    printf("mode %d:", mode);
    for (int r = 0; r < rounds; r++) {
        char *mine = mode == 2 ? array(0) : shared;
        double one = (double)run(mine, mode != 0, dur, (uint64_t)r + 1) / dur;
        if (mine != shared)
            munmap(mine, (size_t)N * LINE);
        for (int p = 0; p < 2; p++) {
            if (fork() == 0) {
                res[p] = run(mode == 2 ? array(0) : shared, mode != 0, dur, (uint64_t)r * 7 + (uint64_t)p + 1);
                _exit(0);
            }
        }
        while (wait(NULL) > 0)
            ;
        printf(" %.2fx", (double)(res[0] + res[1]) / dur / one);
        fflush(stdout);
    }
    printf("\n");
    return 0;
}
