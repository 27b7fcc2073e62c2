/*  kim_server_reload.c — the registry re-read while the broker runs
    (SIGHUP, RELOAD): keys added, rotated and revoked take effect at once,
    and the sessions of a revoked, rotated or removed key end now.

    The whole file is checked as a start would check it before anything
    changes; settings that shaped memory or sockets at start keep their
    running values (kim_config_keep_running). Called by the reactor
    (kim_server.c) between turns, never inside a write batch.
*/
#include <czmq.h>

#include "kim_modules.h"
#include "kim_reply.h"
#include "kim_server_int.h"
#include "kim_session.h"

//  Re-reads the registry from the config file: keys added, rotated and
//  revoked take effect at once; a revoked or rotated key's sessions end
//  now. Settings that shape memory or sockets need a restart and keep
//  their running values. Returns 0 and a summary, or -1 with the error.
int
kim_server_reload (kim_server_t *self, char *summary, size_t summary_size)
{
    kim_config_t *old = self->config;
    if (!old->path [0]) {
        snprintf (summary, summary_size, "the broker runs on its embedded defaults: "
                  "no config file to reload");
        return -1;
    }
    int rc = 0;
    kim_config_t *fresh = kim_config_load (old->path, summary, summary_size, &rc);
    //  The modules' sections are not applied by a reload, but a file the
    //  broker would not start with is refused now rather than at the next
    //  start (unknown keys are errors, kim.cfg(5))
    if (fresh && (kim_modules_check (fresh, summary, summary_size)
              ||  kim_metrics_check (fresh, summary, summary_size)))
        kim_config_destroy (&fresh);
    if (!fresh) {
        //  The operator who sent RELOAD may not know which file the broker
        //  reads: the answer names it with the key path (8.13)
        if (strncmp (summary, old->path, strlen (old->path)) != 0) {
            char why [KIM_TEXT_MAX + 1];
            kim_str_copy (why, sizeof why, summary);
            int used = snprintf (summary, summary_size, "%s: ", old->path);
            if (used > 0 && (size_t) used < summary_size)
                kim_str_copy (summary + used, summary_size - (size_t) used, why);
        }
        return -1;
    }
    if (kim_config_keep_running (fresh, old))
        zsys_warning ("reload: changes to name, data, bind, window_max, batch_max, max_payload "
                      "or the store need a restart; they keep their running values");

    size_t added = 0, rotated = 0, revoked = 0, removed = 0, dropped = 0;
    for (size_t i = 0; i < fresh->org_count; i++) {
        const kim_org_t *org = &fresh->orgs [i];
        org_state_t *state = (org_state_t *) zhashx_lookup (self->orgs, org->id);
        if (!state) {
            state = (org_state_t *) calloc (1, sizeof (org_state_t));
            if (state)
                state->flights = (flight_t *) calloc (fresh->window_max, sizeof (flight_t));
            if (!state || !state->flights) {
                free (state);
                kim_config_destroy (&fresh);
                snprintf (summary, summary_size, "out of memory");
                return -1;
            }
            kim_server_org_state_init (self, state, org);
            zhashx_insert (self->orgs, org->id, state);
            added++;
            continue;
        }
        bool key_changed = strcmp (state->org->public_key, org->public_key) != 0;
        bool now_revoked = org->revoked && !state->org->revoked;
        bool role_changed = state->org->role != org->role;
        state->org = org;
        state->removed = false;
        if (now_revoked) {
            revoked++;
            zsys_notice ("server: the key of %s is revoked: its sessions end, and it is "
                         "refused (REVOKED) from now on", org->id);
        }
        else
        if (key_changed) {
            rotated++;
            zsys_notice ("server: %s has a new key: its sessions with the old one end",
                         org->id);
        }
        if (now_revoked || key_changed || role_changed)
            dropped += kim_session_end_all (self, state, now_revoked? "key revoked":
                                        key_changed? "key rotated": "role changed");
    }
    for (org_state_t *state = (org_state_t *) zhashx_first (self->orgs); state;
         state = (org_state_t *) zhashx_next (self->orgs))
        if (!state->removed && !kim_config_org (fresh, state->org->id)) {
            state->removed = true;
            removed++;
            zsys_notice ("server: %s is no longer in the registry: its sessions end",
                         state->org->id);
        }
    //  Sessions of removed orgs end after the iteration above (dropping
    //  edits the session table, not the org table).
    for (org_state_t *state = (org_state_t *) zhashx_first (self->orgs); state;
         state = (org_state_t *) zhashx_next (self->orgs))
        if (state->removed)
            dropped += kim_session_end_all (self, state, "removed from the registry");
    //  Modules and org states may still point into the old config.
    zlistx_add_end (self->retired, old);
    self->config = fresh;
    snprintf (summary, summary_size, "%zu organisations: %zu added, %zu keys rotated, "
              "%zu revoked, %zu removed; %zu sessions ended",
              fresh->org_count, added, rotated, revoked, removed, dropped);
    zsys_notice ("reload of %s: %s", fresh->path, summary);
    return 0;
}

void
kim_server_reload_command (kim_server_t *self, const uint8_t *rid, size_t rid_size, const char *by)
{
    char summary [KIM_TEXT_MAX + 1];
    zsys_notice ("reload asked by %s", by);
    if (kim_server_reload (self, summary, sizeof summary)) {
        zsys_error ("reload refused, the registry is unchanged: %s", summary);
        kim_reply_reject (self, rid, rid_size, KIM_E_RELOAD_FAILED, NULL, NULL, "%s", summary);
        return;
    }
    kim_cmd_t *reply = &self->reply;
    kim_cmd_init (reply, KIM_CMD_RELOADED);
    reply->count = self->config->org_count;
    kim_str_copy (reply->text, sizeof reply->text, summary);
    kim_reply_cmd (self, rid, rid_size, reply);
}
