/*  test_metrics.c — the Prometheus endpoint of a real broker, scraped over
    HTTP while the test sends, refuses, delivers and acks through the real
    client library; every figure is checked against what the test did.
    Also: 404 and 405 for other paths and methods, the endpoint off by
    default, and a bad metrics section refused by --check.
*/
#include <czmq.h>

#include "kim_testbroker.h"
#include "kim_testhttp.h"

static int s_port;

static char *
s_http (const char *method, const char *path)
{
    return kim_testhttp_request (s_port, method, path);
}

static double
s_value (const char *scrape, const char *series)
{
    return kim_testhttp_metric (scrape, series);
}

//  Scrapes until every expectation holds (the figures are rendered every
//  100 ms), or fails after 30 s printing the last scrape.
typedef struct {
    const char *series;
    double min, max;
} s_expect_t;

static char *
s_scrape_until (const s_expect_t *expect, size_t count)
{
    char *scrape = NULL;
    for (int attempt = 0; attempt < 300; attempt++) {
        free (scrape);
        scrape = s_http ("GET", "/metrics");
        bool all = scrape != NULL;
        for (size_t i = 0; all && i < count; i++) {
            double value = s_value (scrape, expect [i].series);
            all = value >= expect [i].min && value <= expect [i].max;
        }
        if (all)
            return scrape;
        zclock_sleep (100);
    }
    fprintf (stderr, "last scrape:\n%s\n", scrape? scrape: "(none)");
    for (size_t i = 0; i < count; i++)
        fprintf (stderr, "want %s in [%g, %g], have %g\n", expect [i].series, expect [i].min,
                 expect [i].max, scrape? s_value (scrape, expect [i].series): -1);
    KIM_CHECK (!"the figures never matched");
    return NULL;
}

static uint64_t
s_send (kim_client_t *client, const char *referral, const char *msg_id, uint64_t deadline,
        int *code)
{
    kim_msg_t msg;
    kim_test_referral (&msg, "soz.b", referral);
    snprintf (msg.msg_id, sizeof msg.msg_id, "%s", msg_id);
    msg.deadline = deadline;
    uint64_t seq = 0;
    bool dup = false;
    *code = kim_client_send (client, &msg, "x", 1, &seq, &dup, 10000);
    return seq;
}

//  Every kim_* metric the shipped alert rules and dashboard use is served.
static void
s_check_names_used (const char *path, const char *scrape)
{
    zfile_t *file = zfile_new (NULL, path);
    KIM_CHECK (file && zfile_input (file) == 0);
    zchunk_t *chunk = zfile_read (file, 1 << 20, 0);
    KIM_CHECK (chunk);
    char *text = zchunk_strdup (chunk);
    zchunk_destroy (&chunk);
    zfile_destroy (&file);
    int names = 0;
    for (char *at = strstr (text, "kim_"); at; at = strstr (at, "kim_")) {
        char name [128];
        size_t length = strspn (at, "abcdefghijklmnopqrstuvwxyz_");
        if (length >= sizeof name || (at > text && (at [-1] == '_' || at [-1] == '-'
                                                    || at [-1] == '/'))) {
            at += length? length: 1;
            continue;
        }
        memcpy (name, at, length);
        name [length] = 0;
        at += length;
        //  A family is served once it is declared, with its series or
        //  before its first (kim_link_up has one a peer: none here)
        char needle [160], declared [176];
        snprintf (needle, sizeof needle, "\n%s", name);
        snprintf (declared, sizeof declared, "# TYPE %s ", name);
        if ((!strstr (scrape, needle) && !strstr (scrape, declared)) || strlen (name) < 6) {
            fprintf (stderr, "%s uses %s, which the broker does not serve\n", path, name);
            KIM_CHECK (!"a metric used in deploy/monitoring is not served");
        }
        names++;
    }
    KIM_CHECK (names >= 3);
    free (text);
}

