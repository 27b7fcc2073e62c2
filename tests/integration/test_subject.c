/*  test_subject.c — the data subject's rights have no cap.

    The test writes a store holding 100,000 transfers about one subject
    (KIM_SUBJECT_POPULATION sets another number) from one KIM office to the
    job centre, each with a payload and in the subject index, then one more
    by the immigration office. Over a real socket: the KIM office's access
    report comes in pages that together list every transfer, the last page
    saying so; its erasure purges every payload (PURGE records in parts),
    a second erasure purges nothing and the report then says every payload
    is erased; the immigration office, whose one transfer came after all
    the others, may ask for its own report and gets exactly that transfer.
*/
#include "kim_lctest.h"
#include "kim_store.h"

#define KIM     "kim.rheine"
#define JC      "jc.rheine"
#define ABA     "aba.rheine"
#define SUBJECT "p-big"

//  Appends one transfer about SUBJECT as the broker would have logged it.
static void
s_put_transfer (kim_store_t *store, kim_buf_t *buf, const char *sender, const char *recipient,
                int i)
{
    kim_msg_t msg;
    kim_msg_init (&msg);
    msg.type = KIM_TYPE_REFERRAL;
    snprintf (msg.msg_id, sizeof msg.msg_id, "m-%s-%d", sender, i);
    msg.created_at = (uint64_t) zclock_time ();
    snprintf (msg.sender, sizeof msg.sender, "%s", sender);
    snprintf (msg.recipient, sizeof msg.recipient, "%s", recipient);
    snprintf (msg.referral_id, sizeof msg.referral_id, "r-%s-%d", sender, i);
    snprintf (msg.case_id, sizeof msg.case_id, "case-big");
    snprintf (msg.subject, sizeof msg.subject, SUBJECT);
    snprintf (msg.purpose, sizeof msg.purpose, "employment");
    msg.basis = KIM_BASIS_CONSENT;
    snprintf (msg.consent_id, sizeof msg.consent_id, "C-big");
    msg.categories = KIM_CAT_RESIDENCE_STATUS;
    snprintf (msg.rule, sizeof msg.rule, "P8");
    uint8_t payload [16];
    memset (payload, i & 0xff, sizeof payload);
    msg.payload_len = sizeof payload;
    msg.has_payload_hash = true;
    crypto_generichash (msg.payload_hash, KIM_HASH_SIZE, payload, sizeof payload, NULL, 0);
    kim_buf_reset (buf);
    ITEST_RC (kim_msg_encode (&msg, buf), 0);
    uint64_t seq = 0;
    ITEST_RC (kim_store_append (store, KIM_RECORD_MESSAGE, (uint64_t) zclock_time (), buf->data,
                                buf->size, &seq), 0);
    ITEST_RC (kim_store_payload_put (store, seq, payload, sizeof payload), 0);
    //  The subject index of the consent module: 'S' subject NUL seq (BE).
    uint8_t key [1 + sizeof SUBJECT + 8];
    key [0] = 'S';
    memcpy (key + 1, SUBJECT, sizeof SUBJECT);
    for (int b = 0; b < 8; b++)
        key [1 + sizeof SUBJECT + b] = (uint8_t) (seq >> (56 - 8 * b));
    MDB_val k = { sizeof key, key }, v = { 0, key };
    KIM_CHECK (mdb_put (kim_store_txn (store), kim_store_dbi (store, KIM_DB_CONSENT), &k, &v, 0) == 0);
}

static void
s_populate (const char *path, int population)
{
    kim_store_config_t config = { .path = path,
                                  .map_size = ((size_t) 256 << 20) + (size_t) population * 1024 };
    int err = 0;
    kim_store_t *store = kim_store_new (&config, &err);
    KIM_CHECK (store);
    KIM_CHECK (kim_store_begin (store) == 0);
    kim_buf_t buf;
    kim_buf_init (&buf);
    for (int i = 0; i < population; i++)
        s_put_transfer (store, &buf, KIM, JC, i);
    s_put_transfer (store, &buf, ABA, JC, 0);
    kim_buf_free (&buf);
    bool retry = false;
    KIM_CHECK (kim_store_commit (store, &retry) == 0);
    kim_store_destroy (&store);
}

//  How often `needle` occurs in `size` bytes at `data`.
static size_t
s_count (const uint8_t *data, size_t size, const char *needle)
{
    size_t count = 0, length = strlen (needle);
    const uint8_t *at = data, *end = data + size;
    while (at < end) {
        const uint8_t *hit = (const uint8_t *) memmem (at, (size_t) (end - at), needle, length);
        if (!hit)
            break;
        count++;
        at = hit + length;
    }
    return count;
}

