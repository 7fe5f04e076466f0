/* threadpool.c - fork-join pool: a generation counter announces each job,
 * workers spin on it briefly and then sleep on it with a futex. */
#include "engine/threadpool.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LM_CPU_RELAX() _mm_pause()
#else
#define LM_CPU_RELAX() ((void)0)
#endif

/* Spin budget before a worker sleeps: long enough to bridge the serial
 * gaps between the ops of one forward step (tens of microseconds), short
 * enough not to burn a core while the engine is idle. */
#define LM_POOL_SPIN_ITERS      20000
#define LM_POOL_JOIN_SPIN_ITERS 200000
#define LM_POOL_CLOSED          ((uint64_t)1 << 31)
#define LM_POOL_JOINED_MASK     (LM_POOL_CLOSED - 1)

struct lm_pool {
  int n_threads;
  pthread_t *threads;
  _Atomic uint32_t gen;   /* bumped once per job; futex word */
  _Atomic int n_sleeping; /* workers inside futex_wait (or about to be) */
  /* Entry ticket of the current job: generation << 32 | closed bit | number
   * of workers that joined. A dynamic job (lm_pool_for) is closed once the
   * caller has run out of items, so a worker that was descheduled (another
   * process on its core) is not waited for: it finds the job closed and
   * skips it. */
  _Atomic uint64_t ticket;
  _Atomic int n_done; /* joined workers that have finished */
  _Atomic int stop;
  _Atomic int busy; /* a job is running: nested calls go serial */
  lm_pool_fn fn;
  void *arg;
};

static void lm_futex_wait(_Atomic uint32_t *addr, uint32_t val) {
  syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void lm_futex_wake_all(_Atomic uint32_t *addr) {
  syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static void *lm_pool_main(void *argp) {
  lm_pool *p = argp;
  uint32_t seen = 0;
  for (;;) {
    uint32_t g;
    int spins = 0;
    while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen) {
      if (++spins < LM_POOL_SPIN_ITERS) {
        LM_CPU_RELAX();
        continue;
      }
      /* seq_cst increment then re-check pairs with the caller's seq_cst
       * bump-then-read of n_sleeping: one of the two sees the other. */
      atomic_fetch_add(&p->n_sleeping, 1);
      if (atomic_load(&p->gen) == seen) lm_futex_wait(&p->gen, seen);
      atomic_fetch_sub(&p->n_sleeping, 1);
      spins = 0;
    }
    seen = g;
    if (atomic_load_explicit(&p->stop, memory_order_acquire)) break;
    uint64_t t = atomic_load(&p->ticket);
    int joined = -1;
    while ((uint32_t)(t >> 32) == g && !(t & LM_POOL_CLOSED)) {
      if (atomic_compare_exchange_weak(&p->ticket, &t, t + 1)) {
        joined = (int)(t & LM_POOL_JOINED_MASK);
        break;
      }
    }
    if (joined < 0) continue;
    /* ids in join order keep tids unique while some workers sit out */
    p->fn(p->arg, joined + 1, p->n_threads);
    atomic_fetch_add_explicit(&p->n_done, 1, memory_order_release);
  }
  return NULL;
}

lm_pool *lm_pool_create(int n_threads) {
  lm_pool *p;
  if (n_threads <= 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    n_threads = n > 0 ? (int)n : 1;
  }
  p = calloc(1, sizeof(*p));
  if (!p) return NULL;
  p->n_threads = 1;
  if (n_threads > 1) {
    p->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!p->threads) goto err;
  }
  for (int i = 1; i < n_threads; i++) {
    if (pthread_create(&p->threads[i], NULL, lm_pool_main, p) != 0) goto err;
    p->n_threads = i + 1;
  }
  return p;
err:
  lm_pool_destroy(p);
  return NULL;
}

void lm_pool_destroy(lm_pool *p) {
  if (!p) return;
  atomic_store(&p->stop, 1);
  atomic_fetch_add(&p->gen, 1);
  lm_futex_wake_all(&p->gen);
  for (int i = 1; i < p->n_threads; i++)
    pthread_join(p->threads[i], NULL);
  free(p->threads);
  free(p);
}

int lm_pool_size(const lm_pool *p) {
  return p ? p->n_threads : 1;
}

static void lm_pool_dispatch(lm_pool *p, lm_pool_fn fn, void *arg, int dynamic) {
  if (!p || p->n_threads == 1 || atomic_exchange(&p->busy, 1)) {
    /* no workers, or a nested call from inside a job */
    fn(arg, 0, 1);
    return;
  }
  uint32_t g = atomic_load_explicit(&p->gen, memory_order_relaxed) + 1;
  p->fn = fn;
  p->arg = arg;
  atomic_store_explicit(&p->n_done, 0, memory_order_relaxed);
  atomic_store(&p->ticket, (uint64_t)g << 32);
  atomic_store(&p->gen, g);
  if (atomic_load(&p->n_sleeping) > 0) lm_futex_wake_all(&p->gen);
  fn(arg, 0, p->n_threads);
  int joined = p->n_threads - 1;
  if (dynamic) joined = (int)(atomic_fetch_or(&p->ticket, LM_POOL_CLOSED) & LM_POOL_JOINED_MASK);
  for (int spins = 0; atomic_load_explicit(&p->n_done, memory_order_acquire) < joined;) {
    if (++spins < LM_POOL_JOIN_SPIN_ITERS)
      LM_CPU_RELAX();
    else
      sched_yield();
  }
  atomic_store(&p->busy, 0);
}

void lm_pool_run(lm_pool *p, lm_pool_fn fn, void *arg) {
  lm_pool_dispatch(p, fn, arg, 0);
}

struct lm_pool_for_job {
  lm_pool_item_fn fn;
  void *arg;
  int64_t n_items;
  _Atomic int64_t next;
};

static void lm_pool_for_body(void *argp, int tid, int n_threads) {
  struct lm_pool_for_job *j = argp;
  (void)n_threads;
  for (;;) {
    int64_t i = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
    if (i >= j->n_items) break;
    j->fn(j->arg, i, tid);
  }
}

void lm_pool_for(lm_pool *p, int64_t n_items, lm_pool_item_fn fn, void *arg) {
  struct lm_pool_for_job j = {.fn = fn, .arg = arg, .n_items = n_items};
  if (n_items <= 0) return;
  atomic_init(&j.next, 0);
  if (n_items == 1) {
    fn(arg, 0, 0);
    return;
  }
  lm_pool_dispatch(p, lm_pool_for_body, &j, 1);
}

void lm_pool_split(int64_t n, int64_t align, int tid, int n_threads, int64_t *begin, int64_t *end) {
  int64_t units = (n + align - 1) / align;
  int64_t per = units / n_threads, extra = units % n_threads;
  int64_t b = tid * per + (tid < extra ? tid : extra);
  int64_t e = b + per + (tid < extra ? 1 : 0);
  b *= align;
  e *= align;
  *begin = b < n ? b : n;
  *end = e < n ? e : n;
}
