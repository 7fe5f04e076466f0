/* reflection.c - grpc.reflection.v1 and v1alpha (the same wire format):
 * services, files by name and files by symbol, from the descriptor set
 * embedded at build time, so grpcurl works with no .proto at hand. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "descriptor_set.h"
#include "google/protobuf/descriptor.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "server/server.h"

struct refl_file {
  ProtobufCBinaryData bytes; /* the serialized FileDescriptorProto */
  Google__Protobuf__FileDescriptorProto *fd;
};

struct refl_symbol {
  char *name; /* fully qualified, no leading dot */
  int file;
};

struct lm_reflection {
  Google__Protobuf__FileDescriptorSet *set;
  struct refl_file *files;
  int n_files;
  struct refl_symbol *syms;
  int n_syms, cap_syms;
  char **services;
  int n_services;
};

static int add_sym(struct lm_reflection *r, const char *scope, const char *name, int file) {
  if (r->n_syms == r->cap_syms) {
    int cap = r->cap_syms ? 2 * r->cap_syms : 64;
    struct refl_symbol *s = realloc(r->syms, (size_t)cap * sizeof(*s));
    if (!s) return -1;
    r->syms = s, r->cap_syms = cap;
  }
  size_t n = strlen(scope) + strlen(name) + 2;
  char *full = malloc(n);
  if (!full) return -1;
  snprintf(full, n, "%s%s%s", scope, *scope ? "." : "", name);
  r->syms[r->n_syms++] = (struct refl_symbol){full, file};
  return 0;
}

static int add_message(struct lm_reflection *r, const char *scope,
                       const Google__Protobuf__DescriptorProto *m, int file) {
  if (add_sym(r, scope, m->name, file)) return -1;
  const char *self = r->syms[r->n_syms - 1].name;
  for (size_t i = 0; i < m->n_nested_type; i++)
    if (add_message(r, self, m->nested_type[i], file)) return -1;
  for (size_t i = 0; i < m->n_enum_type; i++)
    if (add_sym(r, self, m->enum_type[i]->name, file)) return -1;
  return 0;
}

int lm_reflection_create(struct lm_reflection **out, char *err) {
  struct lm_reflection *r = calloc(1, sizeof(*r));
  if (!r) goto oom;
  r->set =
      google__protobuf__file_descriptor_set__unpack(NULL, lm_descriptor_set_len, lm_descriptor_set);
  if (!r->set) {
    lm_reflection_free(r);
    return lm_errf(err, LM_EFORMAT, "the embedded descriptor set does not parse");
  }
  r->n_files = (int)r->set->n_file;
  r->files = calloc(r->set->n_file, sizeof(*r->files));
  r->services = calloc(r->set->n_file * 4 + 2, sizeof(*r->services));
  if (!r->files || !r->services) goto oom;
  for (int i = 0; i < r->n_files; i++) {
    Google__Protobuf__FileDescriptorProto *fd = r->set->file[i];
    struct refl_file *f = &r->files[i];
    f->fd = fd;
    f->bytes.len = protobuf_c_message_get_packed_size(&fd->base);
    f->bytes.data = malloc(f->bytes.len ? f->bytes.len : 1);
    if (!f->bytes.data) goto oom;
    protobuf_c_message_pack(&fd->base, f->bytes.data);
    for (size_t j = 0; j < fd->n_message_type; j++)
      if (add_message(r, fd->package, fd->message_type[j], i)) goto oom;
    for (size_t j = 0; j < fd->n_enum_type; j++)
      if (add_sym(r, fd->package, fd->enum_type[j]->name, i)) goto oom;
    for (size_t j = 0; j < fd->n_service; j++) {
      const Google__Protobuf__ServiceDescriptorProto *sv = fd->service[j];
      if (add_sym(r, fd->package, sv->name, i)) goto oom;
      const char *svc = r->syms[r->n_syms - 1].name;
      if (r->n_services < r->n_files * 4) r->services[r->n_services++] = (char *)svc;
      for (size_t k = 0; k < sv->n_method; k++)
        if (add_sym(r, svc, sv->method[k]->name, i)) goto oom;
    }
  }
  *out = r;
  return LM_OK;
oom:
  lm_reflection_free(r);
  return lm_errf(err, LM_ENOMEM, "out of memory indexing the descriptor set");
}

void lm_reflection_free(struct lm_reflection *r) {
  if (!r) return;
  for (int i = 0; r->files && i < r->n_files; i++)
    free(r->files[i].bytes.data);
  for (int i = 0; i < r->n_syms; i++)
    free(r->syms[i].name);
  free(r->syms);
  free(r->files);
  free(r->services);
  if (r->set) google__protobuf__file_descriptor_set__free_unpacked(r->set, NULL);
  free(r);
}

static int file_by_name(const struct lm_reflection *r, const char *name) {
  for (int i = 0; i < r->n_files; i++)
    if (!strcmp(r->files[i].fd->name, name)) return i;
  return -1;
}