//  Asks for `org`'s report on SUBJECT and reads its pages: returns the
//  transfers listed; *kept counts those whose payload is kept.
static size_t
s_report (kim_client_t *client, const char *msg_id, size_t *kept, uint32_t *pages)
{
    kim_msg_t msg;
    kim_msg_init (&msg);
    msg.type = KIM_TYPE_ACCESS_REPORT;
    snprintf (msg.msg_id, sizeof msg.msg_id, "%s", msg_id);
    snprintf (msg.subject, sizeof msg.subject, SUBJECT);
    LC_SEND (client, &msg, 0, "");
    size_t transfers = 0;
    *kept = 0;
    *pages = 0;
    int64_t deadline = s_itest_now () + 120000;
    while (s_itest_now () < deadline) {
        kim_event_t event;
        int rc = kim_client_recv (client, &event, 500);
        if (rc == -KIM_E_TIMEOUT)
            continue;
        ITEST_RC (rc, 0);
        if (event.type != KIM_EVENT_DELIVER)
            continue;
        bool page = event.msg.type == KIM_TYPE_ACCESS_REPORT;
        bool last = false;
        if (page) {
            (*pages)++;
            transfers += s_count (event.payload, event.payload_size, "{\"seq\":");
            *kept += s_count (event.payload, event.payload_size, "\"payload\":\"kept\"");
            last = s_count (event.payload, event.payload_size, "\"last\":true") == 1;
            if (last) {
                char total [64];
                snprintf (total, sizeof total, "\"total\":%zu}", transfers);
                KIM_CHECK (s_count (event.payload, event.payload_size, total) == 1);
            }
        }
        ITEST_RC (kim_client_ack (client, event.seq), 0);
        if (last) {
            kim_client_flush (client, 5000);
            return transfers;
        }
    }
    fprintf (stderr, "test_subject: the report's last page did not come within 120 s\n");
    exit (1);
}

static void
s_erase (kim_client_t *client, const char *msg_id)
{
    kim_msg_t msg;
    kim_msg_init (&msg);
    msg.type = KIM_TYPE_ERASURE;
    snprintf (msg.msg_id, sizeof msg.msg_id, "%s", msg_id);
    snprintf (msg.subject, sizeof msg.subject, SUBJECT);
    LC_SEND (client, &msg, 0, "");
}

//  Sums the payloads purged over every PURGE record of the stopped store.
static size_t
s_purged (const char *path, uint64_t population, size_t *parts)
{
    kim_store_config_t config = { .path = path, .read_only = true };
    int err = 0;
    kim_store_t *store = kim_store_new (&config, &err);
    KIM_CHECK (store);
    KIM_CHECK (kim_store_read_begin (store) == 0);
    size_t purged = 0;
    *parts = 0;
    for (uint64_t seq = 1; seq <= kim_store_head (store); seq++) {
        kim_record_t record;
        KIM_CHECK (kim_store_read (store, seq, &record) == 0);
        if (record.kind != KIM_RECORD_PURGE)
            continue;
        (*parts)++;
        //  The seqs are a MessagePack array of uints: count them by
        //  reading the array header after the key "seqs".
        const uint8_t *key = (const uint8_t *) memmem (record.body, record.body_size, "\xa4seqs", 5);
        KIM_CHECK (key && key + 5 < record.body + record.body_size);
        const uint8_t *array = key + 5;
        if ((*array & 0xf0) == 0x90)
            purged += *array & 0x0f;
        else
        if (*array == 0xdc)
            purged += ((size_t) array [1] << 8) | array [2];
        else {
            KIM_CHECK (*array == 0xdd);
            purged += ((size_t) array [1] << 24) | ((size_t) array [2] << 16)
                    | ((size_t) array [3] << 8) | array [4];
        }
    }
    //  Every payload of KIM's transfers (seqs 1..population) is gone; the
    //  immigration office's (the next seq) is kept.
    size_t left = 0;
    for (uint64_t seq = 1; seq <= population + 1; seq++) {
        const uint8_t *data = NULL;
        size_t size = 0;
        KIM_CHECK (kim_store_payload_get (store, seq, &data, &size) == 0);
        left += size > 0;
    }
    KIM_CHECK (left == 1);
    kim_store_read_end (store);
    kim_store_destroy (&store);
    printf ("  store after erasure: %zu payloads purged in %zu PURGE records\n", purged, *parts);
    return purged;
}

