/*  kim_testhttp.h — plain HTTP requests to a local endpoint, and the
    samples of a Prometheus text scrape, for the tests and the benchmark
    that talk to a broker's or an agent's HTTP side.
*/
#ifndef KIM_TESTHTTP_H_INCLUDED
#define KIM_TESTHTTP_H_INCLUDED

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

//  Sends `size` bytes of `request` to 127.0.0.1:`port` as they are, then
//  reads the answer until the server closes or `wait_ms` pass. Returns the
//  answer's HTTP status (-1 when it has none, or nothing came), with the
//  whole answer (status line, headers, body; NUL-terminated, the caller
//  frees it) in *answer, NULL when nothing could be read.
int
    kim_testhttp_exchange (int port, const char *request, size_t size, int wait_ms,
                           char **answer);

//  A `method` `path` HTTP/1.0 request without a body; returns the whole
//  answer or NULL. Waits at most 10 s. The caller frees it.
char *
    kim_testhttp_request (int port, const char *method, const char *path);

//  The value of the sample `series` (its name with its labels, exactly as
//  served), or -1 when the scrape has no such line.
double
    kim_testhttp_metric (const char *scrape, const char *series);

#ifdef __cplusplus
}
#endif

#endif
