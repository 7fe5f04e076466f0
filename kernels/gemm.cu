/* gemm.cu - y = x @ w^T: cuBLASLt with one pinned algorithm per weight
 * shape, or (kind "mma") lmserve's own MMA kernel, gemm_mma.cu, for every
 * shape it takes, which is every shape of a real model; and the heuristic's
 * choice that benchmarks compare with.
 *
 * cuBLASLt is opened with dlopen at the first lm_cuda_gemm_create, not
 * linked: the lmserve binary then starts on machines without the CUDA
 * libraries (the CPU backend needs none), and a GPU machine uses the
 * library installed with its driver. The prototypes still come from
 * cublasLt.h, through decltype, so every call is type checked. The library
 * stays loaded for the life of the process.
 *
 * Row-major y: [M, N] is column-major y^T: [N, M], so cuBLASLt computes
 * D (N x M, ld N) = op(A) B with A = w read as a column-major K x N matrix
 * (ld K) and op(A) = A^T, and B = x read as a column-major K x M matrix
 * (ld K). C is D with beta = 0.
 *
 * One lm_cuda_gemm serves one stream at a time: its workspace is shared by
 * every call. */
#include "kernels/gemm.cuh"

#include <cublasLt.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda_check.cuh"
#include "kernels/gemm_mma.cuh"

#define LM_GEMM_WORKSPACE_BYTES ((size_t)32 << 20)
#define LM_GEMM_MAX_PLANS       64
/* The largest of the row counts the heuristic is asked for candidates at
 * (lm_gemm_choose): a mid-size batch. */
#define LM_GEMM_PLAN_QUERY_M    256
#define LM_GEMM_PLAN_CANDIDATES 16
/* Activations may start anywhere a 16-byte vector load can: ask only for
 * algorithms that accept that, rather than cudaMalloc's 256 bytes. */
#define LM_GEMM_MIN_ALIGN_BYTES 16

/* ---- the library, loaded once ------------------------------------------ */

struct lm_lt_api {
  decltype(&cublasLtCreate) create;
  decltype(&cublasLtDestroy) destroy;
  decltype(&cublasLtMatmulDescCreate) desc_create;
  decltype(&cublasLtMatmulDescDestroy) desc_destroy;
  decltype(&cublasLtMatmulDescSetAttribute) desc_set;
  decltype(&cublasLtMatrixLayoutCreate) layout_create;
  decltype(&cublasLtMatrixLayoutDestroy) layout_destroy;
  decltype(&cublasLtMatmulPreferenceCreate) pref_create;
  decltype(&cublasLtMatmulPreferenceDestroy) pref_destroy;
  decltype(&cublasLtMatmulPreferenceSetAttribute) pref_set;
  decltype(&cublasLtMatmulAlgoGetHeuristic) heuristic;
  decltype(&cublasLtMatmulAlgoCheck) algo_check;
  decltype(&cublasLtMatmulAlgoConfigGetAttribute) algo_get;
  decltype(&cublasLtMatmul) matmul;
  decltype(&cublasLtGetStatusString) status_string;
};

static pthread_once_t lm_lt_once = PTHREAD_ONCE_INIT;
static struct lm_lt_api lm_lt;
static int lm_lt_loaded;
static char lm_lt_load_err[512];

template <typename F> static int lm_lt_sym(void *lib, const char *name, F *fn) {
  const char *e;
  *fn = (F)dlsym(lib, name);
  if (*fn) return 0;
  e = dlerror();
  snprintf(lm_lt_load_err, sizeof lm_lt_load_err, "cuBLASLt: %s not found in libcublasLt: %s", name,
           e ? e : "no such symbol");
  return -1;
}

