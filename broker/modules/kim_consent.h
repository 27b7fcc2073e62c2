/*  kim_consent.h — lawful by default: the broker module that checks every
    transfer against the policy (include/kim/kim_policy.h), keeps the
    consent registry, and serves the data subject's rights.

    Owns (in the store's CONSENT database, keys prefixed by one byte, all
    written in the batch's transaction next to the log append):
        'C' consent_id               -> kim_consent_t (the registered consent)
        'R' consent_id NUL org       -> seq (u64 BE): org received data under it
        'S' subject NUL seq (u64 BE) -> empty: a checked transfer about subject
        'E' valid_until (u64 BE) consent_id -> empty: a consent still to lapse
        'M' "expiry_index"           -> empty: the 'E' entries were built for
                                        the consents registered before them

    Why here and not in the life cycle: the life cycle asks "may this move
    happen in this referral?", this module asks "may this data pass to that
    office, and on what legal basis?" (brief §5 "Lawful by default").

    Config: `policy/file` in the broker's config names the policy file
    (deploy/policy.cfg is the shipped default). Without it every checked
    transfer is denied (default deny) and the broker says so at start.
*/
#ifndef KIM_CONSENT_H_INCLUDED
#define KIM_CONSENT_H_INCLUDED

#include "kim_hook.h"
#include "kim/kim_policy.h"
#include "kim_modules.h"

#ifdef __cplusplus
extern "C" {
#endif

//  The module constructor (kim_module_new_fn). Registered after the life
//  cycle in kim_modules.c.
int
    kim_consent_new (const kim_module_env_t *env, kim_hook_t *hook, char *error, size_t error_size);

//  Checks the config's policy section and the policy file it names as a
//  start would, keeping nothing: for --check and RELOAD (which does not
//  apply a policy, but refuses a file the broker would not start with).
//  Returns 0 or -KIM_E_CONFIG with `error` naming file, line and key.
int
    kim_consent_check_config (const kim_config_t *config, char *error, size_t error_size);

//  Opens the policy the config names (policy/file, relative to the config
//  file's folder; the built-in default deny without one), as the module
//  does at start: `kim-broker --check` uses it to validate a policy file
//  before a broker runs with it. Fills `path` with the file used ("" for
//  none). Returns NULL with `error` naming file, line and key.
kim_policy_t *
    kim_consent_policy_open (const kim_config_t *config, char *path, size_t path_size,
                             char *error, size_t error_size);

//  The recipients of the registered consent `id`, inside a write batch:
//  copies up to KIM_LIST_MAX ids into `recipients` and returns how many,
//  or -KIM_E_NOT_FOUND / another -KIM_E_*. For links (kim_link.c), which
//  send a consent's revocation to the districts of its recipients.
int
    kim_consent_recipients (kim_ctx_t *ctx, const char *id,
                            char recipients [KIM_LIST_MAX][KIM_ORG_MAX + 1]);

void
    kim_consent_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
