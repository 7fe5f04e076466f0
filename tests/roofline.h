/* roofline.h - the machine's limits for the benchmark programs; the probes
 * live in the engine library (engine/roofline.h) so `lmserve bench` can
 * measure them too. */
#ifndef LM_TESTS_ROOFLINE_H
#define LM_TESTS_ROOFLINE_H

#include "engine/roofline.h"

#endif
