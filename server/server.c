/* server.c - completion queues, their threads, and the life of a call:
 * accepted (NEW), its batches, and its end once the status is out and the
 * close is seen. */
#include "server/server.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/lm.h"

const char *const lm_method_path[LM_M_COUNT] = {
    "/lmserve.v1.Generation/Generate",
    "/lmserve.v1.Generation/Chat",
    "/lmserve.v1.Generation/Tokenize",
    "/lmserve.v1.Generation/Detokenize",
    "/lmserve.v1.Generation/GetModelInfo",
    "/lmserve.v1.Generation/Abort",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    NULL,
};
const char *const lm_method_name[LM_M_COUNT] = {
    "Generate", "Chat",  "Tokenize", "Detokenize",           "GetModelInfo",
    "Abort",    "Check", "Watch",    "ServerReflectionInfo", "ServerReflectionInfoV1alpha",
    "unknown",
};

/* Calls kept requested per queue: streams arrive in bursts. */
static int slots_for(enum lm_method m) {
  return m == LM_M_GENERATE || m == LM_M_CHAT ? 8 : 1;
}

static struct lm_tag shutdown_tag = {NULL, LM_TAG_STATUS};

void lm_srv_log(const struct lm_srv *s, enum lm_log_level lvl, const char *fmt, ...) {
  static const char *const names[] = {"error", "warn", "info", "debug"};
  if (lvl > s->opts.log_level) return;
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  fprintf(stderr, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s\n", tm.tm_year + 1900, tm.tm_mon + 1,
          tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, names[lvl], line);
}

grpc_status_code lm_status_of(int lm_code) {
  switch (lm_code) {
  case LM_OK: return GRPC_STATUS_OK;
  case LM_EINVAL:
  case LM_EFORMAT: return GRPC_STATUS_INVALID_ARGUMENT;
  case LM_ERANGE: return GRPC_STATUS_OUT_OF_RANGE;
  case LM_EFULL: return GRPC_STATUS_RESOURCE_EXHAUSTED;
  case LM_ECLOSED: return GRPC_STATUS_UNAVAILABLE;
  case LM_ENOENT: return GRPC_STATUS_NOT_FOUND;
  case LM_EEXIST: return GRPC_STATUS_ALREADY_EXISTS;
  case LM_EUNSUP: return GRPC_STATUS_UNIMPLEMENTED;
  case LM_ENOMEM: return GRPC_STATUS_RESOURCE_EXHAUSTED;
  default: return GRPC_STATUS_INTERNAL;
  }
}

grpc_byte_buffer *lm_pack(const ProtobufCMessage *m) {
  size_t n = protobuf_c_message_get_packed_size(m);
  grpc_slice sl = grpc_slice_malloc(n);
  protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(sl));
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
  grpc_slice_unref(sl);
  return bb;
}

grpc_slice lm_read_payload(grpc_byte_buffer *bb) {
  grpc_byte_buffer_reader rd;
  if (!bb || !grpc_byte_buffer_reader_init(&rd, bb)) return grpc_empty_slice();
  grpc_slice sl = grpc_byte_buffer_reader_readall(&rd);
  grpc_byte_buffer_reader_destroy(&rd);
  return sl;
}

/* ---- calls -------------------------------------------------------------- */

static void call_free(struct lm_call *c) {
  if (c->call) grpc_call_unref(c->call);
  grpc_metadata_array_destroy(&c->md_in);
  if (c->method == LM_M_UNKNOWN) grpc_call_details_destroy(&c->details);
  if (c->payload) grpc_byte_buffer_destroy(c->payload);
  if (c->recv_buf) grpc_byte_buffer_destroy(c->recv_buf);
  lm_output_free(&c->out);
  free(c);
}

void lm_call_ref(struct lm_call *c) {
  atomic_fetch_add(&c->refs, 1);
}

static void call_unref(struct lm_call *c) {
  if (atomic_fetch_sub(&c->refs, 1) == 1) call_free(c);
}

