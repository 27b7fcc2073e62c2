/*  kim_directory.c — publishes the registry's public keys (DIRECTORY) and
    enforces sender signatures (hdr.sig) for organisations that registered a
    signing key.

    Why here and not in the core: both are pure functions of the registry the
    server holds now (kim_ctx_config changes on SIGHUP / RELOAD), and neither
    keeps state next to the log. The signature check runs first among the
    modules (kim_modules.c): a message whose author is not proven is refused
    before the life cycle or the policy look at it.

    Signature policy (PROTOCOL.md 13.4):
    - org with `sign_key`: every SEND must carry `sig`, and it must verify.
    - org without `sign_key`: a SEND carrying `sig` is refused too, since the
      log would keep a signature nobody can check, which misleads auditors.
*/
#include <string.h>

#include <czmq.h>
#include <sodium.h>

#include "kim_directory.h"

typedef struct {
    kim_cmd_t reply;                    //  big: kept here, not on the stack
    kim_dir_entry_t *entries;           //  KIM_DIRECTORY_MAX
    kim_buf_t buf;
} s_directory_t;

//  --------------------------------------------------------------------------
//  Signatures

int
kim_directory_signed_bytes (const kim_msg_t *msg, uint8_t out [2 * KIM_HASH_SIZE])
{
    if (!msg || !msg->has_payload_hash)
        return -KIM_E_ARGS;
    kim_msg_t *copy = (kim_msg_t *) malloc (sizeof *copy);
    if (!copy)
        return -KIM_E_NOMEM;
    *copy = *msg;
    copy->has_sig = false;
    memset (copy->sig, 0, sizeof copy->sig);
    copy->rule [0] = 0;                 //  set by the policy after the sender signed
    kim_buf_t buf;
    kim_buf_init (&buf);
    int rc = kim_msg_encode (copy, &buf);
    if (rc == 0) {
        crypto_generichash (out, KIM_HASH_SIZE, buf.data, buf.size, NULL, 0);
        memcpy (out + KIM_HASH_SIZE, msg->payload_hash, KIM_HASH_SIZE);
    }
    kim_buf_free (&buf);
    free (copy);
    return rc;
}

int
kim_directory_verify (const kim_msg_t *msg, const char *sign_key)
{
    uint8_t key [32], signed_bytes [2 * KIM_HASH_SIZE];
    if (!msg || !msg->has_sig || !sign_key || strlen (sign_key) != 40
    ||  !zmq_z85_decode (key, sign_key))
        return -KIM_E_BAD_SIGNATURE;
    int rc = kim_directory_signed_bytes (msg, signed_bytes);
    if (rc)
        return rc == -KIM_E_NOMEM? rc: -KIM_E_BAD_SIGNATURE;
    if (crypto_sign_verify_detached (msg->sig, signed_bytes, sizeof signed_bytes, key) != 0)
        return -KIM_E_BAD_SIGNATURE;
    return 0;
}

static int
s_check (void *state, kim_ctx_t *ctx, kim_route_t *route, kim_verdict_t *verdict)
{
    const kim_org_t *sender = route->sender;
    const kim_msg_t *msg = route->msg;
    const char *why = NULL;
    if (!sender->sign_key [0]) {
        if (msg->has_sig)
            why = "hdr.sig given, but no signing key is registered for this organisation "
                  "(orgs/<id>/sign_key): an unverifiable signature is not logged";
    }
    else
    if (!msg->has_sig)
        why = "this organisation has a registered signing key: every SEND must carry hdr.sig";
    else {
        int rc = kim_directory_verify (msg, sender->sign_key);
        if (rc == -KIM_E_NOMEM)
            return rc;
        if (rc)
            why = "hdr.sig does not verify with the registered signing key over the header "
                  "(sender, payload_len, payload_hash and created_at set by the sender) "
                  "and payload_hash";
    }
    if (!why)
        return 0;
    zsys_warning ("directory: refused %s from %s: %s", msg->msg_id, sender->id, why);
    verdict->code = KIM_E_BAD_SIGNATURE;
    snprintf (verdict->path, sizeof verdict->path, "hdr.sig");
    kim_str_copy (verdict->text, sizeof verdict->text, why);
    return -KIM_E_BAD_SIGNATURE;
}

//  --------------------------------------------------------------------------
//  DIRECTORY

static void
s_entry_from_org (kim_dir_entry_t *entry, const kim_org_t *org)
{
    memset (entry, 0, sizeof *entry);
    kim_str_copy (entry->id, sizeof entry->id, org->id);
    kim_str_copy (entry->name, sizeof entry->name, org->name);
    kim_str_copy (entry->type, sizeof entry->type, org->type);
    entry->public_body = org->public_body;
    kim_str_copy (entry->public_key, sizeof entry->public_key, org->public_key);
    kim_str_copy (entry->sign_key, sizeof entry->sign_key, org->sign_key);
}

//  Agencies are the organisations one seals to; revoked keys are left out
//  so nobody seals to a key that no longer belongs to its organisation.
static bool
s_listed (const kim_org_t *org)
{
    return !org->revoked && org->role == KIM_ROLE_AGENCY;
}

