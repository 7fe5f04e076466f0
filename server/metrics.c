/* metrics.c - Prometheus text exposition on --metrics-port (/metrics), a
 * tiny HTTP/1.1 responder: one request per connection, then close. Its
 * thread also runs the health tick. */
#include <arpa/inet.h>
#include <dirent.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/server.h"

static const double ttft_b[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                0.75,  1.0,   2.5,  5.0,  7.5,  10,   20,   40,  80};
static const double itl_b[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                               0.3,   0.4,    0.5,   0.75, 1.0,   2.5,  5.0,   7.5, 10,   20};
static const double req_b[] = {0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0,
                               10,   15,   20,  30,  40,  50,  60,  120, 240, 480};

static void hist_init(struct lm_hist *h, const char *name, const char *help, const double *b,
                      int n) {
  h->name = name, h->help = help, h->bounds = b, h->n_bounds = n;
}

void lm_metrics_init(struct lm_metrics *m) {
  memset(m, 0, sizeof(*m));
  hist_init(&m->ttft, "lmserve_time_to_first_token_seconds", "Arrival to first output token.",
            ttft_b, (int)(sizeof(ttft_b) / sizeof(*ttft_b)));
  hist_init(&m->itl, "lmserve_inter_token_latency_seconds",
            "Time between streamed tokens (a message's interval split over its tokens).", itl_b,
            (int)(sizeof(itl_b) / sizeof(*itl_b)));
  hist_init(&m->queue, "lmserve_queue_time_seconds", "Arrival to first scheduled.", req_b,
            (int)(sizeof(req_b) / sizeof(*req_b)));
  hist_init(&m->e2e, "lmserve_e2e_request_latency_seconds", "Arrival to finish.", req_b,
            (int)(sizeof(req_b) / sizeof(*req_b)));
}

void lm_hist_observe(struct lm_hist *h, double v) {
  int i = 0;
  while (i < h->n_bounds && v > h->bounds[i])
    i++;
  atomic_fetch_add_explicit(&h->counts[i], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&h->sum_ns, (unsigned long long)(v > 0 ? v * 1e9 : 0),
                            memory_order_relaxed);
}

static void put_hist(FILE *f, const char *model, struct lm_hist *h) {
  fprintf(f, "# HELP %s %s\n# TYPE %s histogram\n", h->name, h->help, h->name);
  unsigned long long cum = 0;
  for (int i = 0; i <= h->n_bounds; i++) {
    cum += atomic_load(&h->counts[i]);
    if (i < h->n_bounds)
      fprintf(f, "%s_bucket{model_name=\"%s\",le=\"%g\"} %llu\n", h->name, model, h->bounds[i],
              cum);
    else
      fprintf(f, "%s_bucket{model_name=\"%s\",le=\"+Inf\"} %llu\n", h->name, model, cum);
  }
  fprintf(f, "%s_sum{model_name=\"%s\"} %.9f\n%s_count{model_name=\"%s\"} %llu\n", h->name, model,
          (double)atomic_load(&h->sum_ns) / 1e9, h->name, model, cum);
}

/* CPU seconds of every thread but the engine's: the engine thread is
 * "lm-engine" and its compute workers keep the process name ("lmserve",
 * as the main thread renames itself once they exist), so what remains is
 * the queue threads, gRPC's own threads, metrics and main. schedstat's
 * first field is the thread's run time in nanoseconds (stat's utime and
 * stime count 10 ms ticks). */
double lm_server_cpu_s(void) {
  DIR *d = opendir("/proc/self/task");
  if (!d) return 0;
  double total = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    char path[64], comm[32] = "";
    unsigned long long ns = 0;
    snprintf(path, sizeof(path), "/proc/self/task/%.20s/comm", de->d_name);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    if (!fgets(comm, sizeof(comm), f)) comm[0] = '\0';
    fclose(f);
    comm[strcspn(comm, "\n")] = '\0';
    if (!strcmp(comm, "lm-engine") || !strcmp(comm, "lmserve")) continue;
    snprintf(path, sizeof(path), "/proc/self/task/%.20s/schedstat", de->d_name);
    if (!(f = fopen(path, "r"))) continue;
    if (fscanf(f, "%llu", &ns) == 1) total += (double)ns / 1e9;
    fclose(f);
  }
  closedir(d);
  return total;
}

