/*  kim_testhttp.h — plain HTTP/1.0 requests to a local endpoint, and the
    samples of a Prometheus text scrape, for tests and the benchmark that
    read a broker's metrics.
*/
#ifndef KIM_TESTHTTP_H_INCLUDED
#define KIM_TESTHTTP_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

//  One request to 127.0.0.1:`port`; returns the whole answer (status line,
//  headers, body) or NULL. Waits at most 10 s. The caller frees it.
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