int lm_call_batch(struct lm_call *c, const grpc_op *ops, size_t n, enum lm_tag_kind k) {
  struct lm_tag *t = k == LM_TAG_CLOSE    ? &c->t_close
                     : k == LM_TAG_SEND   ? &c->t_send
                     : k == LM_TAG_RECV   ? &c->t_recv
                     : k == LM_TAG_STATUS ? &c->t_status
                                          : &c->t_notify;
  lm_call_ref(c);
  if (k == LM_TAG_SEND) c->send_busy = 1;
  if (k == LM_TAG_STATUS) c->send_busy = 1, c->status_sent = 1;
  if (k == LM_TAG_RECV) c->recv_busy = 1;
  grpc_call_error e = grpc_call_start_batch(c->call, ops, n, t, NULL);
  if (e != GRPC_CALL_OK) {
    lm_srv_log(c->srv, LM_LOG_ERROR, "grpc_call_start_batch(%s): error %d",
               lm_method_name[c->method], (int)e);
    if (k == LM_TAG_SEND || k == LM_TAG_STATUS) c->send_busy = 0;
    if (k == LM_TAG_RECV) c->recv_busy = 0;
    call_unref(c);
    return -1;
  }
  return 0;
}

void lm_call_wake(struct lm_call *c) {
  if (atomic_exchange(&c->notify_pending, 1)) return;
  struct lm_doorbell *b = &c->srv->bells[c->cq];
  lm_call_ref(c); /* the list's reference */
  pthread_mutex_lock(&b->mu);
  c->wake_next = b->head;
  b->head = c;
  int arm = !b->armed;
  b->armed = 1;
  pthread_mutex_unlock(&b->mu);
  if (!arm) return;
  lm_call_ref(c); /* the batch's reference */
  if (grpc_call_start_batch(c->call, NULL, 0, &c->t_notify, NULL) != GRPC_CALL_OK) {
    /* cannot happen for a zero-op batch; leave the list to the next ring */
    pthread_mutex_lock(&b->mu);
    b->armed = 0;
    pthread_mutex_unlock(&b->mu);
    call_unref(c);
  }
}

void lm_call_reply(struct lm_call *c, const ProtobufCMessage *msg, grpc_status_code code,
                   const char *details) {
  grpc_op ops[3];
  memset(ops, 0, sizeof(ops));
  size_t n = 0;
  grpc_byte_buffer *bb = msg ? lm_pack(msg) : NULL;
  grpc_slice det = grpc_slice_from_copied_string(details ? details : "");
  if (!c->started) {
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (c->id[0]) {
      c->md_id.key = grpc_slice_from_static_string("x-request-id");
      c->md_id.value = grpc_slice_from_static_string(c->id);
      ops[n].data.send_initial_metadata.count = 1;
      ops[n].data.send_initial_metadata.metadata = &c->md_id;
    }
    n++;
    c->started = 1;
  }
  if (bb) {
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = bb;
    n++;
  }
  ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[n].data.send_status_from_server.status = code;
  ops[n].data.send_status_from_server.status_details = &det;
  n++;
  c->code = code;
  if (details && details != c->msg) snprintf(c->msg, sizeof(c->msg), "%s", details);
  lm_call_batch(c, ops, n, LM_TAG_STATUS);
  if (bb) grpc_byte_buffer_destroy(bb);
  grpc_slice_unref(det);
}

static int post_request(struct lm_srv *s, int cq, enum lm_method m);

static void call_begin(struct lm_call *c) {
  struct lm_srv *s = c->srv;
  c->t_start = lm_now_s();
  char *peer = grpc_call_get_peer(c->call);
  snprintf(c->peer, sizeof(c->peer), "%s", peer ? peer : "?");
  gpr_free(peer);
  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  op.data.recv_close_on_server.cancelled = &c->close_cancelled;
  lm_call_batch(c, &op, 1, LM_TAG_CLOSE);
  switch (c->method) {
  case LM_M_HEALTH_CHECK:
  case LM_M_HEALTH_WATCH: lm_health_start(c); break;
  case LM_M_REFLECT_V1:
  case LM_M_REFLECT_V1ALPHA: lm_reflection_start(c); break;
  case LM_M_UNKNOWN: {
    char path[256];
    size_t n = GRPC_SLICE_LENGTH(c->details.method);
    if (n >= sizeof(path)) n = sizeof(path) - 1;
    memcpy(path, GRPC_SLICE_START_PTR(c->details.method), n);
    path[n] = '\0';
    snprintf(c->msg, sizeof(c->msg), "unknown method %s (lmserve serves lmserve.v1.Generation)",
             path);
    lm_call_reply(c, NULL, GRPC_STATUS_UNIMPLEMENTED, c->msg);
    break;
  }
  default: lm_gen_start(c);
  }
  (void)s;
}