static void render(struct lm_srv *s, FILE *f) {
  struct lm_metrics *m = &s->metrics;
  const char *model = s->model_name;
  const struct lm_engine_info *info = &s->info;
  struct lm_engine_stats st;
  lm_engine_get_stats(s->engine, &st);
  fputs("# HELP lmserve_requests_total RPCs finished, by method and gRPC status code.\n"
        "# TYPE lmserve_requests_total counter\n",
        f);
  for (int i = 0; i < LM_M_COUNT; i++)
    for (int c = 0; c < 17; c++) {
      unsigned long long v = atomic_load(&m->requests[i][c]);
      if (v)
        fprintf(f, "lmserve_requests_total{model_name=\"%s\",method=\"%s\",code=\"%d\"} %llu\n",
                model, lm_method_name[i], c, v);
    }
#define COUNTER(name, help, v)                                                                     \
  fprintf(f,                                                                                       \
          "# HELP " name " " help "\n# TYPE " name " counter\n" name "{model_name=\"%s\"} %llu\n", \
          model, (unsigned long long)(v))
#define GAUGE(name, help, fmt, v)                                                                  \
  fprintf(                                                                                         \
      f, "# HELP " name " " help "\n# TYPE " name " gauge\n" name "{model_name=\"%s\"} " fmt "\n", \
      model, v)
  COUNTER("lmserve_prompt_tokens_total", "Prompt tokens of finished requests.",
          atomic_load(&m->prompt_tokens));
  COUNTER("lmserve_generation_tokens_total", "Tokens streamed to clients.",
          atomic_load(&m->generation_tokens));
  COUNTER("lmserve_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.",
          st.prefix_cache_queries);
  COUNTER("lmserve_prefix_cache_hits_total", "Prompt tokens found in the prefix cache.",
          st.prefix_cache_hits);
  COUNTER("lmserve_preemptions_total", "Requests preempted for KV blocks.", st.preemptions);
  COUNTER("lmserve_slowdown_limited_steps_total",
          "Steps whose prompt chunks were shortened to keep decodes within max_decode_slowdown.",
          st.slowdown_limited_steps);
  COUNTER("lmserve_decode_probe_steps_total",
          "Steps whose decodes ran alone while prompt tokens waited, to measure their step time.",
          st.decode_probe_steps);
  COUNTER("lmserve_layered_steps_total",
          "Steps that ran a prompt chunk over some of the model's layers (layered prefill).",
          st.layered_steps);
  put_hist(f, model, &m->ttft);
  put_hist(f, model, &m->itl);
  put_hist(f, model, &m->queue);
  put_hist(f, model, &m->e2e);
  GAUGE("lmserve_num_requests_running", "Requests in the running batch.", "%d", st.num_running);
  GAUGE("lmserve_num_requests_waiting", "Requests waiting to be scheduled.", "%d", st.num_waiting);
  GAUGE("lmserve_kv_blocks_used", "KV blocks held by live requests.", "%d", st.kv_blocks_used);
  GAUGE("lmserve_kv_blocks_cached", "Free KV blocks kept for the prefix cache.", "%d",
        st.kv_blocks_cached);
  GAUGE("lmserve_kv_blocks_free", "Free KV blocks without cached content.", "%d",
        st.kv_blocks_free);
  GAUGE("lmserve_kv_cache_usage_ratio", "Fraction of the KV blocks held by live requests.", "%.6f",
        st.kv_blocks_total > 0 ? (double)st.kv_blocks_used / st.kv_blocks_total : 0.0);
  fprintf(f,
          "# HELP lmserve_kv_cache_info The KV cache's shape: element type, tokens a block, "
          "blocks, bytes a block (all layers, K and V).\n"
          "# TYPE lmserve_kv_cache_info gauge\n"
          "lmserve_kv_cache_info{model_name=\"%s\",dtype=\"%s\",block_size=\"%d\","
          "blocks=\"%d\",block_bytes=\"%zu\"} 1\n",
          model, info->kv_dtype, info->block_size, info->n_kv_blocks, info->kv_block_bytes);
  GAUGE("lmserve_health_serving", "1 while health says SERVING.", "%d", atomic_load(&s->serving));
  GAUGE("lmserve_server_cpu_seconds",
        "CPU time of all threads but the engine's since serving began.", "%.6f",
        lm_server_cpu_s() - s->cpu_base_s);
#undef COUNTER
#undef GAUGE
}

