/*  kim_modules.c — the list of broker modules. Add a module here: one line. */
#include <stdio.h>

#include "kim_modules.h"
#include "kim_audit.h"
#include "kim_lifecycle.h"
#include "kim_consent.h"
#include "kim_directory.h"
#include "kim_link.h"

//  Order matters: a message is first checked against the referral's life
//  cycle (is this move allowed at all?), then against the law (may this
//  data pass?), and recorded for audit last.
static kim_module_new_fn *s_modules [] = {
    kim_directory_new,          //  first: a forged signature is refused before anything else
    kim_lifecycle_new,
    kim_consent_new,            //  after the life cycle: policy, consent, subject rights
    kim_link_new,               //  links to peer brokers: the remote directory, forwarding
    kim_audit_new,              //  last: its checkpoints seal what the others wrote
    NULL
};

//  What --check and RELOAD validate of each module's section (and the
//  policy file) without opening the module.
static int (*s_checks []) (const kim_config_t *config, char *error, size_t error_size) = {
    kim_lifecycle_check_config,
    kim_consent_check_config,
    kim_audit_check_config,
    NULL
};

int
kim_modules_check (const kim_config_t *config, char *error, size_t error_size)
{
    for (size_t i = 0; s_checks [i]; i++) {
        int rc = s_checks [i] (config, error, error_size);
        if (rc)
            return rc;
    }
    return 0;
}

int
kim_modules_new (const kim_module_env_t *env, kim_hook_t *hooks, size_t max,
                 char *error, size_t error_size)
{
    size_t count = 0;
    for (size_t i = 0; s_modules [i]; i++) {
        if (count == max) {
            snprintf (error, error_size, "too many broker modules");
            kim_modules_destroy (hooks, count);
            return -1;
        }
        hooks [count] = (kim_hook_t) { 0 };
        if (s_modules [i] (env, &hooks [count], error, error_size) != 0) {
            kim_modules_destroy (hooks, count);
            return -1;
        }
        count++;
    }
    return (int) count;
}

void
kim_modules_destroy (kim_hook_t *hooks, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (hooks [i].destroy)
            hooks [i].destroy (&hooks [i].state);
}
