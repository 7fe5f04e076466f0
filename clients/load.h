/* load.h - lmserve-client load: a load generator on the gRPC C core client
 * API. One thread drives every call on one completion queue: a closed loop
 * of N concurrent streams, or open-loop Poisson arrivals at a rate. */
#ifndef LMC_LOAD_H
#define LMC_LOAD_H

int lmc_cmd_load(int argc, char **argv);

#endif
