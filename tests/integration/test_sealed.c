/*  test_sealed.c — issue 7: the key directory, sealed payloads (the broker
    stores ciphertext only) and sender signatures (required, verified,
    refused, kept in the log), over a real broker and its real LMDB file.
*/
#include "kim_itest.h"
#include "kim_store.h"
#include "kim_directory.h"

#define SENDER      "jc.rheine"
#define RECIPIENT   "kim.rheine"
#define SIGNER      "ja.rheine"         //  registered sign_key
#define AUDITOR     "aud.nrw"
#define OPERATOR    "ops.nrw"

//  Inserts `line` after the line of the broker's config that contains `needle`.
static void
s_config_insert (kim_testbroker_t *broker, const char *needle, const char *line)
{
    char path [PATH_MAX];
    snprintf (path, sizeof path, "%s/kim.cfg", kim_testbroker_dir (broker));
    FILE *file = fopen (path, "r");
    KIM_CHECK (file);
    static char text [65536], edited [65536 + 512];
    size_t size = fread (text, 1, sizeof text - 1, file);
    fclose (file);
    text [size] = 0;
    char *at = strstr (text, needle);
    KIM_CHECK (at);
    char *eol = strchr (at, '\n');
    KIM_CHECK (eol);
    snprintf (edited, sizeof edited, "%.*s%s%s", (int) (eol + 1 - text), text, line, eol + 1);
    file = fopen (path, "w");
    KIM_CHECK (file && fputs (edited, file) >= 0 && fclose (file) == 0);
}

//  An operator's RELOAD; must succeed.
static void
s_reload (kim_testbroker_t *broker)
{
    kim_client_t *ops = kim_testbroker_client (broker, OPERATOR, 0, false);
    KIM_CHECK (ops);
    kim_cmd_t *cmd = (kim_cmd_t *) malloc (2 * sizeof (kim_cmd_t));
    KIM_CHECK (cmd);
    kim_cmd_init (cmd, KIM_CMD_RELOAD);
    ITEST_RC (kim_client_request (ops, cmd, cmd + 1, 5000), 0);
    KIM_CHECK (cmd [1].id == KIM_CMD_RELOADED);
    free (cmd);
    kim_client_destroy (&ops);
}

static const kim_dir_entry_t *
s_find (const kim_dir_entry_t *entries, size_t count, const char *org)
{
    for (size_t i = 0; i < count; i++)
        if (streq (entries [i].id, org))
            return &entries [i];
    return NULL;
}

static kim_client_t *
s_client (kim_testbroker_t *broker, const char *org, uint32_t window, bool plaintext,
          const char *sign_secret)
{
    kim_client_config_t config = kim_testbroker_client_config (broker, org, window, false);
    config.plaintext = plaintext;
    config.sign_secret_key = sign_secret;
    int err = 0;
    kim_client_t *client = kim_client_new (&config, &err);
    KIM_CHECK (client);
    return client;
}

//  Sends a REFERRAL with `text` as payload; returns the send's result.
static int
s_send_text (kim_client_t *client, const char *to, const char *msg_id, const char *text,
             uint64_t *seq)
{
    kim_msg_t msg;
    s_itest_msg (&msg, to, msg_id, msg_id);
    bool dup = false;
    uint64_t ignored;
    return kim_client_send (client, &msg, text, strlen (text), seq? seq: &ignored, &dup, 10000);
}