static void call_event(struct lm_call *c, enum lm_tag_kind k, int ok) {
  if (k == LM_TAG_CLOSE) c->close_done = 1;
  if (k == LM_TAG_STATUS) c->status_done = 1;
  if (k == LM_TAG_SEND || k == LM_TAG_STATUS) c->send_busy = 0;
  if (k == LM_TAG_RECV) c->recv_busy = 0;
  switch (c->method) {
  case LM_M_HEALTH_CHECK:
  case LM_M_HEALTH_WATCH: lm_health_event(c, k, ok); break;
  case LM_M_REFLECT_V1:
  case LM_M_REFLECT_V1ALPHA: lm_reflection_event(c, k, ok); break;
  case LM_M_UNKNOWN: break;
  default: lm_gen_event(c, k, ok);
  }
}

/* A call ends once its close is seen and nothing of ours is in flight. */
static void call_maybe_done(struct lm_call *c) {
  if (c->done || !c->close_done || c->send_busy || c->recv_busy) return;
  if (!c->status_done && !c->close_cancelled) return;
  c->done = 1;
  if (c->close_cancelled && c->code == GRPC_STATUS_OK) {
    gpr_timespec now = gpr_now(GPR_CLOCK_MONOTONIC);
    c->code = gpr_time_cmp(gpr_convert_clock_type(c->deadline, GPR_CLOCK_MONOTONIC), now) <= 0
                  ? GRPC_STATUS_DEADLINE_EXCEEDED
                  : GRPC_STATUS_CANCELLED;
  }
  atomic_fetch_add(&c->srv->metrics.requests[c->method][c->code], 1);
  if (c->method == LM_M_HEALTH_WATCH) lm_health_finish(c);
  if (c->method <= LM_M_ABORT) lm_gen_finish(c);
  call_unref(c); /* the call's own reference */
}

/* The doorbell's batch completed: run every call queued on it, oldest
 * first. */
static void ring(struct lm_srv *s, int cq) {
  struct lm_doorbell *b = &s->bells[cq];
  pthread_mutex_lock(&b->mu);
  struct lm_call *list = b->head, *fifo = NULL;
  b->head = NULL;
  b->armed = 0;
  pthread_mutex_unlock(&b->mu);
  while (list) {
    struct lm_call *next = list->wake_next;
    list->wake_next = fifo;
    fifo = list;
    list = next;
  }
  while (fifo) {
    struct lm_call *c = fifo;
    fifo = c->wake_next;
    atomic_store(&c->notify_pending, 0);
    call_event(c, LM_TAG_NOTIFY, 1);
    call_maybe_done(c);
    call_unref(c); /* the list's reference */
  }
}

static void handle(struct lm_srv *s, int cq, struct lm_tag *t, int ok) {
  struct lm_call *c = t->call;
  if (t->kind == LM_TAG_NEW) {
    if (!ok) { /* the server is shutting down */
      call_unref(c);
      return;
    }
    if (!atomic_load(&s->draining)) post_request(s, cq, c->method);
    call_begin(c);
    call_maybe_done(c);
    return;
  }
  if (t->kind == LM_TAG_NOTIFY) {
    ring(s, cq);
  } else {
    call_event(c, t->kind, ok);
    call_maybe_done(c);
  }
  call_unref(c); /* the batch's reference */
}

static int post_request(struct lm_srv *s, int cq, enum lm_method m) {
  struct lm_call *c = calloc(1, sizeof(*c));
  if (!c) return -1;
  c->srv = s;
  c->method = m;
  c->cq = cq;
  atomic_init(&c->refs, 1);
  atomic_init(&c->watch_told, 0);
  c->watch_sent = -1;
  c->t_new = (struct lm_tag){c, LM_TAG_NEW};
  c->t_close = (struct lm_tag){c, LM_TAG_CLOSE};
  c->t_send = (struct lm_tag){c, LM_TAG_SEND};
  c->t_recv = (struct lm_tag){c, LM_TAG_RECV};
  c->t_notify = (struct lm_tag){c, LM_TAG_NOTIFY};
  c->t_status = (struct lm_tag){c, LM_TAG_STATUS};
  grpc_metadata_array_init(&c->md_in);
  grpc_completion_queue *q = s->cqs[cq];
  grpc_call_error e;
  if (m == LM_M_UNKNOWN) {
    grpc_call_details_init(&c->details);
    e = grpc_server_request_call(s->server, &c->call, &c->details, &c->md_in, q, q, &c->t_new);
  } else {
    int payload = m != LM_M_REFLECT_V1 && m != LM_M_REFLECT_V1ALPHA;
    e = grpc_server_request_registered_call(s->server, s->method_handle[m], &c->call, &c->deadline,
                                            &c->md_in, payload ? &c->payload : NULL, q, q,
                                            &c->t_new);
  }
  if (e != GRPC_CALL_OK) {
    call_free(c);
    return -1;
  }
  return 0;
}