static void lm_lt_load(void) {
  char first_err[256];
  const char *e;
  void *lib = dlopen("libcublasLt.so.13", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    e = dlerror();
    snprintf(first_err, sizeof first_err, "%s", e ? e : "unknown error");
    lib = dlopen("libcublasLt.so", RTLD_NOW | RTLD_LOCAL);
  }
  if (!lib) {
    snprintf(lm_lt_load_err, sizeof lm_lt_load_err, "cuBLASLt: cannot load libcublasLt.so.13: %s",
             first_err);
    return;
  }
  if (lm_lt_sym(lib, "cublasLtCreate", &lm_lt.create) ||
      lm_lt_sym(lib, "cublasLtDestroy", &lm_lt.destroy) ||
      lm_lt_sym(lib, "cublasLtMatmulDescCreate", &lm_lt.desc_create) ||
      lm_lt_sym(lib, "cublasLtMatmulDescDestroy", &lm_lt.desc_destroy) ||
      lm_lt_sym(lib, "cublasLtMatmulDescSetAttribute", &lm_lt.desc_set) ||
      lm_lt_sym(lib, "cublasLtMatrixLayoutCreate", &lm_lt.layout_create) ||
      lm_lt_sym(lib, "cublasLtMatrixLayoutDestroy", &lm_lt.layout_destroy) ||
      lm_lt_sym(lib, "cublasLtMatmulPreferenceCreate", &lm_lt.pref_create) ||
      lm_lt_sym(lib, "cublasLtMatmulPreferenceDestroy", &lm_lt.pref_destroy) ||
      lm_lt_sym(lib, "cublasLtMatmulPreferenceSetAttribute", &lm_lt.pref_set) ||
      lm_lt_sym(lib, "cublasLtMatmulAlgoGetHeuristic", &lm_lt.heuristic) ||
      lm_lt_sym(lib, "cublasLtMatmulAlgoCheck", &lm_lt.algo_check) ||
      lm_lt_sym(lib, "cublasLtMatmulAlgoConfigGetAttribute", &lm_lt.algo_get) ||
      lm_lt_sym(lib, "cublasLtMatmul", &lm_lt.matmul)) {
    /* a library without these is not one we can use; it stays loaded, unused */
    return;
  }
  /* only for messages; older libraries may lack it */
  lm_lt.status_string = (decltype(&cublasLtGetStatusString))dlsym(lib, "cublasLtGetStatusString");
  lm_lt_loaded = 1;
}

static int lm_lt_fail(char *err, size_t err_len, const char *what, cublasStatus_t st) {
  if (err && err_len) {
    if (lm_lt.status_string)
      snprintf(err, err_len, "cuBLASLt %s: %s", what, lm_lt.status_string(st));
    else
      snprintf(err, err_len, "cuBLASLt %s: status %d", what, (int)st);
  }
  return -1;
}

#define LM_LT_CHECK(call, what)                                                                    \
  do {                                                                                             \
    cublasStatus_t lm_st_ = (call);                                                                \
    if (lm_st_ != CUBLAS_STATUS_SUCCESS) {                                                         \
      rc = lm_lt_fail(err, err_len, (what), lm_st_);                                               \
      goto err;                                                                                    \
    }                                                                                              \
  } while (0)

/* ---- the handle and its plans ------------------------------------------ */

struct lm_gemm_plan {
  int n, k, out_f32, max_m;
  int own; /* gemm_mma.cu; else the pinned algo */
  cublasLtMatmulAlgo_t algo;
  cublasLtMatrixLayout_t a_layout; /* w: column-major K x N, ld K */
};

struct lm_cuda_gemm {
  cublasLtHandle_t handle;   /* NULL when cuBLASLt is not loaded */
  cublasLtMatmulDesc_t desc; /* f32 compute and scale, op(A) = A^T, op(B) = B */
  void *workspace;           /* device, LM_GEMM_WORKSPACE_BYTES: cuBLASLt's, or
                              * gemm_mma.cu's partial sums */
  int use_mma;               /* kind "mma" */
  struct lm_gemm_plan plans[LM_GEMM_MAX_PLANS];
  int n_plans;
};

static struct lm_gemm_plan *lm_gemm_find(lm_cuda_gemm *g, int N, int K, int out_f32) {
  for (int i = 0; i < g->n_plans; i++) {
    struct lm_gemm_plan *p = &g->plans[i];
    if (p->n == N && p->k == K && p->out_f32 == (out_f32 != 0)) return p;
  }
  return NULL;
}

