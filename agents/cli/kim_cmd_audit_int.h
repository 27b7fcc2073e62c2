/*  kim_cmd_audit_int.h — what the files of `kim audit` share. The command
    is one module in three files: kim_cmd_audit.c (its options, its output,
    verify, replay, export and case), kim_cmd_audit_source.c (where records
    come from: the store, the broker, an export) and kim_cmd_audit_trace.c
    (one message across several brokers' logs).
*/
#ifndef KIM_CMD_AUDIT_INT_H_INCLUDED
#define KIM_CMD_AUDIT_INT_H_INCLUDED

#include "kim/kim_log.h"
#include "kim_cli.h"

typedef struct _kim_audit_trace_t kim_audit_trace_t;

typedef struct {
    const char *cmd;
    const char *action;
    const char *case_id;
    const char *data;
    const char *sign_key;               //  the first --sign-key
    const char *sign_keys [KIM_LOG_VERIFY_KEYS];
    size_t sign_key_count;
    const char *from_export;
    kim_cli_conn_t conn;
    kim_log_filter_t filter;
    uint32_t window;
    kim_buf_t out;
    bool out_failed;
    //  Outcome of a source: the checkpoint held outside the log, if any
    bool have_outside;
    kim_log_checkpoint_t outside;
    uint8_t outside_hash [KIM_HASH_SIZE];
    bool have_outside_hash;
    //  An export: the first record whose `body` is not what its `raw` says
    uint64_t body_differs;
    //  Online: the broker's name from its WELCOME
    char welcome_broker [KIM_ORG_MAX + 1];
    //  `trace`: the message followed and the logs it is looked for in
    kim_audit_trace_t *trace;
} kim_audit_t;

typedef int (kim_audit_record_fn) (kim_audit_t *self, const kim_log_record_t *record);

//  kim_cmd_audit.c: output into one buffer, flushed in large writes
int
    kim_audit_i_emit (kim_audit_t *self, const char *format, ...)
    __attribute__ ((format (printf, 2, 3)));
void
    kim_audit_i_flush (kim_audit_t *self);
//  The keys after the first --sign-key, trusted by `verify`. Returns 0, or
//  -1 after saying which file is no key.
int
    kim_audit_i_trust_more_keys (kim_audit_t *self, kim_log_verify_t *verify,
                                 const char *const *keys, size_t count, const char *where);
//  A time as "YYYY-MM-DD HH:MM:SS" (UTC).
void
    kim_audit_i_time_text (uint64_t time_ms, char *out, size_t size);

//  kim_cmd_audit_source.c: every record of the source the options name (an
//  export, a data folder, or the broker online), in order, to `fn`.
int
    kim_audit_i_each (kim_audit_t *self, kim_audit_record_fn *fn);

//  kim_cmd_audit_trace.c: `trace`. kim_audit_trace_option takes an option
//  of its (a source, or a key option of one): 1 taken, 0 not one of its,
//  -1 after a usage error.
kim_audit_trace_t *
    kim_audit_trace_new (void);
void
    kim_audit_trace_destroy (kim_audit_trace_t **self_p);
int
    kim_audit_trace_option (kim_audit_trace_t *self, kim_audit_t *audit, kim_cli_args_t *args);
size_t
    kim_audit_trace_source_count (kim_audit_trace_t *self);
int
    kim_audit_trace_run (kim_audit_trace_t *self, kim_audit_t *audit, const char *msg_id);

#endif
