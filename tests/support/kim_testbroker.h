/*  kim_testbroker.h — runs a real kim-broker process for integration tests.

    Each test broker gets a fresh data folder under /tmp, a key pair per
    organisation, a generated ZPL config and an ipc endpoint inside its
    folder (plus a tcp endpoint on a free loopback port). Tests talk to it
    through the real client library; fault tests kill it with SIGKILL and
    start it again on the same folder.
*/
#ifndef KIM_TESTBROKER_H_INCLUDED
#define KIM_TESTBROKER_H_INCLUDED

#include <stdbool.h>
#include <sys/types.h>

#include "kim/kim_client.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _kim_testbroker_t kim_testbroker_t;

//  Makes the folder, keys and config. `orgs` is a NULL-terminated list of
//  "id" or "id:role" (role agency, auditor or operator). `extra` is ZPL text
//  appended under the broker section (lines like "    mailbox_quota = 5\n"),
//  or NULL. Does not start the broker.
kim_testbroker_t *
    kim_testbroker_new (const char *orgs [], const char *extra);

//  Like kim_testbroker_new, which gives the broker a permissive TEST-ONLY
//  policy (every transfer allowed, its legal basis unchecked) so that tests
//  of other features need not register consents. Here `policy_file` becomes
//  the broker's policy/file (e.g. the path of deploy/policy.cfg);
//  NULL writes no policy/file at all (the broker's built-in default deny).
#define KIM_TESTBROKER_TEST_POLICY ((const char *) 1)
kim_testbroker_t *
    kim_testbroker_new_policy (const char *orgs [], const char *extra, const char *policy_file);

//  Like kim_testbroker_new, but the organisations that `keys_from` also has
//  keep its keys (CURVE and signing): the same organisation at another
//  broker, as a copy forwarded between brokers shows it.
kim_testbroker_t *
    kim_testbroker_new_sharing (const char *orgs [], const char *extra,
                                const kim_testbroker_t *keys_from);

//  Like kim_testbroker_new, for a broker called `name` (its broker/name,
//  <type>.<place>) whose key pairs (CURVE and Ed25519) are made now, so
//  that peers can be configured before it first starts (federation).
kim_testbroker_t *
    kim_testbroker_new_named (const char *name, const char *orgs [], const char *extra);

//  Links `count` brokers made by kim_testbroker_new_named in a full mesh:
//  appends to each one's config a peers section naming every other one
//  (its name, tcp endpoint and two public keys). Call once, before start.
int
    kim_testbroker_link (kim_testbroker_t *brokers [], size_t count);

//  The broker's name, its CURVE key pair (Z85) and its Ed25519 public key
//  (Z85, as peers/<name>/sign_key wants it). Live as long as the broker.
const char *
    kim_testbroker_name (kim_testbroker_t *self);
const char *
    kim_testbroker_broker_public (kim_testbroker_t *self);
const char *
    kim_testbroker_broker_secret (kim_testbroker_t *self);
const char *
    kim_testbroker_broker_sign (kim_testbroker_t *self);

//  Path of the broker's config file, for tests that edit it and reload.
const char *
    kim_testbroker_config (kim_testbroker_t *self);

//  Starts kim-broker and waits until it serves. Returns 0 or -1.
int
    kim_testbroker_start (kim_testbroker_t *self);

//  Sends `signal` (SIGTERM for a clean stop, SIGKILL for a crash) and waits
//  for the process. Returns its exit status as waitpid reports it.
int
    kim_testbroker_stop (kim_testbroker_t *self, int signal);

//  Runs kim-broker once more on this broker's config with `option` (such
//  as "--recover") while it is stopped, to its end; its output goes to
//  broker.log. Returns its wait status, or -1.
int
    kim_testbroker_run (kim_testbroker_t *self, const char *option);

//  Pid of the running broker, or 0.
pid_t
    kim_testbroker_pid (kim_testbroker_t *self);

//  A tcp port on 127.0.0.1 that is free now (the kernel's choice), or -1.
int
    kim_testbroker_free_port (void);

//  A client of organisation `org`, connected (HELLO done) with the given
//  receive window; NULL on failure. Use tcp when `tcp` is true, else ipc.
kim_client_t *
    kim_testbroker_client (kim_testbroker_t *self, const char *org, uint32_t window, bool tcp);

//  The client config for `org` (keys, endpoint) for tests that tweak it.
//  Strings point into the test broker and live as long as it does.
kim_client_config_t
    kim_testbroker_client_config (kim_testbroker_t *self, const char *org, uint32_t window, bool tcp);

//  Clients made from now on send and deliver payloads in plaintext
//  (kim_client_config_t.plaintext), for tests that check payload bytes or
//  sizes at the broker. Default: sealed, as in production.
void
    kim_testbroker_plaintext (kim_testbroker_t *self, bool plaintext);

//  Starts the broker from now on with `library` in LD_PRELOAD (NULL: none),
//  as fault tests do to watch its writes (tests/fault/powercut).
void
    kim_testbroker_preload (kim_testbroker_t *self, const char *library);

//  In a child about to exec: puts `library` into LD_PRELOAD (and tells
//  AddressSanitizer not to insist on coming first). For other programs the
//  tests start, such as kim-agent.
void
    kim_testbroker_preload_env (const char *library);

//  An org given as "id:role+sign" (e.g. "jc.a:agency+sign") gets an Ed25519
//  signing key: its sign_key is registered, and its clients sign. This
//  returns the Z85 seed (client side) and public key, or NULL without one.
//  "id:role+private" registers a private carrier (public_body = 0).
const char *
    kim_testbroker_sign_secret (kim_testbroker_t *self, const char *org);
const char *
    kim_testbroker_sign_public (kim_testbroker_t *self, const char *org);

const char *
    kim_testbroker_dir (kim_testbroker_t *self);
const char *
    kim_testbroker_endpoint (kim_testbroker_t *self, bool tcp);

//  Stops the broker if it runs (SIGKILL) and removes the folder.
void
    kim_testbroker_destroy (kim_testbroker_t **self_p);

//  A header with the fields a REFERRAL needs, for `to`.
void
    kim_test_referral (kim_msg_t *msg, const char *to, const char *referral_id);

//  Fails the test with a message (prints file:line and exits 1).
#define KIM_CHECK(cond) \
    do { if (!(cond)) { fprintf (stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
         exit (1); } } while (0)

#ifdef __cplusplus
}
#endif

#endif