struct cq_arg {
  struct lm_srv *s;
  int i;
};

static void *cq_main(void *arg) {
  struct cq_arg a = *(struct cq_arg *)arg;
  free(arg);
  struct lm_srv *s = a.s;
  char name[16];
  snprintf(name, sizeof(name), "lm-cq-%d", a.i);
  pthread_setname_np(pthread_self(), name);
  grpc_completion_queue *q = s->cqs[a.i];
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(q, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type != GRPC_OP_COMPLETE) continue;
    if (ev.tag == &shutdown_tag) {
      pthread_mutex_lock(&s->mu);
      s->shutdown_done = 1;
      pthread_cond_broadcast(&s->cv);
      pthread_mutex_unlock(&s->mu);
      continue;
    }
    handle(s, a.i, ev.tag, ev.success);
  }
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  atomic_fetch_add(&s->cq_cpu_ns, (unsigned long long)ts.tv_sec * 1000000000ull + ts.tv_nsec);
  return NULL;
}

/* ---- start and shutdown -------------------------------------------------- */

static grpc_server_credentials *make_creds(const struct lm_serve_opts *o, char *err) {
  if (!o->tls_cert && !o->tls_key) return grpc_insecure_server_credentials_create();
  if (!o->tls_cert || !o->tls_key) {
    lm_errf(err, LM_EINVAL, "--tls-cert and --tls-key go together");
    return NULL;
  }
  char *cert = NULL, *key = NULL;
  size_t n;
  grpc_server_credentials *cr = NULL;
  if (lm_read_file(o->tls_cert, &cert, &n, err) || lm_read_file(o->tls_key, &key, &n, err))
    goto out;
  grpc_ssl_pem_key_cert_pair pair = {key, cert};
  cr = grpc_ssl_server_credentials_create(NULL, &pair, 1, 0, NULL);
  if (!cr)
    lm_errf(err, LM_EINVAL, "%s / %s: not a usable PEM certificate and key", o->tls_cert,
            o->tls_key);
out:
  free(cert);
  free(key);
  return cr;
}

