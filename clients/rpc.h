/* rpc.h - the few gRPC C core client calls lmserve-client needs: a channel,
 * and a blocking call (unary or server-streaming) driven on its own
 * completion queue. The load generator drives many calls on one queue
 * itself (load.c) and uses only lmc_conn_open/close and the byte-buffer
 * helpers from here.
 *
 * Thread-safety: a connection and its calls belong to one thread. */
#ifndef LMC_RPC_H
#define LMC_RPC_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/grpc.h>

struct lmc_conn {
  grpc_channel *channel;
  grpc_completion_queue *cq; /* pluck queue for blocking calls */
};

/* Opens an insecure channel to addr ("host:port"); no connection is made
 * until the first call. Calls grpc_init (lmc_conn_close balances it). */
int lmc_conn_open(const char *addr, struct lmc_conn *c, char *err);
void lmc_conn_close(struct lmc_conn *c);

struct lmc_call {
  grpc_call *call;
  struct lmc_conn *conn;
  grpc_metadata_array initial_md, trailing_md;
  grpc_status_code status;
  grpc_slice details;
  grpc_byte_buffer *recv;
  int got_initial_md, ended;
};

/* Starts method (e.g. "/lmserve.v1.Generation/Generate") with one request
 * message req[0..len-1]; deadline_s > 0 bounds the whole call. md: extra
 * request metadata (may be NULL). */
int lmc_call_start(struct lmc_conn *c, const char *method, const void *req, size_t len,
                   double deadline_s, const grpc_metadata *md, size_t n_md, struct lmc_call *out,
                   char *err);
/* Waits for the next response message: 1 and a malloc'd copy in *msg (the
 * caller frees it), 0 at the end of the stream, LM_ENOMEM. */
int lmc_call_next(struct lmc_call *call, uint8_t **msg, size_t *len);
/* Looks up an initial metadata value (after the first lmc_call_next);
 * NULL when absent. The returned string is malloc'd. */
char *lmc_call_initial_md(const struct lmc_call *call, const char *key);
/* Cancels the call (the server sees CANCELLED). */
void lmc_call_cancel(struct lmc_call *call);
/* Waits for the status: returns the grpc_status_code and writes its
 * message to err. Frees everything the call holds. */
int lmc_call_finish(struct lmc_call *call, char *err);

/* Copies a received byte buffer into one malloc'd block. */
int lmc_byte_buffer_copy(grpc_byte_buffer *bb, uint8_t **data, size_t *len);

/* "OK", "CANCELLED", ... "UNAUTHENTICATED"; "UNKNOWN(n)" style names are
 * not needed: codes outside 0..16 give "?". */
const char *lmc_status_name(int code);

/* The deadline now + s on the monotonic clock. */
gpr_timespec lmc_deadline(double s);

#endif
