/* server.h - lmserve's gRPC server: the gRPC C core completion-queue API,
 * one thread per queue, registered methods, protobuf-c messages.
 *
 * Threads: the engine thread (engine/), one thread per completion queue
 * (every tag of a call completes on the queue that accepted it, so a call's
 * state is only touched by that thread), and the metrics thread (HTTP
 * /metrics and the health tick). The engine's notify callback only posts a
 * zero-op batch on the call (a wake-up that completes at once on the
 * call's queue); the queue thread drains the request's output and starts
 * at most one send per call. */
#ifndef LM_SERVER_H
#define LM_SERVER_H

#include <grpc/grpc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "engine/chat.h"
#include "engine/engine.h"
#include "server/codec.h"

enum lm_method {
  LM_M_GENERATE,
  LM_M_CHAT,
  LM_M_TOKENIZE,
  LM_M_DETOKENIZE,
  LM_M_MODEL_INFO,
  LM_M_ABORT,
  LM_M_HEALTH_CHECK,
  LM_M_HEALTH_WATCH,
  LM_M_REFLECT_V1,
  LM_M_REFLECT_V1ALPHA,
  LM_M_UNKNOWN, /* any other path: UNIMPLEMENTED */
  LM_M_COUNT
};

extern const char *const lm_method_path[LM_M_COUNT];
extern const char *const lm_method_name[LM_M_COUNT];

enum lm_log_level { LM_LOG_ERROR, LM_LOG_WARN, LM_LOG_INFO, LM_LOG_DEBUG };

struct lm_serve_opts {
  const char *model_dir, *served_model_name, *host, *tls_cert, *tls_key;
  int port, metrics_port, grpc_threads;
  size_t max_request_bytes;
  double drain_s, health_stall_s;
  int keepalive_ms, keepalive_timeout_ms, max_connection_age_ms, max_connection_age_grace_ms,
      max_connection_idle_ms;
  enum lm_log_level log_level;
};

/* Histogram with fixed upper bounds (seconds). */
#define LM_HIST_MAX_BUCKETS 24
struct lm_hist {
  const char *name, *help;
  const double *bounds;
  int n_bounds;
  atomic_ullong counts[LM_HIST_MAX_BUCKETS + 1]; /* last: +Inf */
  atomic_ullong sum_ns;
};

struct lm_metrics {
  atomic_ullong requests[LM_M_COUNT][17]; /* [method][grpc status code] */
  atomic_ullong prompt_tokens, generation_tokens;
  struct lm_hist ttft, itl, queue, e2e;
};

struct lm_reflection;
struct lm_call;

/* Wake-ups for one queue's calls. The first wake-up while none is pending
 * posts one zero-op batch (on the call being woken); its completion runs
 * every call queued meanwhile, so a step that feeds 64 streams costs the
 * queue thread one event, not 64. */
struct lm_doorbell {
  pthread_mutex_t mu;
  struct lm_call *head; /* calls to run, each holding a reference */
  int armed;            /* a zero-op batch is in flight */
};

struct lm_srv {
  struct lm_serve_opts opts;
  lm_engine *engine;
  const lm_tokenizer *tok;
  lm_chat *chat; /* NULL: the model has no chat template */
  struct lm_engine_info info;
  struct lm_codec_limits lim;
  const char *model_name;
  char listen_addr[300];
  int bound_port;

  grpc_server *server;
  void *method_handle[LM_M_COUNT];
  int n_cq;
  grpc_completion_queue **cqs;
  pthread_t *cq_threads;
  struct lm_doorbell *bells; /* [n_cq] */
  atomic_ullong cq_cpu_ns;   /* CPU time of queue threads that have exited */
  double cpu_base_s;         /* lm_server_cpu_s() once serving (loading excluded) */

  atomic_int draining;
  atomic_int live_streams; /* Generate and Chat calls not yet finished */
  atomic_uint id_seq;

  /* health: the serving state and the Watch streams to tell */
  atomic_int serving;
  pthread_mutex_t watch_mu;
  struct lm_call *watchers;

  struct lm_reflection *refl;
  struct lm_metrics metrics;
  pthread_t metrics_thread;
  int metrics_fd;
  atomic_int metrics_stop;

  pthread_mutex_t mu; /* guards shutdown_done */
  pthread_cond_t cv;
  int shutdown_done;
};

