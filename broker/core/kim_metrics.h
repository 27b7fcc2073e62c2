/*  kim_metrics.h — the broker's figures as a Prometheus text endpoint.

    Off by default (section `metrics` of the config: enabled, listen, port,
    interval_ms). When on, a timer in the server's own loop renders every
    figure into a text buffer every interval_ms and hands it over under a
    mutex; libmicrohttpd's thread serves the latest buffer on GET /metrics
    and never touches broker state. Without libmicrohttpd at build time
    (KIM_HAVE_MICROHTTPD unset), enabled = 1 is a configuration error.

    The server keeps the counters and histograms it feeds on its hot path in
    its own struct (kim_server_int.h); this module defines their types and
    the calls that update them, so that the hot path costs an increment.
*/
#ifndef KIM_METRICS_H_INCLUDED
#define KIM_METRICS_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kim_config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _kim_metrics_t kim_metrics_t;
typedef struct _kim_server_t kim_server_t;

//  A cumulative histogram over fixed bounds, as Prometheus wants it.
#define KIM_HISTOGRAM_BUCKETS 14
typedef struct {
    uint64_t buckets [KIM_HISTOGRAM_BUCKETS + 1];   //  the last one: above every bound
    uint64_t count;
    double sum;
} kim_histogram_t;

//  Refusals are counted per wire code (kim_error.h), 0..KIM_METRICS_CODES-1.
#define KIM_METRICS_CODES 1000

//  One commit (and its sync) took `usec` microseconds.
void
    kim_metrics_observe_commit (kim_histogram_t *histogram, int64_t usec);

//  A write batch held `items` commands.
void
    kim_metrics_observe_batch (kim_histogram_t *histogram, size_t items);

//  A REJECT with wire `code` was sent.
void
    kim_metrics_count_refusal (uint64_t refused [KIM_METRICS_CODES], int code);

//  Validates the `metrics` section (unknown keys, ranges, and enabled = 1
//  in a build without libmicrohttpd). Returns 0 or -1 with `error` filled.
int
    kim_metrics_check (const kim_config_t *config, char *error, size_t error_size);

//  Starts the endpoint for a server that is not yet running, when the
//  config enables it; *self_p stays NULL when it is off. Returns 0, or -1
//  with `error` filled (a bad section, a port in use).
int
    kim_metrics_new (kim_server_t *server, kim_metrics_t **self_p, char *error,
                     size_t error_size);

//  Stops the HTTP thread. Call after the server's loop ended, before the
//  server is destroyed.
void
    kim_metrics_destroy (kim_metrics_t **self_p);

//  Renders the figures now (the timer's work), for the self-test and tests.
//  Returns the text's size, or -1. The text lives until the next render.
int
    kim_metrics_render (kim_metrics_t *self, const char **text);

#ifdef __cplusplus
}
#endif

#endif