extern "C" int lm_cuda_gemm_create(lm_cuda_gemm **out, const char *kind, char *err,
                                   size_t err_len) {
  lm_cuda_gemm *g = NULL;
  int rc = -1;
  int32_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
  cudaError_t ce;
  *out = NULL;
  pthread_once(&lm_lt_once, lm_lt_load);
  if (kind && strcmp(kind, "cublaslt") != 0 && strcmp(kind, "mma") != 0) {
    if (err && err_len) snprintf(err, err_len, "gemm \"%s\": use \"cublaslt\" or \"mma\"", kind);
    return -1;
  }
  if (!lm_lt_loaded && !(kind && !strcmp(kind, "mma"))) {
    if (err && err_len) snprintf(err, err_len, "%s (--gemm mma needs no cuBLASLt)", lm_lt_load_err);
    return -1;
  }
  g = (lm_cuda_gemm *)calloc(1, sizeof *g);
  if (!g) {
    if (err && err_len) snprintf(err, err_len, "gemm: out of memory");
    return -1;
  }
  ce = cudaMalloc(&g->workspace, LM_GEMM_WORKSPACE_BYTES);
  if (ce != cudaSuccess) {
    cudaGetLastError(); /* not sticky; keep it out of a later lm_cuda_sync */
    g->workspace = NULL;
    if (err && err_len)
      snprintf(err, err_len, "gemm: cannot allocate the %zu MiB GEMM workspace: %s",
               LM_GEMM_WORKSPACE_BYTES >> 20, cudaGetErrorString(ce));
    goto err;
  }
  g->use_mma = kind && !strcmp(kind, "mma");
  if (!lm_lt_loaded) { /* mma: a shape the kernel cannot take says why */
    *out = g;
    return 0;
  }
  LM_LT_CHECK(lm_lt.create(&g->handle), "create");
  LM_LT_CHECK(lm_lt.desc_create(&g->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "matmul descriptor");
  LM_LT_CHECK(lm_lt.desc_set(g->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof op_t),
              "matmul descriptor");
  LM_LT_CHECK(lm_lt.desc_set(g->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof op_n),
              "matmul descriptor");
  *out = g;
  return 0;
err:
  lm_cuda_gemm_free(g);
  return rc;
}

extern "C" void lm_cuda_gemm_free(lm_cuda_gemm *g) {
  if (!g) return;
  for (int i = 0; i < g->n_plans; i++)
    if (g->plans[i].a_layout) lm_lt.layout_destroy(g->plans[i].a_layout);
  if (g->desc) lm_lt.desc_destroy(g->desc);
  if (g->handle) lm_lt.destroy(g->handle);
  if (g->workspace) cudaFree(g->workspace);
  free(g);
}

/* The layouts of x (B: column-major K x M) and y (D: N x M) for M rows. */
static cublasStatus_t lm_gemm_bd_layouts(cublasLtMatrixLayout_t *b, cublasLtMatrixLayout_t *d,
                                         int M, int N, int K, int out_f32) {
  cublasStatus_t st = lm_lt.layout_create(b, CUDA_R_16BF, (uint64_t)K, (uint64_t)M, K);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  st = lm_lt.layout_create(d, out_f32 ? CUDA_R_32F : CUDA_R_16BF, (uint64_t)N, (uint64_t)M, N);
  if (st != CUBLAS_STATUS_SUCCESS) {
    lm_lt.layout_destroy(*b);
    *b = NULL;
  }
  return st;
}

static void lm_gemm_bd_free(cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t d) {
  if (b) lm_lt.layout_destroy(b);
  if (d) lm_lt.layout_destroy(d);
}

/* Heuristic preferences: the workspace limit, 16-byte alignment, and when
 * no_reduction, only algorithms that reduce nothing across CTAs. */
static cublasStatus_t lm_gemm_pref(cublasLtMatmulPreference_t *pref, int no_reduction) {
  uint64_t ws = LM_GEMM_WORKSPACE_BYTES;
  uint32_t align = LM_GEMM_MIN_ALIGN_BYTES, scheme = CUBLASLT_REDUCTION_SCHEME_NONE;
  cublasStatus_t st = lm_lt.pref_create(pref);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  st = lm_lt.pref_set(*pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
  if (st == CUBLAS_STATUS_SUCCESS)
    st = lm_lt.pref_set(*pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align, sizeof align);
  if (st == CUBLAS_STATUS_SUCCESS)
    st = lm_lt.pref_set(*pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align, sizeof align);
  if (st == CUBLAS_STATUS_SUCCESS)
    st = lm_lt.pref_set(*pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align, sizeof align);
  if (st == CUBLAS_STATUS_SUCCESS)
    st = lm_lt.pref_set(*pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align, sizeof align);
  if (st == CUBLAS_STATUS_SUCCESS && no_reduction)
    st = lm_lt.pref_set(*pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &scheme, sizeof scheme);
  if (st != CUBLAS_STATUS_SUCCESS) {
    lm_lt.pref_destroy(*pref);
    *pref = NULL;
  }
  return st;
}

/* Whether algo runs [M, K] x [N, K]^T within the workspace. */
static int lm_gemm_algo_ok(lm_cuda_gemm *g, const struct lm_gemm_plan *p,
                           const cublasLtMatmulAlgo_t *algo, int M) {
  cublasLtMatrixLayout_t b = NULL, d = NULL;
  cublasLtMatmulHeuristicResult_t res;
  cublasStatus_t st;
  if (lm_gemm_bd_layouts(&b, &d, M, p->n, p->k, p->out_f32) != CUBLAS_STATUS_SUCCESS) return 0;
  memset(&res, 0, sizeof res);
  st = lm_lt.algo_check(g->handle, g->desc, p->a_layout, b, d, d, algo, &res);
  lm_gemm_bd_free(b, d);
  return st == CUBLAS_STATUS_SUCCESS && res.workspaceSize <= LM_GEMM_WORKSPACE_BYTES;
}

/* ---- choosing the algorithm ---------------------------------------------- */

/* The heuristic ranks algorithms for one M; a pinned algorithm serves every
 * M, and the one ranked first for a mid-size batch can take twice the
 * time of another at M = 1, where decodes spend their steps. So the
 * candidates of several M's queries are each first checked to give a row
 * the same bits at M = 1 as inside a batch of LM_GEMM_TUNE_MAX_M (the
 * property pinning is for), then timed at the M's below (the fastest of
 * LM_GEMM_TUNE_ROUNDS rounds, candidates interleaved, after a warm-up), and
 * scored by their worst ratio to the fastest candidate over those M's. The
 * pick is the first candidate, in the heuristic's order, scoring within
 * LM_GEMM_TUNE_MARGIN of the best, so timing noise between near equals does
 * not change the algorithm (and a model's bits) from one start to the next. */
#define LM_GEMM_TUNE_ALGOS  24
#define LM_GEMM_TUNE_REPS   5
#define LM_GEMM_TUNE_ROUNDS 3
#define LM_GEMM_TUNE_MARGIN 1.05
static const int lm_gemm_tune_m[] = {1, 16, 128, 512};
#define LM_GEMM_TUNE_N_M   ((int)(sizeof lm_gemm_tune_m / sizeof lm_gemm_tune_m[0]))
#define LM_GEMM_TUNE_MAX_M 512

/* bf16 values of magnitude in [1/128, 1/64) and either sign, from a hash of
 * the index: finite inputs for the timing and the bit check */
static __global__ void lm_gemm_fill_kernel(uint16_t *p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = (uint16_t)(0x3c00u | (h & 0x807fu)); /* sign, 7 mantissa bits, exponent of 1/128 */
  }
}

struct lm_gemm_tune {
  cudaStream_t stream;
  cudaEvent_t start, stop;
  const uint16_t *w; /* the weights the trials read: the caller's, or w_own */
  uint16_t *w_own, *x;
  void *y, *y1;
  void *row_a, *row_b; /* host: one output row each */
};

static void lm_gemm_tune_free(struct lm_gemm_tune *t) {
  if (t->stream) cudaStreamSynchronize(t->stream);
  cudaFree(t->w_own);
  cudaFree(t->x);
  cudaFree(t->y);
  cudaFree(t->y1);
  if (t->start) cudaEventDestroy(t->start);
  if (t->stop) cudaEventDestroy(t->stop);
  if (t->stream) cudaStreamDestroy(t->stream);
  free(t->row_a);
  free(t->row_b);
  /* no error was pending when the trials began (lm_gemm_tune): one now is
   * theirs, and a failed trial falls back rather than fail a later step */
  cudaGetLastError();
}

static int lm_gemm_tune_init(struct lm_gemm_tune *t, const struct lm_gemm_plan *p,
                             const uint16_t *w, int max_m) {
  size_t out = p->out_f32 ? 4 : 2;
  memset(t, 0, sizeof *t);
  /* the trials share the handle's workspace with GEMMs already queued */
  if (cudaDeviceSynchronize() != cudaSuccess) return -1;
  if (cudaStreamCreateWithFlags(&t->stream, cudaStreamNonBlocking) != cudaSuccess ||
      cudaEventCreate(&t->start) != cudaSuccess || cudaEventCreate(&t->stop) != cudaSuccess ||
      (!w && cudaMalloc((void **)&t->w_own, (size_t)p->n * p->k * 2) != cudaSuccess) ||
      cudaMalloc((void **)&t->x, (size_t)max_m * p->k * 2) != cudaSuccess ||
      cudaMalloc(&t->y, (size_t)max_m * p->n * out) != cudaSuccess ||
      cudaMalloc(&t->y1, (size_t)p->n * out) != cudaSuccess ||
      !(t->row_a = malloc((size_t)p->n * out)) || !(t->row_b = malloc((size_t)p->n * out)))
    return -1;
  t->w = w;
  if (!w) {
    lm_gemm_fill_kernel<<<1024, 256, 0, t->stream>>>(t->w_own, (size_t)p->n * p->k, 1u);
    t->w = t->w_own;
  }
  lm_gemm_fill_kernel<<<256, 256, 0, t->stream>>>(t->x, (size_t)max_m * p->k, 2u);
  return cudaGetLastError() == cudaSuccess ? 0 : -1;
}

static int lm_gemm_matmul(lm_cuda_gemm *g, cublasLtMatrixLayout_t a_layout,
                          const cublasLtMatmulAlgo_t *algo, void *y, const uint16_t *x,
                          const uint16_t *w, int M, int N, int K, int out_f32, void *stream,
                          char *err, size_t err_len);

/* Whether algo gives row 0 and a row near max_m - 1 the same bits alone as
 * in a batch of max_m (the latter where its x row starts 16-byte aligned). */
static int lm_gemm_tune_same_bits(lm_cuda_gemm *g, struct lm_gemm_tune *t,
                                  const struct lm_gemm_plan *p, const cublasLtMatmulAlgo_t *algo,
                                  int max_m) {
  size_t out = p->out_f32 ? 4 : 2, row = (size_t)p->n * out;
  int rows[2] = {0, max_m - 1};
  while (rows[1] > 0 && (size_t)rows[1] * p->k * 2 % LM_GEMM_MIN_ALIGN_BYTES)
    rows[1]--;
  if (lm_gemm_matmul(g, p->a_layout, algo, t->y, t->x, t->w, max_m, p->n, p->k, p->out_f32,
                     t->stream, NULL, 0) != 0)
    return 0;
  for (int i = 0; i < 2; i++) {
    if (lm_gemm_matmul(g, p->a_layout, algo, t->y1, t->x + (size_t)rows[i] * p->k, t->w, 1, p->n,
                       p->k, p->out_f32, t->stream, NULL, 0) != 0 ||
        cudaMemcpyAsync(t->row_a, (char *)t->y + (size_t)rows[i] * row, row, cudaMemcpyDeviceToHost,
                        t->stream) != cudaSuccess ||
        cudaMemcpyAsync(t->row_b, t->y1, row, cudaMemcpyDeviceToHost, t->stream) != cudaSuccess ||
        cudaStreamSynchronize(t->stream) != cudaSuccess || memcmp(t->row_a, t->row_b, row) != 0)
      return 0;
  }
  return 1;
}

/* Mean seconds of one algo run at M rows, or a negative number if it failed. */
static double lm_gemm_tune_time(lm_cuda_gemm *g, struct lm_gemm_tune *t,
                                const struct lm_gemm_plan *p, const cublasLtMatmulAlgo_t *algo,
                                int M) {
  float ms = 0;
  for (int i = 0; i < LM_GEMM_TUNE_REPS + 1; i++) {
    if (i == 1 && cudaEventRecord(t->start, t->stream) != cudaSuccess) return -1;
    if (lm_gemm_matmul(g, p->a_layout, algo, t->y, t->x, t->w, M, p->n, p->k, p->out_f32, t->stream,
                       NULL, 0) != 0)
      return -1;
  }
  if (cudaEventRecord(t->stop, t->stream) != cudaSuccess ||
      cudaEventSynchronize(t->stop) != cudaSuccess ||
      cudaEventElapsedTime(&ms, t->start, t->stop) != cudaSuccess)
    return -1;
  return ms * 1e-3 / LM_GEMM_TUNE_REPS;
}

/* Of n algorithms, the index of the one to pin, as above; the first
 * (the heuristic's own order) unchecked when the device has no room for the
 * trial buffers or an error from earlier work is pending (left for the
 * caller's next check); -1 if none keeps a row's bits. */
static int lm_gemm_tune(lm_cuda_gemm *g, struct lm_gemm_plan *p, const uint16_t *w,
                        const cublasLtMatmulAlgo_t *algos, int n) {
  double t[LM_GEMM_TUNE_ALGOS][LM_GEMM_TUNE_N_M], best[LM_GEMM_TUNE_N_M];
  int ok[LM_GEMM_TUNE_ALGOS], max_m = p->max_m < LM_GEMM_TUNE_MAX_M ? p->max_m : LM_GEMM_TUNE_MAX_M;
  int choice = -1;
  struct lm_gemm_tune tb;
  if (cudaPeekAtLastError() != cudaSuccess) return 0;
  if (lm_gemm_tune_init(&tb, p, w, max_m) != 0) {
    lm_gemm_tune_free(&tb);
    return 0;
  }
  for (int i = 0; i < n; i++) {
    ok[i] = max_m < 2 || lm_gemm_tune_same_bits(g, &tb, p, &algos[i], max_m);
    for (int j = 0; j < LM_GEMM_TUNE_N_M; j++)
      t[i][j] = 1e30;
  }
  /* warm-up: the clocks rise before the first timed candidate */
  for (int i = 0; i < n; i++)
    if (ok[i]) {
      lm_gemm_tune_time(g, &tb, p, &algos[i], max_m);
      break;
    }
  for (int r = 0; r < LM_GEMM_TUNE_ROUNDS; r++)
    for (int i = 0; i < n; i++)
      for (int j = 0; j < LM_GEMM_TUNE_N_M && ok[i] && lm_gemm_tune_m[j] <= max_m; j++) {
        double x = lm_gemm_tune_time(g, &tb, p, &algos[i], lm_gemm_tune_m[j]);
        if (x < 0) ok[i] = 0;
        if (x < t[i][j]) t[i][j] = x;
      }
  for (int j = 0; j < LM_GEMM_TUNE_N_M; j++) {
    best[j] = 1e30;
    for (int i = 0; i < n; i++)
      if (ok[i] && t[i][j] < best[j]) best[j] = t[i][j];
  }
  double score[LM_GEMM_TUNE_ALGOS], best_score = 1e30;
  for (int i = 0; i < n; i++) {
    score[i] = 0;
    for (int j = 0; j < LM_GEMM_TUNE_N_M && lm_gemm_tune_m[j] <= max_m; j++)
      if (t[i][j] / best[j] > score[i]) score[i] = t[i][j] / best[j];
    if (ok[i] && score[i] < best_score) best_score = score[i];
  }
  for (int i = 0; i < n && choice < 0; i++)
    if (ok[i] && score[i] <= best_score * LM_GEMM_TUNE_MARGIN) choice = i;
  lm_gemm_tune_free(&tb);
  return choice;
}

/* Pins, of the heuristic's candidates without split-K for a few M's that
 * are valid for M = 1 and M = p->max_m, the one lm_gemm_tune picks; 0, or
 * -1 with err written. */
static int lm_gemm_choose(lm_cuda_gemm *g, struct lm_gemm_plan *p, const uint16_t *w, char *err,
                          size_t err_len) {
  static const int query_ms[] = {1, 16, LM_GEMM_PLAN_QUERY_M};
  cublasLtMatmulHeuristicResult_t cand[LM_GEMM_PLAN_CANDIDATES];
  cublasLtMatmulAlgo_t algos[LM_GEMM_TUNE_ALGOS];
  cublasLtMatmulPreference_t pref = NULL;
  cublasLtMatrixLayout_t b = NULL, d = NULL;
  int rc = -1, n_cand = 0, n_algos = 0;
  LM_LT_CHECK(lm_gemm_pref(&pref, 1), "matmul preference");
  for (int q = 0; q < (int)(sizeof query_ms / sizeof query_ms[0]); q++) {
    int query_m = p->max_m < query_ms[q] ? p->max_m : query_ms[q];
    memset(cand, 0, sizeof cand);
    LM_LT_CHECK(lm_gemm_bd_layouts(&b, &d, query_m, p->n, p->k, p->out_f32), "matrix layout");
    /* a query that finds nothing answers NOT_SUPPORTED: the others may */
    if (lm_lt.heuristic(g->handle, g->desc, p->a_layout, b, d, d, pref, LM_GEMM_PLAN_CANDIDATES,
                        cand, &n_cand) != CUBLAS_STATUS_SUCCESS)
      n_cand = 0;
    lm_gemm_bd_free(b, d);
    b = d = NULL;
    for (int i = 0; i < n_cand && n_algos < LM_GEMM_TUNE_ALGOS; i++) {
      int32_t splitk = 0;
      size_t written = 0;
      int seen = 0;
      if (cand[i].state != CUBLAS_STATUS_SUCCESS) continue;
      if (lm_lt.algo_get(&cand[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk,
                         &written) != CUBLAS_STATUS_SUCCESS ||
          splitk != 1)
        continue;
      for (int j = 0; j < n_algos && !seen; j++)
        seen = !memcmp(&algos[j], &cand[i].algo, sizeof algos[j]);
      if (seen || !lm_gemm_algo_ok(g, p, &cand[i].algo, 1) ||
          !lm_gemm_algo_ok(g, p, &cand[i].algo, p->max_m))
        continue;
      algos[n_algos++] = cand[i].algo;
    }
  }
  if (n_algos > 0) {
    int i = lm_gemm_tune(g, p, w, algos, n_algos);
    if (i >= 0) {
      p->algo = algos[i];
      rc = 0;
    }
  }
  if (rc != 0 && err && err_len)
    snprintf(err, err_len,
             "cuBLASLt: no algorithm without split-K for N=%d K=%d (%s output) valid for M = 1..%d "
             "that gives a row the same bits in any batch, among %d candidates",
             p->n, p->k, p->out_f32 ? "f32" : "bf16", p->max_m, n_algos);
err:
  lm_gemm_bd_free(b, d);
  if (pref) lm_lt.pref_destroy(pref);
  return rc;
}

extern "C" int lm_cuda_gemm_plan(lm_cuda_gemm *g, int N, int K, int out_f32, int max_m,
                                 const uint16_t *w, char *err, size_t err_len) {
  struct lm_gemm_plan *p;
  int rc = -1;
  if (N <= 0 || K <= 0 || max_m <= 0) {
    if (err && err_len)
      snprintf(err, err_len, "gemm plan: bad shape N=%d K=%d max_m=%d", N, K, max_m);
    return -1;
  }
  p = lm_gemm_find(g, N, K, out_f32);
  if (p) {
    if (max_m <= p->max_m) return 0;
    if (p->own) { /* any M: the order of the sums is the shape's */
      p->max_m = max_m;
      return 0;
    }
    /* the pinned algorithm must not change under rows already computed with it */
    if (!lm_gemm_algo_ok(g, p, &p->algo, max_m)) {
      if (err && err_len)
        snprintf(err, err_len, "gemm plan: the algorithm pinned for N=%d K=%d does not run M=%d", N,
                 K, max_m);
      return -1;
    }
    p->max_m = max_m;
    return 0;
  }
  if (g->n_plans == LM_GEMM_MAX_PLANS) {
    if (err && err_len) snprintf(err, err_len, "gemm plan: more than %d shapes", LM_GEMM_MAX_PLANS);
    return -1;
  }
  p = &g->plans[g->n_plans];
  memset(p, 0, sizeof *p);
  p->n = N;
  p->k = K;
  p->out_f32 = out_f32 != 0;
  p->max_m = max_m;
  if (g->use_mma && lm_gemm_mma_supported(N, K)) {
    p->own = 1;
    g->n_plans++;
    return 0;
  }
  if (!g->handle) {
    if (err && err_len)
      snprintf(err, err_len, "gemm N=%d K=%d needs cuBLASLt (K is not a multiple of 8): %s", N, K,
               lm_lt_load_err);
    return -1;
  }
  LM_LT_CHECK(lm_lt.layout_create(&p->a_layout, CUDA_R_16BF, (uint64_t)K, (uint64_t)N, K),
              "matrix layout");
  if (lm_gemm_choose(g, p, w, err, err_len) != 0) goto err;
  g->n_plans++;
  return 0;
err:
  if (p->a_layout) lm_lt.layout_destroy(p->a_layout);
  p->a_layout = NULL;
  return rc;
}

/* D = op(A) B with the given algorithm, or the heuristic's first choice
 * for this M when algo is NULL. */
static int lm_gemm_matmul(lm_cuda_gemm *g, cublasLtMatrixLayout_t a_layout,
                          const cublasLtMatmulAlgo_t *algo, void *y, const uint16_t *x,
                          const uint16_t *w, int M, int N, int K, int out_f32, void *stream,
                          char *err, size_t err_len) {
  cublasLtMatrixLayout_t b = NULL, d = NULL;
  cublasLtMatmulPreference_t pref = NULL;
  cublasLtMatmulHeuristicResult_t best;
  const float alpha = 1.0f, beta = 0.0f;
  int rc = -1, n_best = 0;
  if (((uintptr_t)y | (uintptr_t)x | (uintptr_t)w) % LM_GEMM_MIN_ALIGN_BYTES) {
    if (err && err_len)
      snprintf(err, err_len, "gemm: x, w and y must be %d-byte aligned", LM_GEMM_MIN_ALIGN_BYTES);
    return -1;
  }
  LM_LT_CHECK(lm_gemm_bd_layouts(&b, &d, M, N, K, out_f32), "matrix layout");
  if (!algo) {
    memset(&best, 0, sizeof best);
    LM_LT_CHECK(lm_gemm_pref(&pref, 0), "matmul preference");
    LM_LT_CHECK(lm_lt.heuristic(g->handle, g->desc, a_layout, b, d, d, pref, 1, &best, &n_best),
                "algorithm heuristic");
    if (n_best < 1) {
      if (err && err_len)
        snprintf(err, err_len, "cuBLASLt: no algorithm for M=%d N=%d K=%d", M, N, K);
      goto err;
    }
    algo = &best.algo;
  }
  LM_LT_CHECK(lm_lt.matmul(g->handle, g->desc, &alpha, w, a_layout, x, b, &beta, y, d, y, d, algo,
                           g->workspace, LM_GEMM_WORKSPACE_BYTES, (cudaStream_t)stream),
              "matmul");
  rc = 0;
err:
  lm_gemm_bd_free(b, d);
  if (pref) lm_lt.pref_destroy(pref);
  return rc;
}

extern "C" int lm_cuda_gemm_run(lm_cuda_gemm *g, void *y, const uint16_t *x, const uint16_t *w,
                                int M, int N, int K, int out_f32, void *stream, char *err,
                                size_t err_len) {
  const struct lm_gemm_plan *p = lm_gemm_find(g, N, K, out_f32);
  if (!p) {
    if (err && err_len)
      snprintf(err, err_len, "gemm: N=%d K=%d (%s output) was not planned", N, K,
               out_f32 ? "f32" : "bf16");
    return -1;
  }
  if (M < 0 || M > p->max_m) {
    if (err && err_len)
      snprintf(err, err_len, "gemm: M=%d outside the plan's 0..%d for N=%d K=%d", M, p->max_m, N,
               K);
    return -1;
  }
  if (M == 0) return 0;
  if (p->own)
    return lm_gemm_mma_run(y, x, w, M, N, K, out_f32, LM_GEMM_MMA_AUTO, (float *)g->workspace,
                           LM_GEMM_WORKSPACE_BYTES, stream, err, err_len);
  return lm_gemm_matmul(g, p->a_layout, &p->algo, y, x, w, M, N, K, out_f32, stream, err, err_len);
}

extern "C" int lm_cuda_gemm_run_heuristic(lm_cuda_gemm *g, void *y, const uint16_t *x,
                                          const uint16_t *w, int M, int N, int K, int out_f32,
                                          void *stream, char *err, size_t err_len) {
  cublasLtMatrixLayout_t a = NULL;
  cublasStatus_t st;
  int rc;
  if (M < 0 || N <= 0 || K <= 0) {
    if (err && err_len) snprintf(err, err_len, "gemm: bad shape M=%d N=%d K=%d", M, N, K);
    return -1;
  }
  if (M == 0) return 0;
  if (!g->handle) {
    if (err && err_len) snprintf(err, err_len, "%s", lm_lt_load_err);
    return -1;
  }
  st = lm_lt.layout_create(&a, CUDA_R_16BF, (uint64_t)K, (uint64_t)N, K);
  if (st != CUBLAS_STATUS_SUCCESS) return lm_lt_fail(err, err_len, "matrix layout", st);
  rc = lm_gemm_matmul(g, a, NULL, y, x, w, M, N, K, out_f32, stream, err, err_len);
  lm_lt.layout_destroy(a);
  return rc;
}
