/*  kim_agenttest.h — runs real kim-agent processes beside a test broker and
    talks HTTP to them over real sockets, for the agent's tests.

    Each agent gets a folder with its key file, token file, config and
    store; it binds the kernel's choice of port on 127.0.0.1 and writes it
    to a port file, which the harness reads after each start. The HTTP
    client is a plain socket writer and reader, so tests can also send
    bytes no well-behaved client would.
*/
#ifndef KIM_AGENTTEST_H_INCLUDED
#define KIM_AGENTTEST_H_INCLUDED

#include <jansson.h>

#include "kim_testbroker.h"

#define KIM_AGENTTEST_TOKEN "test-token-0123456789abcdef0123456789abcdef"

typedef struct {
    char dir [128];
    char config [160];
    char port_file [160];
    char log [160];
    char org [KIM_ORG_MAX + 1];
    pid_t pid;
    int port;
    const char *env;            //  "NAME=VALUE" for the next start only, or NULL
    const char *preload;        //  LD_PRELOAD for every start (tests/fault/powercut), or NULL
    bool no_wait;               //  start returns at once (an API the harness cannot speak)
} kim_agenttest_t;

//  Writes the folder, key, tokens and config for `org` of the test broker.
//  `extra` is ZPL appended to the config, or NULL.
int
    kim_agenttest_init (kim_agenttest_t *self, kim_testbroker_t *broker, const char *org,
                        const char *extra);

//  Starts kim-agent and waits until GET /v1/status answers (and, when
//  `connected`, says so). Returns 0 or -1. self->env is put into the
//  agent's environment, then cleared.
int
    kim_agenttest_start (kim_agenttest_t *self, bool connected);

//  Waits for the agent to end by itself; returns its wait status.
int
    kim_agenttest_wait (kim_agenttest_t *self);

//  Sends `signal` and waits for the process; returns its wait status.
int
    kim_agenttest_stop (kim_agenttest_t *self, int signal);

//  Removes the folder (unless KIM_TEST_KEEP is set).
void
    kim_agenttest_cleanup (kim_agenttest_t *self);

//  One HTTP request to 127.0.0.1:port. `token` NULL sends no Authorization.
//  Returns the status code (or -1 when no answer came), with the body in
//  *body (malloc'ed, NUL-terminated) when body is not NULL.
int
    kim_agenttest_http (int port, const char *method, const char *path, const char *token,
                        const char *content, char **body);

//  Sends raw bytes and reads the answer; returns the status or -1.
int
    kim_agenttest_raw (int port, const char *request, size_t size, char **body);

//  The request with the test token, body parsed as JSON (NULL if not JSON).
int
    kim_agenttest_call (kim_agenttest_t *self, const char *method, const char *path,
                        const char *content, json_t **json);

//  Polls GET `path` until its `key` is the string `want`, for up to 30 s.
//  Returns the JSON (the caller decrefs it), or NULL on time-out.
json_t *
    kim_agenttest_wait_for (kim_agenttest_t *self, const char *path, const char *key,
                            const char *want);

#endif
