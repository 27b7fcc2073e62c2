/*  test_sealed.c — the key directory, sealed payloads (the broker
    stores ciphertext only) and sender signatures (required, verified,
    refused, kept in the log), over a real broker and its real LMDB file;
    a sign_key registered by RELOAD takes effect at once; `kim send` and
    `kim inbox` seal, sign and open by themselves. Usage: test_sealed KIM
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

static const char *s_kim = NULL;       //  the kim binary (argv [1])

//  Writes `org`'s key pair as NAME.cert + NAME.cert_secret (0600) into the
//  broker's folder, as `kim keygen` would; returns the secret file's path.
static void
s_write_cert (kim_testbroker_t *broker, const char *org, char *path, size_t path_size)
{
    kim_client_config_t config = kim_testbroker_client_config (broker, org, 0, false);
    uint8_t public_key [32], secret_key [32];
    KIM_CHECK (zmq_z85_decode (public_key, config.public_key)
               && zmq_z85_decode (secret_key, config.secret_key));
    zcert_t *cert = zcert_new_from (public_key, secret_key);
    KIM_CHECK (cert);
    char public_path [200];
    snprintf (public_path, sizeof public_path, "%s/%s.cert", kim_testbroker_dir (broker), org);
    KIM_CHECK (zcert_save (cert, public_path) == 0);
    zcert_destroy (&cert);
    snprintf (path, path_size, "%s_secret", public_path);
    KIM_CHECK (chmod (path, 0600) == 0);
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
main (int argc, char *argv [])
{
    KIM_CHECK (sodium_init () >= 0);
    KIM_CHECK (argc == 2);
    s_kim = argv [1];
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

    //  6. `kim send` and `kim inbox` seal, sign and open without extra
    //  steps: kim finds NAME.sign_secret beside NAME.cert_secret.
    char signer_cert [256], recipient_cert [256], path [256];
    s_write_cert (broker, SIGNER, signer_cert, sizeof signer_cert);
    s_write_cert (broker, RECIPIENT, recipient_cert, sizeof recipient_cert);
    snprintf (path, sizeof path, "%s/%s.sign_secret", kim_testbroker_dir (broker), SIGNER);
    FILE *file = fopen (path, "w");
    KIM_CHECK (file && fprintf (file, "sign\n    public-key = \"%s\"\n    secret-key = \"%s\"\n",
                                kim_testbroker_sign_public (broker, SIGNER),
                                kim_testbroker_sign_secret (broker, SIGNER)) > 0);
    KIM_CHECK (fclose (file) == 0 && chmod (path, 0600) == 0);
    snprintf (path, sizeof path, "%s/cli-payload.txt", kim_testbroker_dir (broker));
    file = fopen (path, "w");
    KIM_CHECK (file && fputs ("Termin am Montag, bitte Unterlagen mitbringen", file) >= 0);
    KIM_CHECK (fclose (file) == 0);
    char connection [512], args [2048], out [16384];
    snprintf (connection, sizeof connection, "--endpoint '%s' --broker-key '%s/data/keys/broker.cert'",
              kim_testbroker_endpoint (broker, false), kim_testbroker_dir (broker));
    snprintf (args, sizeof args, "send %s --cert '%s' --type REFERRAL --to %s --referral cli-1 "
              "--msg-id cli-1 --case case-cli-1 --subject subj-cli --purpose integration "
              "--statute 'SGB X 69' --payload '%s'", connection, signer_cert, RECIPIENT, path);
    int rc = s_itest_run (s_kim, args, out, sizeof out);
    if (rc != 0 || !strstr (out, "\"msg_id\":\"cli-1\""))
        fprintf (stderr, "kim send: exit %d: %s\n", rc, out);
    KIM_CHECK (rc == 0);
    //  The recipient's client of the test is still connected: let it go, so
    //  that kim inbox gets the delivery.
    kim_client_destroy (&recipient);
    snprintf (args, sizeof args, "inbox %s --cert '%s' --count 1 --idle 5000", connection,
              recipient_cert);
    rc = s_itest_run (s_kim, args, out, sizeof out);
    if (rc != 0 || !strstr (out, "Termin am Montag"))
        fprintf (stderr, "kim inbox: exit %d: %s\n", rc, out);
    KIM_CHECK (rc == 0);
    KIM_CHECK (strstr (out, "\"payload\":\"Termin am Montag, bitte Unterlagen mitbringen\""));
    KIM_CHECK (strstr (out, "\"sig\":"));
    KIM_CHECK (!strstr (out, "sealed_error"));

    kim_client_destroy (&sender);
    KIM_CHECK (kim_testbroker_stop (broker, SIGTERM) != -1);

    //  4. At rest: the store has ciphertext, never the plaintext; the signed
    //  header in the log verifies against the registered key.
    char store_path [PATH_MAX];
    snprintf (store_path, sizeof store_path, "%s/data/store", kim_testbroker_dir (broker));
    kim_store_config_t config = { .path = store_path, .read_only = true };
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