int lm_srv_start(struct lm_srv *s, char *err) {
  const struct lm_serve_opts *o = &s->opts;
  grpc_arg args[8];
  int na = 0;
  args[na++] = (grpc_arg){GRPC_ARG_INTEGER,
                          GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
                          {.integer = (int)o->max_request_bytes}};
  args[na++] =
      (grpc_arg){GRPC_ARG_INTEGER, GRPC_ARG_KEEPALIVE_TIME_MS, {.integer = o->keepalive_ms}};
  args[na++] = (grpc_arg){
      GRPC_ARG_INTEGER, GRPC_ARG_KEEPALIVE_TIMEOUT_MS, {.integer = o->keepalive_timeout_ms}};
  args[na++] = (grpc_arg){
      GRPC_ARG_INTEGER, GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, {.integer = 10000}};
  args[na++] =
      (grpc_arg){GRPC_ARG_INTEGER, GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, {.integer = 1}};
  if (o->max_connection_age_ms > 0) {
    args[na++] = (grpc_arg){
        GRPC_ARG_INTEGER, GRPC_ARG_MAX_CONNECTION_AGE_MS, {.integer = o->max_connection_age_ms}};
    args[na++] = (grpc_arg){GRPC_ARG_INTEGER,
                            GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                            {.integer = o->max_connection_age_grace_ms}};
  }
  if (o->max_connection_idle_ms > 0)
    args[na++] = (grpc_arg){
        GRPC_ARG_INTEGER, GRPC_ARG_MAX_CONNECTION_IDLE_MS, {.integer = o->max_connection_idle_ms}};
  grpc_channel_args ch = {(size_t)na, args};
  s->server = grpc_server_create(&ch, NULL);
  for (int m = 0; m < LM_M_UNKNOWN; m++) {
    int payload = m != LM_M_REFLECT_V1 && m != LM_M_REFLECT_V1ALPHA;
    s->method_handle[m] = grpc_server_register_method(
        s->server, lm_method_path[m], NULL,
        payload ? GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER : GRPC_SRM_PAYLOAD_NONE, 0);
  }
  s->cqs = calloc((size_t)s->n_cq, sizeof(*s->cqs));
  s->cq_threads = calloc((size_t)s->n_cq, sizeof(*s->cq_threads));
  s->bells = calloc((size_t)s->n_cq, sizeof(*s->bells));
  if (!s->cqs || !s->cq_threads || !s->bells) return lm_errf(err, LM_ENOMEM, "out of memory");
  for (int i = 0; i < s->n_cq; i++)
    pthread_mutex_init(&s->bells[i].mu, NULL);
  for (int i = 0; i < s->n_cq; i++) {
    s->cqs[i] = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(s->server, s->cqs[i], NULL);
  }
  grpc_server_credentials *cr = make_creds(o, err);
  if (!cr) return LM_EINVAL;
  snprintf(s->listen_addr, sizeof(s->listen_addr), strchr(o->host, ':') ? "[%s]:%d" : "%s:%d",
           o->host, o->port);
  s->bound_port = grpc_server_add_http2_port(s->server, s->listen_addr, cr);
  grpc_server_credentials_release(cr);
  if (s->bound_port <= 0) {
    lm_errf(err, LM_EIO, "cannot listen on %s (in use, or not an address of this machine)",
            s->listen_addr);
    grpc_server_destroy(s->server);
    s->server = NULL;
    for (int i = 0; i < s->n_cq; i++) {
      grpc_completion_queue_shutdown(s->cqs[i]);
      while (grpc_completion_queue_next(s->cqs[i], gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
             GRPC_QUEUE_SHUTDOWN)
        ;
      grpc_completion_queue_destroy(s->cqs[i]);
    }
    free(s->cqs);
    free(s->cq_threads);
    free(s->bells);
    s->bells = NULL;
    s->cqs = NULL;
    s->cq_threads = NULL;
    return LM_EIO;
  }
  grpc_server_start(s->server);
  for (int i = 0; i < s->n_cq; i++) {
    for (int m = 0; m < LM_M_COUNT; m++)
      for (int k = 0; k < slots_for((enum lm_method)m); k++)
        if (post_request(s, i, (enum lm_method)m)) return lm_errf(err, LM_ENOMEM, "out of memory");
    struct cq_arg *a = malloc(sizeof(*a));
    if (!a) return lm_errf(err, LM_ENOMEM, "out of memory");
    *a = (struct cq_arg){s, i};
    if (pthread_create(&s->cq_threads[i], NULL, cq_main, a)) {
      free(a);
      return lm_errf(err, LM_ENOMEM, "cannot start a completion-queue thread");
    }
  }
  return LM_OK;
}

void lm_srv_shutdown(struct lm_srv *s) {
  atomic_store(&s->draining, 1);
  lm_health_tick(s);
  lm_engine_close(s->engine);
  grpc_server_shutdown_and_notify(s->server, s->cqs[0], &shutdown_tag);
  /* streams in flight finish, and every Health.Watch stream carries the
   * NOT_SERVING just announced, before any call is cancelled */
  double until = lm_now_s() + s->opts.drain_s;
  int live;
  while (((live = atomic_load(&s->live_streams)) > 0 || !lm_health_all_told(s)) &&
         lm_now_s() < until) {
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  if (live > 0)
    lm_srv_log(s, LM_LOG_WARN, "drain: %d streams still running after %gs, cancelling them", live,
               s->opts.drain_s);
  grpc_server_cancel_all_calls(s->server);
  pthread_mutex_lock(&s->mu);
  while (!s->shutdown_done)
    pthread_cond_wait(&s->cv, &s->mu);
  pthread_mutex_unlock(&s->mu);
  grpc_server_destroy(s->server);
  s->server = NULL;
  for (int i = 0; i < s->n_cq; i++)
    grpc_completion_queue_shutdown(s->cqs[i]);
  for (int i = 0; i < s->n_cq; i++) {
    pthread_join(s->cq_threads[i], NULL);
    grpc_completion_queue_destroy(s->cqs[i]);
  }
  free(s->cqs);
  free(s->cq_threads);
  for (int i = 0; i < s->n_cq; i++)
    pthread_mutex_destroy(&s->bells[i].mu);
  free(s->bells);
  s->bells = NULL;
  s->cqs = NULL;
  s->cq_threads = NULL;
}