static int file_by_symbol(const struct lm_reflection *r, const char *sym) {
  if (*sym == '.') sym++;
  for (int i = 0; i < r->n_syms; i++)
    if (!strcmp(r->syms[i].name, sym)) return r->syms[i].file;
  return -1;
}

/* The file and everything it imports, each once. */
static void collect(const struct lm_reflection *r, int f, char *seen, ProtobufCBinaryData *out,
                    size_t *n) {
  if (f < 0 || seen[f]) return;
  seen[f] = 1;
  out[(*n)++] = r->files[f].bytes;
  for (size_t i = 0; i < r->files[f].fd->n_dependency; i++)
    collect(r, file_by_name(r, r->files[f].fd->dependency[i]), seen, out, n);
}

static void respond(struct lm_call *c, const Grpc__Reflection__V1__ServerReflectionRequest *q) {
  const struct lm_reflection *r = c->srv->refl;
  Grpc__Reflection__V1__ServerReflectionResponse m =
      GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__INIT;
  Grpc__Reflection__V1__FileDescriptorResponse fdr =
      GRPC__REFLECTION__V1__FILE_DESCRIPTOR_RESPONSE__INIT;
  Grpc__Reflection__V1__ListServiceResponse ls = GRPC__REFLECTION__V1__LIST_SERVICE_RESPONSE__INIT;
  Grpc__Reflection__V1__ErrorResponse er = GRPC__REFLECTION__V1__ERROR_RESPONSE__INIT;
  Grpc__Reflection__V1__ServiceResponse svc[16], *svcp[16];
  ProtobufCBinaryData files[r->n_files + 1];
  char seen[r->n_files + 1], msg[300];
  memset(seen, 0, sizeof(seen));
  m.valid_host = q->host;
  m.original_request = (Grpc__Reflection__V1__ServerReflectionRequest *)q;
  int f = -2;
  switch (q->message_request_case) {
  case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
    for (int i = 0; i < r->n_services && i < 16; i++) {
      grpc__reflection__v1__service_response__init(&svc[i]);
      svc[i].name = r->services[i];
      svcp[i] = &svc[i];
    }
    ls.n_service = (size_t)(r->n_services < 16 ? r->n_services : 16);
    ls.service = svcp;
    m.message_response_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
    m.list_services_response = &ls;
    break;
  case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
    f = file_by_name(r, q->file_by_filename);
    snprintf(msg, sizeof(msg), "no file named '%.200s'", q->file_by_filename);
    break;
  case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL:
    f = file_by_symbol(r, q->file_containing_symbol);
    snprintf(msg, sizeof(msg), "no symbol '%.200s'", q->file_containing_symbol);
    break;
  default: snprintf(msg, sizeof(msg), "lmserve's services declare no extensions"); f = -1;
  }
  if (f >= 0) {
    collect(r, f, seen, files, &fdr.n_file_descriptor_proto);
    fdr.file_descriptor_proto = files;
    m.message_response_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
    m.file_descriptor_response = &fdr;
  } else if (f == -1) {
    er.error_code = GRPC_STATUS_NOT_FOUND;
    er.error_message = msg;
    m.message_response_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
    m.error_response = &er;
  }
  grpc_byte_buffer *bb = lm_pack(&m.base);
  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_SEND_MESSAGE;
  op.data.send_message.send_message = bb;
  lm_call_batch(c, &op, 1, LM_TAG_SEND);
  grpc_byte_buffer_destroy(bb);
}

static void recv_next(struct lm_call *c) {
  grpc_op ops[2];
  memset(ops, 0, sizeof(ops));
  size_t n = 0;
  if (!c->started) ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA, c->started = 1;
  ops[n].op = GRPC_OP_RECV_MESSAGE;
  ops[n++].data.recv_message.recv_message = &c->recv_buf;
  lm_call_batch(c, ops, n, LM_TAG_RECV);
}

void lm_reflection_start(struct lm_call *c) {
  recv_next(c);
}

void lm_reflection_event(struct lm_call *c, enum lm_tag_kind k, int ok) {
  if (c->close_done || c->status_sent) return;
  if (k == LM_TAG_SEND) {
    if (ok) recv_next(c);
    return;
  }
  if (k != LM_TAG_RECV || !ok) return;
  if (!c->recv_buf) { /* the client half-closed: done */
    lm_call_reply(c, NULL, GRPC_STATUS_OK, NULL);
    return;
  }
  grpc_slice sl = lm_read_payload(c->recv_buf);
  grpc_byte_buffer_destroy(c->recv_buf);
  c->recv_buf = NULL;
  Grpc__Reflection__V1__ServerReflectionRequest *q =
      grpc__reflection__v1__server_reflection_request__unpack(NULL, GRPC_SLICE_LENGTH(sl),
                                                              GRPC_SLICE_START_PTR(sl));
  grpc_slice_unref(sl);
  if (!q) {
    lm_call_reply(c, NULL, GRPC_STATUS_INVALID_ARGUMENT, "malformed ServerReflectionRequest");
    return;
  }
  respond(c, q);
  grpc__reflection__v1__server_reflection_request__free_unpacked(q, NULL);
}
