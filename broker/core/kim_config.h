/*  kim_config.h — the broker's settings and organisation registry, read from
    a ZPL file (czmq zconfig) over embedded defaults.

    Every key is validated here, once; a bad value is an error that names the
    key path ("broker/heartbeat_ms: must be 100..600000"). The rest of the
    broker reads plain fields and never sees zconfig. deploy/kim.cfg
    documents every key.
*/
#ifndef KIM_CONFIG_H_INCLUDED
#define KIM_CONFIG_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kim/kim_msg.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KIM_DEFAULT_ENDPOINT    "tcp://127.0.0.1:7470"
#define KIM_DEFAULT_DATA        "./kim-data"
#define KIM_ENDPOINTS_MAX       8
#define KIM_ENDPOINT_MAX        255
#define KIM_NAME_MAX            128

typedef enum {
    KIM_ROLE_AGENCY = 1,        //  sends and answers referrals, reads its own mailbox
    KIM_ROLE_AUDITOR = 2,       //  reads and replays the log; changes nothing
    KIM_ROLE_OPERATOR = 3,      //  manages registry and policy; never reads payloads
    KIM_ROLE_PEER = 4           //  another district's broker: federation commands only
} kim_role_t;

#define KIM_PEERS_MAX           64      //  peers/<name>: linked brokers

//  One registered organisation.
typedef struct {
    char id [KIM_ORG_MAX + 1];          //  <type>.<place>[.<unit>]
    char name [KIM_NAME_MAX + 1];       //  display name
    char type [KIM_CODE_MAX + 1];       //  agency type (jc, ja, aba, ...)
    bool public_body;                   //  public authority (true) or private carrier
    kim_role_t role;
    char public_key [41];               //  CURVE public key, Z85
    char sign_key [41];                 //  Ed25519 signing public key, Z85; "" = none
    bool revoked;                       //  key revoked: refused at ZAP, sessions closed
} kim_org_t;

//  One peer broker (section "peers"). Each peer is also in the registry
//  (orgs) as an entry of role peer with its CURVE key, so that it connects
//  and authenticates like any organisation.
typedef struct {
    char name [KIM_ORG_MAX + 1];                        //  the peer's broker/name
    size_t endpoint_count;                              //  peers/<name>/endpoint
    char endpoints [KIM_ENDPOINTS_MAX][KIM_ENDPOINT_MAX + 1];
    char public_key [41];                               //  its broker CURVE key, Z85
    char sign_key [41];                                 //  its broker Ed25519 key, Z85
} kim_peer_config_t;

typedef struct {
    char name [KIM_ORG_MAX + 1];                        //  broker/name
    char data [KIM_ENDPOINT_MAX + 1];                   //  broker/data: data folder
    size_t endpoint_count;                              //  broker/bind: comma-separated
    char endpoints [KIM_ENDPOINTS_MAX][KIM_ENDPOINT_MAX + 1];
    uint32_t heartbeat_ms;                              //  broker/heartbeat_ms
    uint32_t max_payload;                               //  broker/max_payload
    uint32_t window_max;                                //  broker/window_max
    uint32_t redeliver_ms;                              //  broker/redeliver_ms
    uint32_t batch_max;                                 //  broker/batch_max
    uint64_t mailbox_quota;                             //  broker/mailbox_quota
    uint64_t dedup_window_ms;                           //  broker/dedup_window_s (seconds in the file)
    uint64_t rate_limit;                                //  broker/rate_limit: command units/s per organisation
    uint64_t rate_burst;                                //  broker/rate_burst
    uint64_t clock_skew_ms;                             //  broker/clock_skew_s (seconds in the file)
    uint64_t org_sessions;                              //  broker/sessions_per_org
    uint64_t org_subscriptions;                         //  broker/subscriptions_per_org
    uint64_t org_queries;                               //  broker/queries_per_org: open QUERYs
    uint64_t map_size;                                  //  store/map_size_mb
    uint64_t map_max;                                   //  store/map_max_mb
    bool sync;                                          //  store/sync (0: benchmarks only)
    bool journal;                                       //  store/journal: a journal in front of LMDB
    bool verbose;                                       //  broker/verbose
    size_t org_count;                                   //  orgs/<id>/...
    kim_org_t *orgs;                                    //  owned array; peers last
    size_t peer_count;                                  //  peers/<name>/...
    kim_peer_config_t *peers;                           //  owned array
    char path [KIM_ENDPOINT_MAX + 1];                   //  the file read, "" for defaults
    void *tree;                                         //  zconfig_t of the file, or NULL
    unsigned overridden;                                //  KIM_CONFIG_*: set by a flag, not the file
} kim_config_t;

//  Settings a command-line flag gave (kim-broker --data, --bind, --verbose):
//  a reload of the file keeps them.
#define KIM_CONFIG_DATA     1u
#define KIM_CONFIG_BIND     2u
#define KIM_CONFIG_VERBOSE  4u

//  A reload's config takes the settings that only a restart changes from
//  the running one (name, data, bind, window_max, batch_max, max_payload,
//  the store's sizes, and what flags gave; kim.cfg(5) lists what a reload
//  applies). True when the file had changed one of them.
bool
    kim_config_keep_running (kim_config_t *fresh, const kim_config_t *old);

//  Embedded defaults (no file). Returns NULL on out-of-memory only.
kim_config_t *
    kim_config_new (void);

//  Defaults overlaid with the ZPL file at `path`. Returns NULL with *err and
//  `error` (a message naming the key path) filled in on any invalid value.
kim_config_t *
    kim_config_load (const char *path, char *error, size_t error_size, int *err);

//  Same, from ZPL text (for tests and `kim policy lint`-style tools).
kim_config_t *
    kim_config_parse (const char *text, char *error, size_t error_size, int *err);

void
    kim_config_destroy (kim_config_t **self_p);

//  Registry lookups (linear: registries hold tens to hundreds of orgs and
//  lookups happen at HELLO and when a recipient is first seen, not per byte).
const kim_org_t *
    kim_config_org (const kim_config_t *self, const char *id);
const kim_org_t *
    kim_config_org_by_key (const kim_config_t *self, const char *public_key);
//  The revoked organisation registered with this key, or NULL.
const kim_org_t *
    kim_config_org_by_revoked_key (const kim_config_t *self, const char *public_key);

//  The peer broker called `name`, or NULL.
const kim_peer_config_t *
    kim_config_peer (const kim_config_t *self, const char *name);

const char *
    kim_role_name (kim_role_t role);

//  The parsed ZPL tree (zconfig_t *), for modules that own a section of
//  their own (lifecycle, policy, audit, retention) and validate it
//  themselves, naming the key path in every error. NULL for the embedded
//  defaults. Borrowed: lives as long as the config.
void *
    kim_config_tree (const kim_config_t *self);

//  Reads the whole number at `path` (such as "audit/checkpoint_seconds") of
//  a kim_config_tree into *value when it is there, refusing one outside
//  [min, max] with -KIM_E_CONFIG and an error naming the path. Absent: 0,
//  *value kept. For the modules' sections.
int
    kim_config_number (void *tree, const char *path, uint64_t min, uint64_t max,
                       uint64_t *value, char *error, size_t error_size);

void
    kim_config_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