//  `kim subject report SUBJECT` as `org`: returns the lines it printed
//  (one per page) and checks that the last says "last":true.
static size_t
s_cli_report (kim_testbroker_t *broker, const char *kim, const char *org)
{
    kim_client_config_t config = kim_testbroker_client_config (broker, org, 0, false);
    uint8_t public_bin [32], secret_bin [32];
    KIM_CHECK (zmq_z85_decode (public_bin, config.public_key)
            && zmq_z85_decode (secret_bin, config.secret_key));
    zcert_t *cert = zcert_new_from (public_bin, secret_bin);
    char cert_path [PATH_MAX], command [4 * PATH_MAX];
    snprintf (cert_path, sizeof cert_path, "%s/%s.cert", kim_testbroker_dir (broker), org);
    KIM_CHECK (cert && zcert_save (cert, cert_path) == 0);
    zcert_destroy (&cert);
    snprintf (command, sizeof command, "'%s' subject report " SUBJECT " --cert '%s_secret' "
              "--broker-key '%s/data/keys/broker.cert' --endpoint '%s' --timeout 60000", kim,
              cert_path, kim_testbroker_dir (broker), kim_testbroker_endpoint (broker, false));
    FILE *pipe = popen (command, "r");
    KIM_CHECK (pipe);
    size_t lines = 0;
    bool last = false;
    char *line = (char *) malloc (1 << 20);
    KIM_CHECK (line);
    while (fgets (line, 1 << 20, pipe)) {
        lines++;
        last = strstr (line, "\"last\":true") != NULL;
    }
    free (line);
    int status = pclose (pipe);
    KIM_CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0 && last);
    return lines;
}

int
main (int argc, char *argv [])
{
    KIM_CHECK (sodium_init () >= 0);
    const char *env = getenv ("KIM_SUBJECT_POPULATION");
    int population = env? atoi (env): 100000;
    KIM_CHECK (population >= 10);
    const char *orgs [] = { KIM, JC, ABA, NULL };
    kim_testbroker_t *broker = s_itest_broker_policy (orgs, NULL, KIM_POLICY_PATH);
    char path [PATH_MAX];
    snprintf (path, sizeof path, "%s/data", kim_testbroker_dir (broker));
    KIM_CHECK (mkdir (path, 0700) == 0 || errno == EEXIST);
    snprintf (path, sizeof path, "%s/data/store", kim_testbroker_dir (broker));
    int64_t started = zclock_mono ();
    s_populate (path, population);
    printf ("test_subject: %d transfers about " SUBJECT " written in %" PRId64 " ms\n", population,
            zclock_mono () - started);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_client_t *kim = kim_testbroker_client (broker, KIM, 64, false);
    kim_client_t *aba = kim_testbroker_client (broker, ABA, 64, false);
    KIM_CHECK (kim && aba);

    //  The whole report, in pages.
    size_t kept = 0;
    uint32_t pages = 0;
    started = zclock_mono ();
    size_t listed = s_report (kim, "report-1", &kept, &pages);
    printf ("  report: %zu transfers (%zu payloads kept) in %u pages, %" PRId64 " ms\n", listed,
            kept, pages, zclock_mono () - started);
    KIM_CHECK (listed == (size_t) population && kept == listed && pages >= 1);
    uint32_t pages_all = pages;

    //  The office whose one transfer came after all the others.
    listed = s_report (aba, "report-aba", &kept, &pages);
    KIM_CHECK (listed == 1 && kept == 1 && pages == 1);

    //  The kim tool prints every page, one a line.
    //  (Its session replaces ours, so ours ends first and comes back after.)
    if (argc > 1) {
        kim_client_destroy (&kim);
        size_t lines = s_cli_report (broker, argv [1], KIM);
        printf ("  kim subject report: %zu pages\n", lines);
        KIM_CHECK (lines == pages_all);
        kim = kim_testbroker_client (broker, KIM, 64, false);
        KIM_CHECK (kim);
    }

    //  The whole erasure; a second one finds nothing left.
    started = zclock_mono ();
    s_erase (kim, "erase-1");
    listed = s_report (kim, "report-2", &kept, &pages);
    printf ("  erasure and report: %zu transfers, %zu payloads kept, %" PRId64 " ms\n", listed,
            kept, zclock_mono () - started);
    KIM_CHECK (listed == (size_t) population && kept == 0);
    s_erase (kim, "erase-2");
    listed = s_report (aba, "report-aba-2", &kept, &pages);
    KIM_CHECK (listed == 1 && kept == 1);

    kim_client_destroy (&kim);
    kim_client_destroy (&aba);
    KIM_CHECK (kim_testbroker_stop (broker, SIGTERM) == 0);
    size_t parts = 0;
    size_t purged = s_purged (path, (uint64_t) population, &parts);
    //  The first erasure purged every one; the second purged none.
    KIM_CHECK (purged == (size_t) population);
    KIM_CHECK (parts >= 2 && parts >= (size_t) population / 4096 + 2);
    s_itest_broker_destroy (&broker);
    printf ("test_subject: OK\n");
    return 0;
}
