/* serve.c - `lmserve serve`: flags, model load, the gRPC server, and a
 * drain on SIGTERM/SIGINT. */
#include <grpc/grpc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/cli.h"
#include "server/server.h"

static const char usage[] =
    "usage: lmserve serve [--model DIR] [flags]\n"
    "  serves lmserve.v1.Generation (plus grpc.health.v1 and server reflection)\n"
    "  over gRPC until SIGTERM/SIGINT, then drains.\n"
    "  --model DIR                   model directory (default: the demo model)\n"
    "  --served-model-name NAME      name in GetModelInfo and metrics (default: dir name)\n"
    "  --host ADDR                   listen address (127.0.0.1; 0.0.0.0 for all)\n"
    "  --port N                      gRPC port (50051; 0 picks a free one, printed)\n"
    "  --grpc-threads N              completion queues, one thread each (1)\n"
    "  --cpu-threads N               CPU backend compute threads (0: all cores)\n"
    "  --backend auto|cpu|cuda       (auto)\n"
    "  --max-num-seqs N              requests in one step (256)\n"
    "  --max-num-batched-tokens N    tokens in one step (2048 on a GPU, 512 on the CPU)\n"
    "  --max-decode-slowdown F       a step with prompt tokens beside decodes takes at\n"
    "                                most F times the decodes' own step (2.3; 0: off)\n"
    "  --layered-prefill on|off      a prompt chunk that F would cut short keeps its\n"
    "                                size and runs a few layers a step (CPU) (on)\n"
    "  --max-model-len N             context length (the model's)\n"
    "  --block-size N                tokens per KV block (16)\n"
    "  --kv-cache-bytes N            KV pool size (default: from memory)\n"
    "  --kv-cache-dtype auto|bf16|f32|fp8_e5m2  KV element type (auto: the weights')\n"
    "  --gpu-memory-utilization F    CUDA: fraction of device memory (0.9)\n"
    "  --gemm cublaslt|mma           CUDA GEMMs, both batch invariant: cublaslt (pinned\n"
    "                                cuBLASLt, fastest prefill) or mma (lmserve's kernel,\n"
    "                                fastest decode at small batches) (cublaslt)\n"
    "  --max-waiting N               queued requests before RESOURCE_EXHAUSTED (1024)\n"
    "  --max-request-bytes N         largest request message (4194304)\n"
    "  --metrics-port N              Prometheus /metrics (off; 0 picks a free one)\n"
    "  --drain-seconds S             on SIGTERM, time streams get to finish (30)\n"
    "  --health-stall-seconds S      NOT_SERVING when a step runs longer (30)\n"
    "  --keepalive-seconds S         HTTP/2 keepalive ping interval (7200)\n"
    "  --keepalive-timeout-seconds S ping ack timeout (20)\n"
    "  --max-connection-age-seconds S      GOAWAY connections older (off)\n"
    "  --max-connection-age-grace-seconds S  then close them after (off)\n"
    "  --max-connection-idle-seconds S     close idle connections (off)\n"
    "  --tls-cert PEM --tls-key PEM  serve TLS instead of plaintext\n"
    "  --log-level error|warn|info|debug   (info: one line per request)\n";

static int parse(int argc, char **argv, struct lm_serve_opts *o, struct lm_engine_config *ec) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    long l = 0;
    double d = 0;
    int bad = 0;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      fputs(usage, stdout);
      return 1;
    }
    if (!v) {
      fprintf(stderr, "lmserve serve: unknown or incomplete flag '%s'\n%s", a, usage);
      return -1;
    }
#define INT(flag, lo, hi, dst)                                                                     \
  else if (!strcmp(a, flag)) bad = lm_cli_int(a, v, lo, hi, &l), dst = (int)l
