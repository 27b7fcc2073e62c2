/*  kim_audit.h — the broker's audit module: signed checkpoints in the log,
    and the auditors' QUERY (streamed with flow control, itself logged).

    Registered last in kim_modules.c, so its checkpoints seal what every
    other module wrote in the same tick. Config section `audit`:
        checkpoint_records  a checkpoint at least every N records (10000)
        checkpoint_seconds  ... or every T seconds when records were added (60)
    Keys: <data>/keys/broker.sign_secret (Ed25519, hex, mode 0600; refused
    if others can read it) and broker.sign.pub (hex), made on first start.
    The latest checkpoint is also kept in <data>/audit.checkpoint, so that a
    log whose tail was cut off no longer matches it (kim_log.h); it is
    written once the records it covers are durable, so a power cut never
    makes a whole log look cut short (tests/fault/test_checkpoint_cut.c).
*/
#ifndef KIM_AUDIT_H_INCLUDED
#define KIM_AUDIT_H_INCLUDED

#include "kim_modules.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KIM_AUDIT_RECORDS_DEFAULT   10000
#define KIM_AUDIT_SECONDS_DEFAULT   60
#define KIM_AUDIT_QUERIES_MAX       64          //  open queries, all sessions
#define KIM_AUDIT_QUERY_IDLE_MS     (10 * 60 * 1000)    //  forgotten after this
#define KIM_AUDIT_SCAN_MAX          200000      //  records examined per turn

//  The module constructor (kim_module_new_fn).
int
    kim_audit_new (const kim_module_env_t *env, kim_hook_t *hook, char *error, size_t error_size);
//  Validates the audit section alone (kim-broker --check).
int
    kim_audit_check_config (const kim_config_t *config, char *error, size_t error_size);

//  Loads the broker's Ed25519 signing key from `keys_dir`, making the pair
//  on first start. Returns 0 or -KIM_E_KEY with `error` naming the file.
int
    kim_audit_signing_key (const char *keys_dir, uint8_t secret_key [64],
                           char *error, size_t error_size);

void
    kim_audit_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