static void serve_one(struct lm_srv *s, int fd) {
  char req[2048];
  size_t n = 0;
  struct pollfd p = {fd, POLLIN, 0};
  while (n < sizeof(req) - 1 && poll(&p, 1, 1000) == 1) {
    ssize_t k = read(fd, req + n, sizeof(req) - 1 - n);
    if (k <= 0) break;
    n += (size_t)k;
    req[n] = '\0';
    if (strstr(req, "\r\n\r\n")) break;
  }
  req[n] = '\0';
  char *body = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&body, &len);
  if (!f) return;
  int ok = !strncmp(req, "GET /metrics ", 13) || !strncmp(req, "GET /metrics?", 13);
  if (ok)
    render(s, f);
  else
    fputs("lmserve: GET /metrics\n", f);
  if (fclose(f) != 0) return;
  char head[256];
  int h = snprintf(head, sizeof(head),
                   "HTTP/1.1 %s\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                   "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                   ok ? "200 OK" : "404 Not Found", len);
  if (write(fd, head, (size_t)h) == h) {
    for (size_t off = 0; off < len;) {
      ssize_t k = write(fd, body + off, len - off);
      if (k <= 0) break;
      off += (size_t)k;
    }
  }
  free(body);
}

static void *metrics_main(void *arg) {
  struct lm_srv *s = arg;
  pthread_setname_np(pthread_self(), "lm-metrics");
  while (!atomic_load(&s->metrics_stop)) {
    lm_health_tick(s);
    if (s->metrics_fd < 0) {
      usleep(200 * 1000);
      continue;
    }
    struct pollfd p = {s->metrics_fd, POLLIN, 0};
    if (poll(&p, 1, 200) != 1) continue;
    int fd = accept(s->metrics_fd, NULL, NULL);
    if (fd < 0) continue;
    serve_one(s, fd);
    close(fd);
  }
  return NULL;
}

int lm_metrics_start(struct lm_srv *s, char *err) {
  s->metrics_fd = -1;
  if (s->opts.metrics_port >= 0) {
    struct addrinfo hints = {0}, *ai = NULL;
    char port[16];
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(port, sizeof(port), "%d", s->opts.metrics_port);
    if (getaddrinfo(s->opts.host, port, &hints, &ai) != 0 || !ai)
      return lm_errf(err, LM_EINVAL, "--host %s: not an address", s->opts.host);
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 16)) {
      if (fd >= 0) close(fd);
      freeaddrinfo(ai);
      return lm_errf(err, LM_EIO, "--metrics-port %d: cannot listen (in use?)",
                     s->opts.metrics_port);
    }
    freeaddrinfo(ai);
    struct sockaddr_storage sa;
    socklen_t sl = sizeof(sa);
    if (getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
      s->opts.metrics_port =
          ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                         : ((struct sockaddr_in *)&sa)->sin_port);
    s->metrics_fd = fd;
  }
  if (pthread_create(&s->metrics_thread, NULL, metrics_main, s)) {
    if (s->metrics_fd >= 0) close(s->metrics_fd);
    s->metrics_fd = -1;
    return lm_errf(err, LM_ENOMEM, "cannot start the metrics thread");
  }
  return LM_OK;
}

void lm_metrics_stop(struct lm_srv *s) {
  atomic_store(&s->metrics_stop, 1);
  pthread_join(s->metrics_thread, NULL);
  if (s->metrics_fd >= 0) close(s->metrics_fd);
  s->metrics_fd = -1;
}
