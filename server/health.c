/* health.c - grpc.health.v1.Health: SERVING while the engine is idle or
 * making progress; NOT_SERVING while draining or when a step has run past
 * --health-stall-seconds. The metrics thread re-evaluates it (tick) and
 * wakes every Watch stream on a change. */
#include <stdlib.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"
#include "server/server.h"

#define SERVING     GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
#define NOT_SERVING GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
#define UNKNOWN     GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN

int lm_health_serving(struct lm_srv *s) {
  if (atomic_load(&s->draining)) return 0;
  struct lm_engine_stats st;
  lm_engine_get_stats(s->engine, &st);
  return !(st.busy && lm_now_s() - st.last_step_end_s > s->opts.health_stall_s);
}

void lm_health_tick(struct lm_srv *s) {
  int now = lm_health_serving(s);
  if (atomic_exchange(&s->serving, now) == now) return;
  lm_srv_log(s, LM_LOG_WARN, "health: %s%s", now ? "SERVING" : "NOT_SERVING",
             now                         ? ""
             : atomic_load(&s->draining) ? " (draining)"
                                         : " (an engine step is stalled)");
  pthread_mutex_lock(&s->watch_mu);
  for (struct lm_call *c = s->watchers; c; c = c->watch_next)
    lm_call_wake(c);
  pthread_mutex_unlock(&s->watch_mu);
}

/* "" is the whole server; services named by their full name. */
static int known_service(const char *name) {
  return !*name || !strcmp(name, "lmserve.v1.Generation") || !strcmp(name, "grpc.health.v1.Health");
}

static int status_for(struct lm_call *c) {
  if (!c->watch_service_known) return UNKNOWN;
  return atomic_load(&c->srv->serving) ? SERVING : NOT_SERVING;
}

static void watch_send(struct lm_call *c) {
  if (c->send_busy || c->close_done || c->status_sent) return;
  int st = status_for(c);
  if (st == c->watch_sent) return;
  Grpc__Health__V1__HealthCheckResponse m = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  m.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)st;
  grpc_byte_buffer *bb = lm_pack(&m.base);
  grpc_op ops[2];
  memset(ops, 0, sizeof(ops));
  size_t n = 0;
  if (!c->started) ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA, c->started = 1;
  ops[n].op = GRPC_OP_SEND_MESSAGE;
  ops[n++].data.send_message.send_message = bb;
  c->watch_sent = st;
  if (st != NOT_SERVING) atomic_store(&c->watch_told, 0);
  lm_call_batch(c, ops, n, LM_TAG_SEND);
  grpc_byte_buffer_destroy(bb);
}

void lm_health_start(struct lm_call *c) {
  struct lm_srv *s = c->srv;
  grpc_slice sl = lm_read_payload(c->payload);
  Grpc__Health__V1__HealthCheckRequest *q = grpc__health__v1__health_check_request__unpack(
      NULL, GRPC_SLICE_LENGTH(sl), GRPC_SLICE_START_PTR(sl));
  grpc_slice_unref(sl);
  if (!q) {
    lm_call_reply(c, NULL, GRPC_STATUS_INVALID_ARGUMENT,
                  "malformed grpc.health.v1.HealthCheckRequest");
    return;
  }
  c->watch_service_known = known_service(q->service);
  if (c->method == LM_M_HEALTH_CHECK) {
    if (!c->watch_service_known) {
      snprintf(c->msg, sizeof(c->msg), "unknown service '%.200s' (lmserve.v1.Generation or \"\")",
               q->service);
      lm_call_reply(c, NULL, GRPC_STATUS_NOT_FOUND, c->msg);
    } else {
      Grpc__Health__V1__HealthCheckResponse m = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
      m.status = lm_health_serving(s) ? SERVING : NOT_SERVING;
      lm_call_reply(c, &m.base, GRPC_STATUS_OK, NULL);
    }
  } else {
    pthread_mutex_lock(&s->watch_mu);
    c->watch_next = s->watchers;
    s->watchers = c;
    lm_call_ref(c); /* the list's reference */
    pthread_mutex_unlock(&s->watch_mu);
    watch_send(c);
  }
  grpc__health__v1__health_check_request__free_unpacked(q, NULL);
}

void lm_health_event(struct lm_call *c, enum lm_tag_kind k, int ok) {
  (void)ok;
  if (c->method != LM_M_HEALTH_WATCH) return;
  if (k == LM_TAG_SEND && c->watch_sent == NOT_SERVING) atomic_store(&c->watch_told, 1);
  if (k == LM_TAG_SEND || k == LM_TAG_NOTIFY) watch_send(c);
}

int lm_health_all_told(struct lm_srv *s) {
  int all = 1;
  pthread_mutex_lock(&s->watch_mu);
  for (struct lm_call *c = s->watchers; c && all; c = c->watch_next)
    all = !c->watch_service_known || atomic_load(&c->watch_told);
  pthread_mutex_unlock(&s->watch_mu);
  return all;
}

void lm_health_finish(struct lm_call *c) {
  struct lm_srv *s = c->srv;
  pthread_mutex_lock(&s->watch_mu);
  for (struct lm_call **p = &s->watchers; *p; p = &(*p)->watch_next)
    if (*p == c) {
      *p = c->watch_next;
      break;
    }
  pthread_mutex_unlock(&s->watch_mu);
  /* the list's reference; the caller still holds the call's own one */
  atomic_fetch_sub(&c->refs, 1);
}
