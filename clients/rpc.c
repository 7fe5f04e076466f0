/* rpc.c - blocking gRPC calls on a pluck completion queue. */
#include "clients/rpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "engine/lm.h"

/* Tags are addresses of these, one per kind of batch. */
static char tag_start, tag_recv, tag_status;

gpr_timespec lmc_deadline(double s) {
  if (s <= 0) return gpr_inf_future(GPR_CLOCK_MONOTONIC);
  return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                      gpr_time_from_micros((int64_t)(s * 1e6), GPR_TIMESPAN));
}

int lmc_conn_open(const char *addr, struct lmc_conn *c, char *err) {
  memset(c, 0, sizeof(*c));
  grpc_init();
  grpc_channel_credentials *creds = grpc_insecure_credentials_create();
  if (!creds) goto err;
  c->channel = grpc_channel_create(addr, creds, NULL);
  grpc_channel_credentials_release(creds);
  if (!c->channel) goto err;
  c->cq = grpc_completion_queue_create_for_pluck(NULL);
  if (!c->cq) goto err;
  return LM_OK;
err:
  lmc_conn_close(c);
  return lm_errf(err, LM_EIO, "cannot create a channel to %s", addr);
}

void lmc_conn_close(struct lmc_conn *c) {
  if (!c) return;
  if (c->cq) {
    grpc_completion_queue_shutdown(c->cq);
    while (
        grpc_completion_queue_pluck(c->cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
        GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(c->cq);
  }
  if (c->channel) grpc_channel_destroy(c->channel);
  if (c->cq || c->channel) grpc_shutdown();
  memset(c, 0, sizeof(*c));
}

/* Waits for the batch with this tag; 1 when it succeeded. */
static int wait_tag(struct lmc_call *call, void *tag) {
  grpc_event ev =
      grpc_completion_queue_pluck(call->conn->cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
  return ev.type == GRPC_OP_COMPLETE && ev.success;
}

int lmc_call_start(struct lmc_conn *c, const char *method, const void *req, size_t len,
                   double deadline_s, const grpc_metadata *md, size_t n_md, struct lmc_call *out,
                   char *err) {
  memset(out, 0, sizeof(*out));
  out->conn = c;
  grpc_metadata_array_init(&out->initial_md);
  grpc_metadata_array_init(&out->trailing_md);
  grpc_slice method_slice = grpc_slice_from_static_string(method);
  out->call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq,
                                       method_slice, NULL, lmc_deadline(deadline_s), NULL);
  if (!out->call) {
    grpc_metadata_array_destroy(&out->initial_md);
    grpc_metadata_array_destroy(&out->trailing_md);
    return lm_errf(err, LM_EIO, "cannot create a call to %s", method);
  }
  grpc_slice body = grpc_slice_from_copied_buffer((const char *)req, len);
  grpc_byte_buffer *send = grpc_raw_byte_buffer_create(&body, 1);
  grpc_slice_unref(body);
  grpc_op ops[4];
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[0].data.send_initial_metadata.count = n_md;
  ops[0].data.send_initial_metadata.metadata = (grpc_metadata *)md;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = send;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[3].data.recv_status_on_client.trailing_metadata = &out->trailing_md;
  ops[3].data.recv_status_on_client.status = &out->status;
  ops[3].data.recv_status_on_client.status_details = &out->details;
  grpc_call_error e = grpc_call_start_batch(out->call, ops, 3, &tag_start, NULL);
  if (e == GRPC_CALL_OK) {
    e = grpc_call_start_batch(out->call, ops + 3, 1, &tag_status, NULL);
    if (e != GRPC_CALL_OK) {
      grpc_call_cancel(out->call, NULL);
      wait_tag(out, &tag_start);
    }
  }
  if (e != GRPC_CALL_OK) {
    grpc_byte_buffer_destroy(send);
    grpc_call_unref(out->call);
    grpc_metadata_array_destroy(&out->initial_md);
    grpc_metadata_array_destroy(&out->trailing_md);
    return lm_errf(err, LM_EIO, "grpc_call_start_batch failed (%d)", (int)e);
  }
  wait_tag(out, &tag_start); /* a failed send shows up in the status */
  grpc_byte_buffer_destroy(send);
  return LM_OK;
}

int lmc_call_next(struct lmc_call *call, uint8_t **msg, size_t *len) {
  *msg = NULL;
  *len = 0;
  if (call->ended) return 0;
  grpc_op ops[2];
  size_t n = 0;
  memset(ops, 0, sizeof(ops));
  if (!call->got_initial_md) {
    ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[n++].data.recv_initial_metadata.recv_initial_metadata = &call->initial_md;
    call->got_initial_md = 1;
  }
  ops[n].op = GRPC_OP_RECV_MESSAGE;
  ops[n++].data.recv_message.recv_message = &call->recv;
  if (grpc_call_start_batch(call->call, ops, n, &tag_recv, NULL) != GRPC_CALL_OK ||
      !wait_tag(call, &tag_recv) || !call->recv) {
    call->ended = 1;
    return 0;
  }
  int rc = lmc_byte_buffer_copy(call->recv, msg, len);
  grpc_byte_buffer_destroy(call->recv);
  call->recv = NULL;
  return rc == LM_OK ? 1 : rc;
}

char *lmc_call_initial_md(const struct lmc_call *call, const char *key) {
  for (size_t i = 0; i < call->initial_md.count; i++) {
    const grpc_metadata *m = &call->initial_md.metadata[i];
    if (grpc_slice_str_cmp(m->key, key) == 0) return grpc_slice_to_c_string(m->value);
  }
  return NULL;
}

void lmc_call_cancel(struct lmc_call *call) {
  grpc_call_cancel(call->call, NULL);
}

int lmc_call_finish(struct lmc_call *call, char *err) {
  /* drain unread messages so the status can arrive */
  uint8_t *msg;
  size_t len;
  while (lmc_call_next(call, &msg, &len) == 1)
    free(msg);
  wait_tag(call, &tag_status);
  int code = (int)call->status;
  if (err) {
    char *d = grpc_slice_to_c_string(call->details);
    snprintf(err, LM_ERR_LEN, "%s", d ? d : "");
    gpr_free(d);
  }
  grpc_slice_unref(call->details);
  grpc_metadata_array_destroy(&call->initial_md);
  grpc_metadata_array_destroy(&call->trailing_md);
  grpc_call_unref(call->call);
  memset(call, 0, sizeof(*call));
  return code;
}

int lmc_byte_buffer_copy(grpc_byte_buffer *bb, uint8_t **data, size_t *len) {
  grpc_byte_buffer_reader r;
  *data = NULL;
  *len = 0;
  if (!grpc_byte_buffer_reader_init(&r, bb)) return LM_EIO;
  grpc_slice s = grpc_byte_buffer_reader_readall(&r);
  grpc_byte_buffer_reader_destroy(&r);
  size_t n = GRPC_SLICE_LENGTH(s);
  uint8_t *p = malloc(n ? n : 1);
  if (!p) {
    grpc_slice_unref(s);
    return LM_ENOMEM;
  }
  memcpy(p, GRPC_SLICE_START_PTR(s), n);
  grpc_slice_unref(s);
  *data = p;
  *len = n;
  return LM_OK;
}

const char *lmc_status_name(int code) {
  static const char *const names[] = {"OK",
                                      "CANCELLED",
                                      "UNKNOWN",
                                      "INVALID_ARGUMENT",
                                      "DEADLINE_EXCEEDED",
                                      "NOT_FOUND",
                                      "ALREADY_EXISTS",
                                      "PERMISSION_DENIED",
                                      "RESOURCE_EXHAUSTED",
                                      "FAILED_PRECONDITION",
                                      "ABORTED",
                                      "OUT_OF_RANGE",
                                      "UNIMPLEMENTED",
                                      "INTERNAL",
                                      "UNAVAILABLE",
                                      "DATA_LOSS",
                                      "UNAUTHENTICATED"};
  return code >= 0 && code <= 16 ? names[code] : "?";
}