#define SECS_MS(flag, dst)                                                                         \
  else if (!strcmp(a, flag)) bad = lm_cli_float(a, v, 0, 1e7, &d), dst = (int)(d * 1000)
    if (!strcmp(a, "--model"))
      o->model_dir = v;
    else if (!strcmp(a, "--served-model-name"))
      o->served_model_name = v;
    else if (!strcmp(a, "--host"))
      o->host = v;
    else if (!strcmp(a, "--backend"))
      ec->backend = v;
    else if (!strcmp(a, "--kv-cache-dtype"))
      ec->kv_cache_dtype = v;
    else if (!strcmp(a, "--tls-cert"))
      o->tls_cert = v;
    else if (!strcmp(a, "--tls-key"))
      o->tls_key = v;
    INT("--port", 0, 65535, o->port);
    INT("--metrics-port", 0, 65535, o->metrics_port);
    INT("--grpc-threads", 1, 64, o->grpc_threads);
    INT("--cpu-threads", 0, 1024, ec->backend_cfg.n_threads);
    INT("--max-num-seqs", 1, 1 << 16, ec->max_num_seqs);
    INT("--max-num-batched-tokens", 1, 1 << 24, ec->max_num_batched_tokens);
    INT("--max-model-len", 0, 1 << 24, ec->max_model_len);
    INT("--block-size", 1, 1024, ec->block_size);
    INT("--max-waiting", 0, 1 << 24, ec->max_waiting);
    SECS_MS("--keepalive-seconds", o->keepalive_ms);
    SECS_MS("--keepalive-timeout-seconds", o->keepalive_timeout_ms);
    SECS_MS("--max-connection-age-seconds", o->max_connection_age_ms);
    SECS_MS("--max-connection-age-grace-seconds", o->max_connection_age_grace_ms);
    SECS_MS("--max-connection-idle-seconds", o->max_connection_idle_ms);
    else if (!strcmp(a, "--max-request-bytes")) {
      bad = lm_cli_int(a, v, 1024, 1 << 30, &l);
      o->max_request_bytes = (size_t)l;
    }
    else if (!strcmp(a, "--kv-cache-bytes")) {
      bad = lm_cli_float(a, v, 0, 1e15, &d);
      ec->kv_cache_bytes = (size_t)d;
    }
    else if (!strcmp(a, "--gpu-memory-utilization")) {
      bad = lm_cli_float(a, v, 0.01, 1, &d);
      ec->gpu_memory_utilization = (float)d;
    }
    else if (!strcmp(a, "--gemm")) ec->backend_cfg.gemm = v;
    else if (!strcmp(a, "--max-decode-slowdown")) {
      bad = lm_cli_slowdown(a, v, &ec->max_decode_slowdown);
    }
    else if (!strcmp(a, "--layered-prefill")) {
      bad = lm_cli_on_off(a, v, &ec->layered_prefill);
    }
    else if (!strcmp(a, "--drain-seconds")) {
      bad = lm_cli_float(a, v, 0, 1e6, &o->drain_s);
    }
    else if (!strcmp(a, "--health-stall-seconds")) {
      bad = lm_cli_float(a, v, 0.001, 1e6, &o->health_stall_s);
    }
    else if (!strcmp(a, "--log-level")) {
      static const char *const lv[] = {"error", "warn", "info", "debug"};
      bad = 1;
      for (int k = 0; k < 4; k++)
        if (!strcmp(v, lv[k])) o->log_level = (enum lm_log_level)k, bad = 0;
      if (bad) fprintf(stderr, "lmserve serve: --log-level: error, warn, info or debug\n");
    }
    else {
      fprintf(stderr, "lmserve serve: unknown flag '%s'\n%s", a, usage);
      return -1;
    }
#undef INT
#undef SECS_MS
    if (bad) return -1;
    i++;
  }
  return 0;
}