static int
s_command (void *state, kim_ctx_t *ctx, const kim_peer_t *peer, const kim_cmd_t *cmd,
           kim_verdict_t *verdict)
{
    if (cmd->id != KIM_CMD_DIRECTORY)
        return -KIM_E_UNKNOWN_CMD;
    s_directory_t *self = (s_directory_t *) state;
    const kim_config_t *config = kim_ctx_config (ctx);
    kim_cmd_t *reply = &self->reply;
    kim_cmd_init (reply, KIM_CMD_DIRECTORY_REPLY);
    size_t matched = 0, count = 0;
    for (size_t i = 0; i < config->org_count; i++) {
        const kim_org_t *org = &config->orgs [i];
        if (!s_listed (org) || (cmd->org [0] && strcmp (cmd->org, org->id) != 0))
            continue;
        matched++;
        if (count < KIM_DIRECTORY_MAX)
            s_entry_from_org (&self->entries [count++], org);
    }
    //  Then the organisations of other districts, from their brokers'
    //  signed directories (kim_link.c); `home` names their broker when
    //  the client asked (clients from before federation do not know it).
    kim_org_t remote;
    char home [KIM_ORG_MAX + 1];
    for (size_t i = 0; kim_ctx_remote_at (ctx, i, &remote, home); i++) {
        if (cmd->org [0] && strcmp (cmd->org, remote.id) != 0)
            continue;
        matched++;
        if (count < KIM_DIRECTORY_MAX) {
            kim_dir_entry_t *entry = &self->entries [count++];
            s_entry_from_org (entry, &remote);
            if (cmd->homes)
                kim_str_copy (entry->home, sizeof entry->home, home);
        }
    }
    if (matched > count)
        zsys_warning ("directory: %zu organisations registered, a DIRECTORY_REPLY lists %d; "
                      "clients look the others up by org", matched, KIM_DIRECTORY_MAX);
    reply->count = matched;
    reply->dir = self->entries;
    reply->dir_count = count;
    kim_ctx_send (ctx, peer->rid, peer->rid_size, reply);
    return 0;
}

static void
s_destroy (void **state_p)
{
    s_directory_t *self = (s_directory_t *) *state_p;
    if (self) {
        free (self->entries);
        kim_buf_free (&self->buf);
        free (self);
        *state_p = NULL;
    }
}

int
kim_directory_new (const kim_module_env_t *env, kim_hook_t *hook, char *error, size_t error_size)
{
    s_directory_t *self = (s_directory_t *) calloc (1, sizeof *self);
    if (self)
        self->entries = (kim_dir_entry_t *) calloc (KIM_DIRECTORY_MAX, sizeof (kim_dir_entry_t));
    if (!self || !self->entries || sodium_init () < 0) {
        if (self)
            free (self->entries);
        free (self);
        snprintf (error, error_size, "directory: out of memory");
        return -KIM_E_NOMEM;
    }
    kim_buf_init (&self->buf);
    size_t signing = 0;
    for (size_t i = 0; i < env->config->org_count; i++)
        if (env->config->orgs [i].sign_key [0])
            signing++;
    zsys_info ("directory: %zu organisations, %zu with a signing key (their SENDs must be signed)",
               env->config->org_count, signing);
    hook->name = "directory";
    hook->command = s_command;
    hook->check = s_check;
    hook->destroy = s_destroy;
    hook->state = self;
    return 0;
}

//  --------------------------------------------------------------------------
//  Self-test

#undef NDEBUG
#include <assert.h>