int
main (void)
{
    KIM_CHECK (sodium_init () >= 0);
    const char *orgs [] = { SENDER, RECIPIENT, SIGNER ":agency+sign", AUDITOR ":auditor",
                            OPERATOR ":operator", NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs, NULL);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_client_t *sender = kim_testbroker_client (broker, SENDER, 0, false);
    kim_client_t *recipient = kim_testbroker_client (broker, RECIPIENT, 16, false);
    KIM_CHECK (sender && recipient);

    //  1. The directory: agencies with their keys, sign_key where registered.
    const kim_dir_entry_t *entries;
    size_t count = 0;
    ITEST_RC (kim_client_directory (sender, NULL, &entries, &count, 5000), 0);
    KIM_CHECK (count == 3);
    const kim_dir_entry_t *entry = s_find (entries, count, RECIPIENT);
    kim_client_config_t rconfig = kim_testbroker_client_config (broker, RECIPIENT, 0, false);
    KIM_CHECK (entry && streq (entry->public_key, rconfig.public_key));
    KIM_CHECK (streq (entry->type, "kim") && entry->sign_key [0] == 0);
    entry = s_find (entries, count, SIGNER);
    KIM_CHECK (entry && streq (entry->sign_key, kim_testbroker_sign_public (broker, SIGNER)));
    KIM_CHECK (!s_find (entries, count, AUDITOR));      //  nobody seals to an auditor
    ITEST_RC (kim_client_directory (sender, RECIPIENT, &entries, &count, 5000), 0);
    KIM_CHECK (count == 1 && streq (entries [0].id, RECIPIENT));
    ITEST_RC (kim_client_directory (sender, "jc.nowhere", &entries, &count, 5000), 0);
    KIM_CHECK (count == 0);

    //  2. Sealed round trip: the recipient reads the plaintext...
    const char *secret = "Frau M., geb. 1980, braucht Beratung zu Schulden (Art. 9)";
    uint64_t sealed_seq = 0;
    ITEST_RC (s_send_text (sender, RECIPIENT, "sealed-1", secret, &sealed_seq), 0);
    kim_event_t event;
    ITEST_RC (ITEST_DELIVER (recipient, &event, 10000), 0);
    KIM_CHECK (event.seq == sealed_seq && !event.sealed_error);
    KIM_CHECK (event.payload_size == strlen (secret));
    KIM_CHECK (memcmp (event.payload, secret, strlen (secret)) == 0);
    //  ...while the header says what went over the wire: the sealed size.
    KIM_CHECK (event.msg.payload_len == strlen (secret) + crypto_box_SEALBYTES);
    ITEST_RC (kim_client_ack (recipient, event.seq), 0);

    //  A payload that is not sealed to us is delivered, flagged, not dropped.
    kim_client_t *plain = s_client (broker, SENDER, 0, true, NULL);
    uint64_t plain_seq = 0;
    ITEST_RC (s_send_text (plain, RECIPIENT, "plain-1", "not sealed", &plain_seq), 0);
    ITEST_RC (ITEST_DELIVER (recipient, &event, 10000), 0);
    KIM_CHECK (event.seq == plain_seq && event.sealed_error);
    KIM_CHECK (event.payload_size == 10 && memcmp (event.payload, "not sealed", 10) == 0);
    ITEST_RC (kim_client_ack (recipient, event.seq), 0);
    kim_client_destroy (&plain);

    //  No key, no send: a payload for an organisation the directory does not
    //  list never leaves the client.
    ITEST_RC (s_send_text (sender, "jc.nowhere", "nowhere-1", "x", NULL), -KIM_E_UNKNOWN_RECIPIENT);
    KIM_CHECK (strstr (kim_client_error (sender), "directory"));

    //  3. Signatures. The signer's SEND carries hdr.sig and passes...
    kim_client_t *signer = kim_testbroker_client (broker, SIGNER, 0, false);
    KIM_CHECK (signer);
    uint64_t signed_seq = 0;
    ITEST_RC (s_send_text (signer, RECIPIENT, "signed-1", "signed and sealed", &signed_seq), 0);
    ITEST_RC (ITEST_DELIVER (recipient, &event, 10000), 0);
    KIM_CHECK (event.seq == signed_seq && event.msg.has_sig && !event.sealed_error);
    KIM_CHECK (kim_directory_verify (&event.msg, kim_testbroker_sign_public (broker, SIGNER)) == 0);
    ITEST_RC (kim_client_ack (recipient, event.seq), 0);
    kim_client_destroy (&signer);

    //  ...unsigned from an org with a registered key: refused.
    signer = s_client (broker, SIGNER, 0, false, NULL);
    ITEST_RC (s_send_text (signer, RECIPIENT, "unsigned-1", "x", NULL), -KIM_E_BAD_SIGNATURE);
    KIM_CHECK (strstr (kim_client_error (signer), "must carry hdr.sig"));
    kim_client_destroy (&signer);

    //  ...signed with another key: refused.
    uint8_t seed [crypto_sign_SEEDBYTES];
    char other_key [41];
    randombytes_buf (seed, sizeof seed);
    KIM_CHECK (zmq_z85_encode (other_key, seed, sizeof seed));
    signer = s_client (broker, SIGNER, 0, false, other_key);
    ITEST_RC (s_send_text (signer, RECIPIENT, "forged-1", "x", NULL), -KIM_E_BAD_SIGNATURE);
    kim_client_destroy (&signer);

    //  ...a signature from an org without a registered key: refused, an
    //  unverifiable signature is not logged.
    kim_client_t *stray = s_client (broker, SENDER, 0, false, other_key);
    ITEST_RC (s_send_text (stray, RECIPIENT, "stray-1", "x", NULL), -KIM_E_BAD_SIGNATURE);
    kim_client_destroy (&stray);

    //  The broker keeps serving.
    uint64_t last_seq = 0;
    ITEST_RC (s_send_text (sender, RECIPIENT, "after-1", "still here", &last_seq), 0);
    ITEST_RC (ITEST_DELIVER (recipient, &event, 10000), 0);
    KIM_CHECK (event.seq == last_seq && event.payload_size == 10);
    ITEST_RC (kim_client_ack (recipient, event.seq), 0);
    kim_client_flush (recipient, 5000);

    //  5. The directory and the signature check follow the registry: a
    //  sign_key registered by RELOAD is published at once, and from then on
    //  the (still connected) sender's unsigned SENDs are refused.
    uint8_t seed2 [crypto_sign_SEEDBYTES], pk2 [crypto_sign_PUBLICKEYBYTES],
            sk2 [crypto_sign_SECRETKEYBYTES];
    char seed2_txt [41], pk2_txt [41], line [128], needle [128];
    randombytes_buf (seed2, sizeof seed2);
    crypto_sign_seed_keypair (pk2, sk2, seed2);
    KIM_CHECK (zmq_z85_encode (seed2_txt, seed2, sizeof seed2));
    KIM_CHECK (zmq_z85_encode (pk2_txt, pk2, sizeof pk2));
    kim_client_config_t sconfig = kim_testbroker_client_config (broker, SENDER, 0, false);
    snprintf (needle, sizeof needle, "public_key = \"%s\"", sconfig.public_key);
    snprintf (line, sizeof line, "        sign_key = \"%s\"\n", pk2_txt);
    s_config_insert (broker, needle, line);
    s_reload (broker);
    ITEST_RC (kim_client_directory (recipient, SENDER, &entries, &count, 5000), 0);
    KIM_CHECK (count == 1 && streq (entries [0].sign_key, pk2_txt));
    ITEST_RC (s_send_text (sender, RECIPIENT, "after-reload-1", "x", NULL), -KIM_E_BAD_SIGNATURE);
    kim_client_t *resigned = s_client (broker, SENDER, 0, false, seed2_txt);
    ITEST_RC (s_send_text (resigned, RECIPIENT, "after-reload-2", "signed now", &last_seq), 0);
    ITEST_RC (ITEST_DELIVER (recipient, &event, 10000), 0);
    KIM_CHECK (event.seq == last_seq && event.msg.has_sig && !event.sealed_error);
    KIM_CHECK (event.payload_size == 10 && memcmp (event.payload, "signed now", 10) == 0);
    ITEST_RC (kim_client_ack (recipient, event.seq), 0);
    kim_client_flush (recipient, 5000);
    kim_client_destroy (&resigned);

    kim_client_destroy (&sender);
    kim_client_destroy (&recipient);
    KIM_CHECK (kim_testbroker_stop (broker, SIGTERM) != -1);

    //  4. At rest: the store has ciphertext, never the plaintext; the signed
    //  header in the log verifies against the registered key.
    char path [PATH_MAX];
    snprintf (path, sizeof path, "%s/data/store", kim_testbroker_dir (broker));
    kim_store_config_t config = { .path = path, .read_only = true };
    int err = 0;
    kim_store_t *store = kim_store_new (&config, &err);
    KIM_CHECK (store);
    KIM_CHECK (kim_store_read_begin (store) == 0);
    const uint8_t *data;
    size_t size;
    KIM_CHECK (kim_store_payload_get (store, sealed_seq, &data, &size) == 0);
    KIM_CHECK (size == strlen (secret) + crypto_box_SEALBYTES);
    KIM_CHECK (!memmem (data, size, "Schulden", 8));
    KIM_CHECK (kim_store_payload_get (store, signed_seq, &data, &size) == 0);
    KIM_CHECK (size > 0 && !memmem (data, size, "signed and sealed", 17));
    kim_record_t record;
    KIM_CHECK (kim_store_read (store, signed_seq, &record) == 0);
    KIM_CHECK (record.kind == KIM_RECORD_MESSAGE);
    kim_msg_t logged;
    KIM_CHECK (kim_msg_decode (&logged, record.body, record.body_size, NULL) == 0);
    KIM_CHECK (logged.has_sig && streq (logged.sender, SIGNER));
    KIM_CHECK (kim_directory_verify (&logged, kim_testbroker_sign_public (broker, SIGNER)) == 0);
    //  Nothing refused reached the log.
    for (uint64_t seq = 1; seq <= kim_store_head (store); seq++) {
        KIM_CHECK (kim_store_read (store, seq, &record) == 0);
        KIM_CHECK (!memmem (record.body, record.body_size, "forged-1", 8));
        KIM_CHECK (!memmem (record.body, record.body_size, "unsigned-1", 10));
        KIM_CHECK (!memmem (record.body, record.body_size, "stray-1", 7));
    }
    kim_store_read_end (store);
    kim_store_destroy (&store);
    s_itest_broker_destroy (&broker);
    printf ("sealed: directory, sealing at rest, signatures required/verified/refused: OK\n");
    return 0;
}