int
main (int argc, char *argv [])
{
    s_port = kim_testbroker_free_port ();
    KIM_CHECK (s_port > 0);
    char extra [512];
    snprintf (extra, sizeof extra,
              "    mailbox_quota = 5\n"
              "audit\n    checkpoint_records = 2\n"
              "metrics\n    enabled = 1\n    port = %d\n    interval_ms = 100\n"
              "    referral_interval_s = 1\n", s_port);
    const char *orgs [] = { "jc.a", "soz.b", "dsb.c:auditor", NULL };
    kim_testbroker_t *broker = kim_testbroker_new (orgs, extra);
    KIM_CHECK (broker);
    KIM_CHECK (kim_testbroker_start (broker) == 0);

    //  Nothing sent yet
    s_expect_t start [] = {
        { "kim_messages_receipted_total", 0, 0 },
        { "kim_refusals_total{reason=\"QUOTA\",code=\"300\"}", -1, -1 },
        { "kim_mailbox_messages{org=\"soz.b\"}", 0, 0 },
        { "kim_mailbox_messages{org=\"dsb.c\"}", -1, -1 },      //  auditors have no mailbox
        { "kim_referrals{state=\"SENT\"}", 0, 0 },
        { "kim_store_map_max_bytes", 64.0 * 1024 * 1024 * 1024, 64.0 * 1024 * 1024 * 1024 },
        { "kim_audit_checkpoint_lag_records", 0, 0 },
        { "kim_audit_checkpoint_age_seconds", -1, -1 },         //  no checkpoint yet
        { "kim_store_writes_total{tree=\"dedup\",op=\"put\"}", 0, 0 },
        { "kim_store_writes_total{tree=\"payload\",op=\"put\"}", 0, 0 },
    };
    free (s_scrape_until (start, sizeof start / sizeof start [0]));

    //  Five referrals (the fifth due in 2 s), a resend of the first, and a
    //  sixth over soz.b's quota of five
    kim_client_t *sender = kim_testbroker_client (broker, "jc.a", 0, false);
    KIM_CHECK (sender);
    int code;
    uint64_t first = s_send (sender, "R-1", "m-1", 0, &code);
    KIM_CHECK (code == 0 && first > 0);
    for (int i = 2; i <= 4; i++) {
        char referral [16], msg_id [16];
        snprintf (referral, sizeof referral, "R-%d", i);
        snprintf (msg_id, sizeof msg_id, "m-%d", i);
        s_send (sender, referral, msg_id, 0, &code);
        KIM_CHECK (code == 0);
    }
    KIM_CHECK (s_send (sender, "R-1", "m-1", 0, &code) == first && code == 0);
    s_send (sender, "R-5", "m-5", (uint64_t) zclock_time () + 2000, &code);
    KIM_CHECK (code == 0);
    s_send (sender, "R-6", "m-6", 0, &code);
    KIM_CHECK (code == -KIM_E_QUOTA);
    s_expect_t sent [] = {
        { "kim_messages_receipted_total", 5, 5 },
        { "kim_messages_duplicate_total", 1, 1 },
        { "kim_refusals_total{reason=\"QUOTA\",code=\"300\"}", 1, 1 },
        { "kim_mailbox_messages{org=\"soz.b\"}", 5, 5 },
        { "kim_mailbox_messages{org=\"jc.a\"}", 0, 0 },
        { "kim_mailbox_oldest_age_seconds{org=\"soz.b\"}", 0, 600 },
        { "kim_referrals{state=\"SENT\"}", 4, 5 },
        { "kim_sessions", 1, 2 },
        { "kim_batches_total", 1, 7 },
        { "kim_commit_seconds_count", 1, 1e9 },
        { "kim_commit_seconds_bucket{le=\"+Inf\"}", 1, 1e9 },
        { "kim_batch_commands_count", 1, 7 },
        { "kim_store_used_bytes", 4096, 1e12 },
        { "kim_log_head", 5, 1e9 },
        //  a checkpoint every 2 records (checked every 200 ms)
        { "kim_audit_checkpoint_age_seconds", 0, 600 },
        { "kim_audit_checkpoint_lag_records", 0, 6 },
        //  Writes of what was stored: the resend and the refusal cost none
        { "kim_store_writes_total{tree=\"dedup\",op=\"put\"}", 5, 5 },
        { "kim_store_writes_total{tree=\"payload\",op=\"put\"}", 5, 5 },
        //  A new referral's id and its state (R-5 may turn OVERDUE
        //  meanwhile: its state and notices)
        { "kim_store_writes_total{tree=\"referral\",op=\"put\"}", 10, 11 },
        { "kim_store_writes_total{tree=\"mailbox\",op=\"put\"}", 5, 8 },
        { "kim_store_writes_total{tree=\"log\",op=\"put\"}", 5, 1e9 },
        { "kim_store_writes_total{tree=\"mailbox\",op=\"del\"}", 0, 0 },
        { "kim_store_writes_total{tree=\"keys\",op=\"put\"}", 5, 1e9 },
    };
    char *scrape = s_scrape_until (sent, sizeof sent / sizeof sent [0]);
    KIM_CHECK (strstr (scrape, "HTTP/1.0 200") || strstr (scrape, "HTTP/1.1 200"));
    KIM_CHECK (strstr (scrape, "text/plain; version=0.0.4"));
    KIM_CHECK (strstr (scrape, "# TYPE kim_commit_seconds histogram"));
    KIM_CHECK (s_value (scrape, "kim_batch_commands_count")
               == s_value (scrape, "kim_batches_total"));
    free (scrape);

    //  The fifth referral's deadline passes: OVERDUE
    s_expect_t overdue [] = {
        { "kim_referrals_overdue", 1, 1 },
        { "kim_referrals{state=\"OVERDUE\"}", 1, 1 },
    };
    free (s_scrape_until (overdue, sizeof overdue / sizeof overdue [0]));

    //  soz.b takes three and acks them; two stay (and the REMINDERs of R-5
    //  wait for both sides)
    kim_client_t *recipient = kim_testbroker_client (broker, "soz.b", 16, false);
    KIM_CHECK (recipient);
    int acked = 0;
    int64_t deadline = zclock_mono () + 30000;
    while (acked < 3 && zclock_mono () < deadline) {
        kim_event_t event;
        if (kim_client_recv (recipient, &event, 1000) == 0 && event.type == KIM_EVENT_DELIVER
        &&  event.msg.type == KIM_TYPE_REFERRAL && strcmp (event.msg.referral_id, "R-5") != 0) {
            KIM_CHECK (kim_client_ack (recipient, event.seq) == 0);
            acked++;
        }
    }
    KIM_CHECK (acked == 3);
    KIM_CHECK (kim_client_flush (recipient, 5000) == 0);
    s_expect_t delivered [] = {
        { "kim_acks_total", 3, 3 },
        { "kim_deliveries_total", 5, 100 },
        { "kim_redeliveries_total", 0, 0 },
        { "kim_mailbox_in_flight{org=\"soz.b\"}", 2, 16 },
        { "kim_referrals{state=\"DELIVERED\"}", 3, 3 },
        { "kim_referrals_overdue", 1, 1 },
        { "kim_sessions", 2, 3 },
        { "kim_store_writes_total{tree=\"mailbox\",op=\"del\"}", 3, 3 },
    };
    scrape = s_scrape_until (delivered, sizeof delivered / sizeof delivered [0]);
    //  soz.b's mailbox: R-5 and one more referral, plus R-5's REMINDER
    double left = s_value (scrape, "kim_mailbox_messages{org=\"soz.b\"}");
    KIM_CHECK (left >= 2 && left <= 3);
    for (int arg = 1; arg < argc; arg++)
        s_check_names_used (argv [arg], scrape);
    free (scrape);

    //  Only GET and HEAD of /metrics
    char *answer = s_http ("GET", "/other");
    KIM_CHECK (answer && strstr (answer, " 404 "));
    free (answer);
    answer = s_http ("POST", "/metrics");
    KIM_CHECK (answer && strstr (answer, " 405 "));
    free (answer);
    kim_client_destroy (&recipient);
    kim_client_destroy (&sender);

    //  After a restart the last checkpoint, which the run before wrote, is
    //  found by reading the log back
    s_expect_t before [] = { { "kim_audit_checkpoint_age_seconds", 0, 600 } };
    scrape = s_scrape_until (before, 1);
    double checkpoint = s_value (scrape, "kim_log_head")
                      - s_value (scrape, "kim_audit_checkpoint_lag_records");
    free (scrape);
    KIM_CHECK (checkpoint >= 1);
    kim_testbroker_stop (broker, SIGTERM);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    scrape = s_scrape_until (before, 1);
    KIM_CHECK (s_value (scrape, "kim_log_head")
               - s_value (scrape, "kim_audit_checkpoint_lag_records") >= checkpoint);
    free (scrape);
    kim_testbroker_destroy (&broker);

    //  Off by default: no endpoint, no notice
    const char *one [] = { "jc.a", NULL };
    broker = kim_testbroker_new (one, NULL);
    KIM_CHECK (broker && kim_testbroker_start (broker) == 0);
    char path [PATH_MAX];
    snprintf (path, sizeof path, "%s/broker.log", kim_testbroker_dir (broker));
    char *log = NULL;
    zfile_t *file = zfile_new (NULL, path);
    if (file && zfile_input (file) == 0) {
        zchunk_t *chunk = zfile_read (file, 1 << 20, 0);
        if (chunk) {
            log = zchunk_strdup (chunk);
            zchunk_destroy (&chunk);
        }
    }
    zfile_destroy (&file);
    KIM_CHECK (log && strstr (log, "serving on") && !strstr (log, "metrics: serving"));
    free (log);
    kim_testbroker_destroy (&broker);
    printf ("test_metrics: every figure matched\n");
    return 0;
}