/* One tag per kind of batch a call can have in flight. */
enum lm_tag_kind {
  LM_TAG_NEW,
  LM_TAG_CLOSE,
  LM_TAG_SEND,
  LM_TAG_RECV,
  LM_TAG_NOTIFY,
  LM_TAG_STATUS
};
struct lm_tag {
  struct lm_call *call;
  enum lm_tag_kind kind;
};

/* A call's state; only its queue's thread touches it, except refs and
 * notify_pending (the engine thread's notify, the health tick). */
struct lm_call {
  struct lm_srv *srv;
  enum lm_method method;
  int cq;
  grpc_call *call;
  grpc_call_details details; /* LM_M_UNKNOWN */
  grpc_metadata_array md_in;
  gpr_timespec deadline;
  grpc_byte_buffer *payload; /* the request, read with the call */
  grpc_byte_buffer *recv_buf;
  struct lm_tag t_new, t_close, t_send, t_recv, t_notify, t_status;
  atomic_int refs;
  atomic_int notify_pending;
  int close_cancelled, close_done, send_busy, recv_busy, status_sent, status_done, started, done;
  double t_start;

  /* Generate / Chat */
  lm_request *req;
  struct lm_output out;
  char id[LM_CODEC_MAX_ID_BYTES + 1];
  int want_logprobs, sent_first, finished, prompt_tokens, completion_tokens, cached_tokens;
  enum lm_finish_reason finish_reason;
  double ttft_s, last_out_s;
  grpc_metadata md_id;

  /* Health.Watch */
  struct lm_call *watch_next;
  struct lm_call *wake_next; /* on its queue's doorbell list */
  int watch_sent;            /* the status last sent, -1 before the first */
  int watch_service_known;
  atomic_int watch_told; /* a NOT_SERVING send has completed (drain waits for it) */

  grpc_status_code code; /* the status sent (for the log and metrics) */
  char peer[64];
  char msg[LM_ERR_LEN];
};

/* server.c */
int lm_srv_start(struct lm_srv *s, char *err);
/* Stops accepting, lets streams finish for opts.drain_s, cancels the rest
 * and joins the queue threads. */
void lm_srv_shutdown(struct lm_srv *s);
void lm_srv_log(const struct lm_srv *s, enum lm_log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void lm_call_ref(struct lm_call *c);
/* Starts ops with tag kind k (one ref per batch); 0 or -1. */
int lm_call_batch(struct lm_call *c, const grpc_op *ops, size_t n, enum lm_tag_kind k);
/* Queues a wake-up for the call on its queue's doorbell (see struct
 * lm_doorbell). Any thread; a call is queued at most once at a time. */
void lm_call_wake(struct lm_call *c);
/* Replies (initial metadata, optional message, status) and ends the call. */
void lm_call_reply(struct lm_call *c, const ProtobufCMessage *msg, grpc_status_code code,
                   const char *details);
grpc_byte_buffer *lm_pack(const ProtobufCMessage *m);
/* The whole message as one flat buffer (a slice the caller unrefs). */
grpc_slice lm_read_payload(grpc_byte_buffer *bb);
grpc_status_code lm_status_of(int lm_code);

/* gen.c: lmserve.v1.Generation */
void lm_gen_start(struct lm_call *c);
void lm_gen_event(struct lm_call *c, enum lm_tag_kind k, int ok);
void lm_gen_finish(struct lm_call *c);

/* health.c */
int lm_health_serving(struct lm_srv *s);
void lm_health_tick(struct lm_srv *s);
void lm_health_start(struct lm_call *c);
void lm_health_event(struct lm_call *c, enum lm_tag_kind k, int ok);
void lm_health_finish(struct lm_call *c);
/* 1 when every Health.Watch stream of a known service has finished sending
 * NOT_SERVING (or has ended): what a drain waits for before cancelling. */
int lm_health_all_told(struct lm_srv *s);

/* reflection.c */
int lm_reflection_create(struct lm_reflection **out, char *err);
void lm_reflection_free(struct lm_reflection *r);
void lm_reflection_start(struct lm_call *c);
void lm_reflection_event(struct lm_call *c, enum lm_tag_kind k, int ok);

/* metrics.c */
void lm_metrics_init(struct lm_metrics *m);
void lm_hist_observe(struct lm_hist *h, double v);
/* Binds --metrics-port (0: none) and starts the thread that serves
 * /metrics and runs the health tick. */
int lm_metrics_start(struct lm_srv *s, char *err);
void lm_metrics_stop(struct lm_srv *s);
/* CPU seconds of every thread but the engine's (see metrics.c). */
double lm_server_cpu_s(void);

#endif