int lm_cmd_serve(int argc, char **argv) {
  struct lm_srv *s = calloc(1, sizeof(*s));
  struct lm_engine_config ec;
  char err[LM_ERR_LEN], dirbuf[4096];
  int rc = 1, grpc_up = 0, metrics_up = 0;
  if (!s) return 1;
  struct lm_serve_opts *o = &s->opts;
  lm_engine_config_init(&ec);
  *o = (struct lm_serve_opts){.host = "127.0.0.1",
                              .port = 50051,
                              .metrics_port = -1,
                              .grpc_threads = 1,
                              .max_request_bytes = 4 << 20,
                              .drain_s = 30,
                              .health_stall_s = 30,
                              .keepalive_ms = 7200 * 1000,
                              .keepalive_timeout_ms = 20 * 1000,
                              .log_level = LM_LOG_INFO};
  int p = parse(argc, argv, o, &ec);
  if (p) {
    free(s);
    return p > 0 ? 0 : 2;
  }
  if (!o->tls_cert != !o->tls_key) {
    fprintf(stderr, "lmserve serve: --tls-cert and --tls-key go together\n");
    free(s);
    return 2;
  }
  o->model_dir = lm_cli_model_dir(o->model_dir, dirbuf, sizeof(dirbuf));
  ec.model_dir = o->model_dir;
  if (!o->max_connection_age_grace_ms && o->max_connection_age_ms)
    o->max_connection_age_grace_ms = 30 * 1000;

  /* Every thread started from here on inherits this mask; only sigwait
   * below sees SIGTERM/SIGINT. */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGPIPE, SIG_IGN);

  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  pthread_mutex_init(&s->watch_mu, NULL);
  lm_metrics_init(&s->metrics);
  s->metrics_fd = -1;
  double t0 = lm_now_s();
  if (lm_engine_create(&ec, &s->engine, err)) {
    lm_cli_load_error(o->model_dir, err);
    goto out;
  }
  /* the engine's compute workers keep the process name; see metrics.c */
  pthread_setname_np(pthread_self(), "lm-main");
  lm_engine_get_info(s->engine, &s->info);
  s->tok = lm_engine_tokenizer(s->engine);
  if (lm_chat_load(s->tok, &s->chat, err)) {
    lm_cli_load_error(o->model_dir, err);
    goto out;
  }
  if (lm_reflection_create(&s->refl, err)) {
    fprintf(stderr, "lmserve: %s\n", err);
    goto out;
  }
  const char *slash = strrchr(o->model_dir, '/');
  s->model_name = o->served_model_name ? o->served_model_name
                  : slash && slash[1]  ? slash + 1
                                       : o->model_dir;
  s->lim =
      (struct lm_codec_limits){s->info.vocab_size, s->info.max_model_len, o->max_request_bytes};
  s->n_cq = o->grpc_threads;
  atomic_store(&s->serving, 1);
  grpc_init();
  grpc_up = 1;
  if (lm_srv_start(s, err)) {
    fprintf(stderr, "lmserve: %s\n", err);
    goto out;
  }
  if (lm_metrics_start(s, err)) {
    fprintf(stderr, "lmserve: %s\n", err);
    lm_srv_shutdown(s);
    goto out;
  }
  metrics_up = 1;
  s->cpu_base_s = lm_server_cpu_s(); /* model loading ran on this thread */
  lm_srv_log(
      s, LM_LOG_INFO,
      "serving %s (%s, %s, %s) on %s:%d, max_model_len %d, %lld KV tokens (%s), %d tokens a step, "
      "loaded in %.1fs%s",
      s->model_name, s->info.architecture, s->info.dtype, s->info.backend, o->host, s->bound_port,
      s->info.max_model_len, (long long)s->info.kv_capacity_tokens, s->info.kv_dtype,
      s->info.max_num_batched_tokens, lm_now_s() - t0,
      s->chat ? "" : "; no chat template: Chat is refused");
  if (o->metrics_port >= 0)
    lm_srv_log(s, LM_LOG_INFO, "metrics on http://%s:%d/metrics", o->host, o->metrics_port);
  if (o->metrics_port >= 0)
    printf("lmserve: metrics on http://%s:%d/metrics\n", o->host, o->metrics_port);
  printf("lmserve: listening on %s:%d\n", o->host, s->bound_port);
  fflush(stdout);

  int sig = 0;
  sigwait(&sigs, &sig);
  lm_srv_log(s, LM_LOG_INFO, "%s: draining (up to %gs)", sig == SIGINT ? "SIGINT" : "SIGTERM",
             o->drain_s);
  /* before the drain: queue threads exit in it and leave /proc */
  double all_s = lm_server_cpu_s() - s->cpu_base_s;
  lm_srv_shutdown(s);
  unsigned long long toks = atomic_load(&s->metrics.generation_tokens), reqs = 0;
  for (int c = 0; c < 17; c++)
    reqs += atomic_load(&s->metrics.requests[LM_M_GENERATE][c]) +
            atomic_load(&s->metrics.requests[LM_M_CHAT][c]);
  double cq_s = (double)atomic_load(&s->cq_cpu_ns) / 1e9;
  lm_srv_log(s, LM_LOG_INFO,
             "server cpu: queue threads %.3fs, all non-engine threads %.3fs, for %llu streams and "
             "%llu tokens (%.1f us/token, %.1f us/stream)",
             cq_s, all_s, reqs, toks, toks ? all_s * 1e6 / (double)toks : 0,
             reqs ? all_s * 1e6 / (double)reqs : 0);
  rc = 0;
out:
  if (metrics_up) lm_metrics_stop(s);
  lm_engine_destroy(s->engine);
  if (grpc_up) grpc_shutdown();
  lm_reflection_free(s->refl);
  lm_chat_free(s->chat);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  pthread_mutex_destroy(&s->watch_mu);
  free(s);
  return rc;
}
