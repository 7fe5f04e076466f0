/* descriptor_set.h - the serialized google.protobuf.FileDescriptorSet of
 * lmserve.v1 and the standard services the server exposes (health,
 * reflection), with every import, generated at build time by protoc. */
#ifndef LM_DESCRIPTOR_SET_H
#define LM_DESCRIPTOR_SET_H

#include <stddef.h>

extern const unsigned char lm_descriptor_set[];
extern const size_t lm_descriptor_set_len;

#endif
