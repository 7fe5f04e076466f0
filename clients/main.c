/* main.c - lmserve-client: generate, chat and load against an lmserve
 * gRPC server. */
#include <stdio.h>
#include <string.h>

#include "clients/load.h"
#include "clients/stream.h"

static void usage(void) {
  fputs("usage: lmserve-client COMMAND [--server ADDR] [options]\n"
        "  generate   stream a completion of --prompt (or standard input)\n"
        "  chat       interactive chat: each input line is a user turn\n"
        "  load       load generator: throughput, TTFT and inter-token latency\n"
        "Run lmserve-client COMMAND --help for its options. ADDR defaults to "
        "127.0.0.1:50051.\n",
        stderr);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage();
    return 2;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "generate")) return lmc_cmd_generate(argc - 1, argv + 1);
  if (!strcmp(cmd, "chat")) return lmc_cmd_chat(argc - 1, argv + 1);
  if (!strcmp(cmd, "load")) return lmc_cmd_load(argc - 1, argv + 1);
  if (strcmp(cmd, "--help") && strcmp(cmd, "-h"))
    fprintf(stderr, "lmserve-client: unknown command %s\n", cmd);
  usage();
  return 2;
}