void
kim_directory_test (bool verbose)
{
    assert (sodium_init () >= 0);
    //  A signature over a header verifies, and any change breaks it.
    uint8_t pk [crypto_sign_PUBLICKEYBYTES], sk [crypto_sign_SECRETKEYBYTES];
    crypto_sign_keypair (pk, sk);
    char pk_txt [41];
    assert (zmq_z85_encode (pk_txt, pk, 32));

    kim_msg_t *msg = (kim_msg_t *) malloc (sizeof *msg);
    assert (msg);
    kim_msg_init (msg);
    msg->type = KIM_TYPE_REFERRAL;
    strcpy (msg->msg_id, "m-1");
    msg->created_at = 1718000000000;
    strcpy (msg->sender, "jc.rheine");
    strcpy (msg->recipient, "kim.rheine");
    strcpy (msg->subject, "p-1");
    strcpy (msg->purpose, "integration");
    msg->basis = KIM_BASIS_STATUTE;
    strcpy (msg->citation, "SGB II 16");
    msg->payload_len = 3;
    msg->has_payload_hash = true;
    crypto_generichash (msg->payload_hash, KIM_HASH_SIZE, (const uint8_t *) "abc", 3, NULL, 0);
    uint8_t bytes [2 * KIM_HASH_SIZE];
    assert (kim_directory_signed_bytes (msg, bytes) == 0);
    crypto_sign_detached (msg->sig, NULL, bytes, sizeof bytes, sk);
    msg->has_sig = true;
    assert (kim_directory_verify (msg, pk_txt) == 0);
    strcpy (msg->rule, "r-1");          //  broker-set: not signed
    assert (kim_directory_verify (msg, pk_txt) == 0);
    msg->payload_hash [0] ^= 1;
    assert (kim_directory_verify (msg, pk_txt) == -KIM_E_BAD_SIGNATURE);
    msg->payload_hash [0] ^= 1;
    strcpy (msg->recipient, "kim.emsdetten");
    assert (kim_directory_verify (msg, pk_txt) == -KIM_E_BAD_SIGNATURE);
    assert (kim_directory_verify (msg, "short") == -KIM_E_BAD_SIGNATURE);
    free (msg);

    //  A DIRECTORY_REPLY round trip through the codec, entries included.
    kim_dir_entry_t *entries = (kim_dir_entry_t *) calloc (2 * KIM_DIRECTORY_MAX, sizeof *entries);
    kim_cmd_t *cmd = (kim_cmd_t *) malloc (2 * sizeof *cmd);
    assert (entries && cmd);
    for (size_t i = 0; i < KIM_DIRECTORY_MAX; i++) {
        kim_dir_entry_t *entry = &entries [i];
        snprintf (entry->id, sizeof entry->id, "jc.place%zu", i);
        memset (entry->name, 'n', KIM_DIR_NAME_MAX);      //  the longest name fits
        memset (entry->type, 't', KIM_CODE_MAX);
        entry->public_body = i % 2;
        strcpy (entry->public_key, pk_txt);
        if (i % 3 == 0)
            strcpy (entry->sign_key, pk_txt);
    }
    kim_cmd_init (&cmd [0], KIM_CMD_DIRECTORY_REPLY);
    cmd [0].count = KIM_DIRECTORY_MAX;
    cmd [0].dir = entries;
    cmd [0].dir_count = KIM_DIRECTORY_MAX;
    kim_buf_t buf;
    kim_buf_init (&buf);
    assert (kim_cmd_encode (&cmd [0], &buf) == 0);
    if (verbose)
        printf ("  DIRECTORY_REPLY of %d entries: %zu bytes\n", KIM_DIRECTORY_MAX, buf.size);
    kim_decode_error_t err;
    assert (kim_cmd_decode (&cmd [1], buf.data, buf.size, &err) == 0);
    assert (cmd [1].dir_count == KIM_DIRECTORY_MAX && cmd [1].dir == NULL);
    kim_dir_entry_t *back = entries + KIM_DIRECTORY_MAX;
    assert (kim_cmd_decode_directory (&cmd [1], buf.data, buf.size, back, KIM_DIRECTORY_MAX, &err) == 0);
    assert (cmd [1].dir == back);
    assert (memcmp (entries, back, KIM_DIRECTORY_MAX * sizeof *entries) == 0);
    assert (kim_cmd_decode_directory (&cmd [1], buf.data, buf.size, back, 3, &err) == -KIM_E_TOO_MANY);

    //  Bad entries are refused on both sides, with the entry's path.
    strcpy (entries [5].public_key, "too-short");
    assert (kim_cmd_encode (&cmd [0], &buf) == -KIM_E_BAD_VALUE);
    strcpy (entries [5].public_key, pk_txt);
    entries [7].id [0] = 0;
    assert (kim_cmd_encode (&cmd [0], &buf) == -KIM_E_MISSING_FIELD);
    cmd [0].dir_count = KIM_DIRECTORY_MAX + 1;
    assert (kim_cmd_encode (&cmd [0], &buf) == -KIM_E_TOO_MANY);

    const char *bad [] = {
        "{\"cmd\":\"DIRECTORY_REPLY\",\"count\":1,\"orgs\":[{\"id\":\"jc.a\"}]}",
        "{\"cmd\":\"DIRECTORY_REPLY\",\"count\":1,\"orgs\":[7]}",
        "{\"cmd\":\"DIRECTORY_REPLY\",\"count\":1,\"orgs\":{}}",
        "{\"cmd\":\"DIRECTORY_REPLY\",\"count\":1}",
        "{\"cmd\":\"DIRECTORY\",\"org\":\"NOT AN ORG\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad [0]; i++) {
        kim_buf_reset (&buf);
        assert (kim_json_to_msgpack (bad [i], strlen (bad [i]), &buf) == 0);
        int rc = kim_cmd_decode (&cmd [1], buf.data, buf.size, &err);
        if (verbose)
            printf ("  %s -> %s at '%s'\n", bad [i], kim_errname (rc), err.path);
        assert (rc < 0);
    }
    kim_buf_reset (&buf);
    const char *one = "{\"cmd\":\"DIRECTORY_REPLY\",\"count\":1,\"orgs\":[{\"id\":\"jc.a\"}]}";
    assert (kim_json_to_msgpack (one, strlen (one), &buf) == 0);
    assert (kim_cmd_decode (&cmd [1], buf.data, buf.size, &err) == -KIM_E_MISSING_FIELD);
    assert (strcmp (err.path, "orgs[0].name") == 0);
    kim_buf_free (&buf);
    free (cmd);
    free (entries);
}
