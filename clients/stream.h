/* stream.h - lmserve-client generate and chat: one streamed request at a
 * time, text printed as it arrives. */
#ifndef LMC_STREAM_H
#define LMC_STREAM_H

int lmc_cmd_generate(int argc, char **argv);
int lmc_cmd_chat(int argc, char **argv);

#endif
