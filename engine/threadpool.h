/* threadpool.h - a persistent pool of worker threads with a cheap
 * fork-join: the caller publishes one job, every thread (the caller
 * included, as thread 0) runs it, and the call returns when all are done.
 *
 * Workers spin for a short while after each job before sleeping on a
 * futex, so back-to-back jobs (a decode step issues a few hundred) cost a
 * few microseconds each instead of a wake-up syscall. One caller at a time:
 * the pool belongs to the thread that drives the backend. */
#ifndef LM_THREADPOOL_H
#define LM_THREADPOOL_H

#include <stdint.h>

typedef struct lm_pool lm_pool;

/* tid in [0, n_threads); thread 0 is the caller of lm_pool_run. */
typedef void (*lm_pool_fn)(void *arg, int tid, int n_threads);
/* Called for each index of a dynamically scheduled loop. */
typedef void (*lm_pool_item_fn)(void *arg, int64_t item, int tid);

/* n_threads: total, caller included; 0 means the number of online CPUs.
 * Returns NULL when threads cannot be created. */
lm_pool *lm_pool_create(int n_threads);
void lm_pool_destroy(lm_pool *p);
int lm_pool_size(const lm_pool *p);

/* Runs fn(arg, tid, n) on every thread and waits for all of them.
 *
 * A job must not call lm_pool_run or lm_pool_for itself: such a nested call
 * runs serially on the calling thread as tid 0, so per-thread scratch
 * indexed by tid would be shared with the real thread 0 (and any other
 * thread nesting at the same time). */
void lm_pool_run(lm_pool *p, lm_pool_fn fn, void *arg);

/* Runs fn for item = 0 .. n_items-1, handing items out one at a time from
 * a shared counter. Prefer it to lm_pool_run: workers that are late (their
 * core is busy with another process) are not waited for, the caller and the
 * others take their items. tid is unique among the threads running items.
 * The same rule on nesting as for lm_pool_run applies. */
void lm_pool_for(lm_pool *p, int64_t n_items, lm_pool_item_fn fn, void *arg);

/* The contiguous share [*begin, *end) of n items for thread tid of n_threads,
 * with shares rounded to multiples of align (> 0). */
void lm_pool_split(int64_t n, int64_t align, int tid, int n_threads, int64_t *begin, int64_t *end);

#endif
