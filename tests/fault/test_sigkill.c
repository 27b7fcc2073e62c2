/*  test_sigkill.c — "a RECEIPT means nothing is lost", under kill -9.

    Several producer threads (one organisation and one client each) stream
    1 KiB messages with unique msg_ids to one recipient, W1-like, while the
    broker is killed with SIGKILL at random moments and started again on the
    same folder, round after round. Producers record every RECEIPT
    (msg_id -> seq). They keep their clients across kills, so the client
    library's reconnect-and-resend is exercised; every third restart they
    start fresh clients instead and resend what was not receipted themselves,
    which exercises de-duplication across restarts from a new session.

    The recipient takes and acks its deliveries throughout, through a
    client that reconnects after each kill. At the end the broker is started once more,
    producers flush, and the recipient drains the rest. Then:
      - every receipted msg_id is delivered, with its receipted seq;
      - no msg_id is receipted or delivered under two different seqs (the
        resends were de-duplicated), and no seq belongs to two msg_ids;
      - nothing is delivered that was never sent, and content is intact;
      - first deliveries come in seq order (so no seq is delivered for two
        msg_ids: a broker that delivered what it had not made durable would
        hand out that seq again after a power cut).

    The clients speak protocol version 2 (batched sends, receipts, deliveries
    and range acks); with KIM_PROTOCOL=1 in the environment they speak
    version 1 (CTest runs both), and the test checks they did.

    With KIM_POWERCUT=<path of libkim_powercut_shim.so> each kill is a power
    cut: the broker runs with that library preloaded, and after the kill the
    writes to its LMDB files that no sync had made durable are taken back
    (tests/fault/powercut/kim_powercut.h): all of them in even rounds, a
    random choice of pages in odd ones. A RECEIPT must survive that too,
    and the log must verify after each cut, before the broker starts again.

    The PRNG seed is printed; KIM_TEST_SEED=<n> repeats a run's timings.
    KIM_FAULT_ROUNDS=<n> kills n times instead of 25 (a long run).
*/
#include <pthread.h>
#include <stdatomic.h>

#include "kim_itest.h"
#include "kim_powercut.h"

#define RECIPIENT       "jc.rheine"
#define PRODUCERS       3
#define ROUNDS          25              //  KIM_FAULT_ROUNDS=<n>: n (a long run)
#define MSGS_MAX        400000          //  per producer: room for a long run
#define RATE            8000            //  messages per second per producer, at most
#define RATE_POWERCUT   1000            //  the same with power cuts: the recipient keeps up
#define IN_FLIGHT       256             //  unreceipted sends per producer
#define PAYLOAD         1024
#define RECREATE_EVERY  3               //  every n-th start, fresh clients resend explicitly

typedef struct {
    int index;
    char org [KIM_ORG_MAX + 1];
    kim_testbroker_t *broker;
    uint64_t *seqs;                     //  receipted seq per message number, 0: none yet
    uint32_t next;                      //  messages generated: p<index>-<n> for n < next
    bool resending;                     //  a fresh client resends [resend_cursor, resend_limit)
    uint32_t resend_cursor;
    uint32_t resend_limit;
    atomic_uint_fast64_t receipted;     //  distinct messages receipted
    uint64_t dup_receipts;              //  RECEIPTs with dup=true: duplicates suppressed
    uint64_t explicit_resends;
    uint64_t recreations;
    uint64_t client_errors;
    uint64_t reconnects;                //  kim_client_reconnects of finished clients
    uint64_t rejects;
    uint64_t unreceipted_after_flush;   //  what the library's flush left unreceipted
    uint32_t protocol;                  //  the last session's version seen, 0 before one
    char first_error [512];
} producer_t;

static atomic_int s_epoch;              //  incremented after every broker start
static atomic_bool s_stop;              //  the last broker runs: flush and finish
static int s_rate = RATE;               //  set before the threads start

static void
s_fail (const char *format, ...)
{
    va_list args;
    va_start (args, format);
    fprintf (stderr, "test_sigkill: FAILED: ");
    vfprintf (stderr, format, args);
    fprintf (stderr, "\n");
    va_end (args);
    exit (1);
}

static void
s_msg_id (char *out, size_t size, int producer, uint32_t n)
{
    snprintf (out, size, "p%d-%u", producer, n);
}

static bool
s_parse_msg_id (const char *msg_id, int *producer, uint32_t *n)
{
    char tail;
    return sscanf (msg_id, "p%d-%u%c", producer, n, &tail) == 2;
}

static void
s_note_error (producer_t *self, const char *format, ...)
{
    if (self->first_error [0])
        return;
    va_list args;
    va_start (args, format);
    vsnprintf (self->first_error, sizeof self->first_error, format, args);
    va_end (args);
}

static void
s_handle (producer_t *self, const kim_event_t *event)
{
    if (event->type == KIM_EVENT_RECEIPT) {
        int producer;
        uint32_t n;
        if (!s_parse_msg_id (event->msg_id, &producer, &n) || producer != self->index
        ||  n >= self->next)
            s_fail ("%s got a RECEIPT for msg_id '%s' it never sent", self->org, event->msg_id);
        if (event->seq == 0)
            s_fail ("%s: RECEIPT for %s without a seq", self->org, event->msg_id);
        if (self->seqs [n] == 0) {
            self->seqs [n] = event->seq;
            atomic_fetch_add (&self->receipted, 1);
        }
        else
        if (self->seqs [n] != event->seq)
            s_fail ("%s: %s receipted as seq %" PRIu64 " and again as seq %" PRIu64
                    " (dup=%d): a duplicate was logged twice", self->org, event->msg_id,
                    self->seqs [n], event->seq, event->dup);
        if (event->dup)
            self->dup_receipts++;
    }
    else
    if (event->type == KIM_EVENT_REJECT) {
        self->rejects++;
        s_note_error (self, "REJECT %s msg_id=%s path=%s: %s", kim_errname (event->code),
                      event->msg_id, event->path, event->text);
    }
    else
        s_fail ("%s (window 0) got an event of type %d", self->org, (int) event->type);
}

static kim_client_t *
s_connect (producer_t *self)
{
    kim_client_config_t config =
        kim_testbroker_client_config (self->broker, self->org, 0, self->index % 2 == 1);
    config.timeout_ms = 1000;
    config.send_window = 256;
    int err = 0;
    kim_client_t *client = kim_client_new (&config, &err);
    if (client) {
        //  A fresh session: what the previous client did not get receipted,
        //  this one resends with the same msg_ids.
        self->resending = true;
        self->resend_cursor = 0;
        self->resend_limit = self->next;
    }
    return client;
}

static void
s_drop (producer_t *self, kim_client_t **client_p)
{
    if (kim_client_protocol (*client_p))
        self->protocol = kim_client_protocol (*client_p);
    self->reconnects += kim_client_reconnects (*client_p);
    kim_client_destroy (client_p);
}

static void
s_client_error (producer_t *self, kim_client_t **client_p, int rc, const char *what)
{
    self->client_errors++;
    s_note_error (self, "%s returned %s: %s", what, kim_errname (rc),
                  kim_client_error (*client_p));
    s_drop (self, client_p);
}

//  The next message to send: first the explicit resends, then new ones.
static bool
s_next_to_send (producer_t *self, uint32_t *n, bool *resend)
{
    if (self->resending) {
        while (self->resend_cursor < self->resend_limit && self->seqs [self->resend_cursor])
            self->resend_cursor++;
        if (self->resend_cursor < self->resend_limit) {
            *n = self->resend_cursor++;
            *resend = true;
            return true;
        }
        self->resending = false;
    }
    if (self->next < MSGS_MAX) {
        *n = self->next++;
        *resend = false;
        return true;
    }
    return false;
}

static int
s_send (producer_t *self, kim_client_t *client, uint32_t n)
{
    char msg_id [KIM_ID_MAX + 1], referral [KIM_ID_MAX + 1];
    s_msg_id (msg_id, sizeof msg_id, self->index, n);
    snprintf (referral, sizeof referral, "p%d-ref-%u", self->index, n % 16);
    kim_msg_t msg;
    s_itest_msg (&msg, RECIPIENT, referral, msg_id);
    uint8_t payload [PAYLOAD];
    s_itest_payload (payload, sizeof payload, msg_id);
    return kim_client_send_async (client, &msg, payload, sizeof payload);
}

//  Polls for events for up to timeout_ms; false if the client broke.
static bool
s_poll (producer_t *self, kim_client_t **client_p, int timeout_ms)
{
    kim_event_t event;
    int rc = kim_client_recv (*client_p, &event, timeout_ms);
    while (rc == 0) {
        s_handle (self, &event);
        rc = kim_client_recv (*client_p, &event, 0);
    }
    if (rc != -KIM_E_TIMEOUT) {
        s_client_error (self, client_p, rc, "kim_client_recv");
        return false;
    }
    return true;
}

static uint32_t
s_unreceipted (const producer_t *self)
{
    uint32_t count = 0;
    for (uint32_t n = 0; n < self->next; n++)
        if (!self->seqs [n])
            count++;
    return count;
}

//  The last broker runs and stays up: everything must now be receipted.
static void
s_finish (producer_t *self, kim_client_t *client)
{
    //  First what the library does with what it holds.
    if (client) {
        int rc = kim_client_flush (client, 60000);
        if (rc)
            s_note_error (self, "final kim_client_flush returned %s with %zu pending: %s",
                          kim_errname (rc), kim_client_pending (client), kim_client_error (client));
        if (s_poll (self, &client, 0))
            s_drop (self, &client);
    }
    self->unreceipted_after_flush = s_unreceipted (self);

    //  Then a fresh session resends whatever is still missing.
    for (int attempt = 0; attempt < 5 && s_unreceipted (self); attempt++) {
        client = NULL;
        for (int tries = 0; tries < 20 && !client; tries++)
            client = s_connect (self);
        if (!client)
            s_fail ("%s cannot connect to the last broker", self->org);
        self->resending = false;        //  resent here, all at once
        bool ok = true;
        for (uint32_t n = 0; ok && n < self->next; n++)
            if (!self->seqs [n]) {
                self->explicit_resends++;
                int rc = s_send (self, client, n);
                if (rc) {
                    s_client_error (self, &client, rc, "kim_client_send_async");
                    ok = false;
                }
            }
        if (!ok)
            continue;
        int rc = kim_client_flush (client, 60000);
        if (rc)
            s_note_error (self, "final resend: kim_client_flush returned %s", kim_errname (rc));
        if (s_poll (self, &client, 0))
            s_drop (self, &client);
    }
}

static void *
s_producer (void *arg)
{
    producer_t *self = (producer_t *) arg;
    kim_client_t *client = NULL;
    int seen_epoch = atomic_load (&s_epoch);
    int64_t refilled = s_itest_now ();
    double tokens = 0;                  //  rate limit: a bucket of s_rate/s, IN_FLIGHT deep

    while (!atomic_load (&s_stop)) {
        int epoch = atomic_load (&s_epoch);
        if (epoch != seen_epoch) {
            seen_epoch = epoch;
            if (client && epoch % RECREATE_EVERY == 0) {
                s_drop (self, &client);
                self->recreations++;
            }
        }
        if (!client) {
            client = s_connect (self);  //  waits up to 1 s while the broker is down
            continue;
        }
        if (!s_poll (self, &client, 0))
            continue;
        int64_t now = s_itest_now ();
        tokens += (double) (now - refilled) * s_rate / 1000;
        refilled = now;
        if (tokens > IN_FLIGHT)
            tokens = IN_FLIGHT;
        bool may_send = kim_client_pending (client) < IN_FLIGHT && tokens >= 1;
        uint32_t n;
        bool resend;
        if (may_send && s_next_to_send (self, &n, &resend)) {
            if (resend)
                self->explicit_resends++;
            int rc = s_send (self, client, n);
            if (rc)
                s_client_error (self, &client, rc, "kim_client_send_async");
            tokens -= 1;
        }
        else
            s_poll (self, &client, 5);
    }
    s_finish (self, client);
    return NULL;
}

//  What the recipient was delivered, taken by one thread at a time: its
//  live session while the broker is being killed, then the final drain.
//  Only durable messages may be delivered: one that a crash or power cut
//  took back would come again under a seq of its own, or its seq again
//  with another message, and the checks here see either.
typedef struct {
    const producer_t *producers;        //  their orgs only (set before the threads)
    kim_testbroker_t *broker;
    uint64_t *delivered [PRODUCERS];    //  first seq delivered per message number
    uint64_t distinct;
    uint64_t repeated;                  //  redeliveries of the same seq: at-least-once
    uint64_t last_seq;                  //  of the last first delivery
    uint64_t live;                      //  deliveries taken during the kills
    uint64_t clients;                   //  live clients made (one, unless one broke)
} taker_t;

static void
s_take (taker_t *self, const kim_event_t *event)
{
    if (event->type != KIM_EVENT_DELIVER) {
        s_itest_print_event ("recipient", event);
        s_fail ("recipient got something other than a DELIVER");
    }
    int p;
    uint32_t n;
    //  Whether n was sent is checked at the end: producers are still counting.
    if (!s_parse_msg_id (event->msg.msg_id, &p, &n) || p < 0 || p >= PRODUCERS || n >= MSGS_MAX)
        s_fail ("delivered seq %" PRIu64 " msg_id '%s' was never sent", event->seq,
                event->msg.msg_id);
    if (!streq (event->msg.sender, self->producers [p].org))
        s_fail ("%s delivered with sender %s", event->msg.msg_id, event->msg.sender);
    if (!s_itest_payload_ok (event->payload, event->payload_size, PAYLOAD, event->msg.msg_id))
        s_fail ("%s delivered with a wrong payload (%zu bytes)", event->msg.msg_id,
                event->payload_size);
    if (self->delivered [p][n] == 0) {
        if (event->seq <= self->last_seq)
            s_fail ("first deliveries out of seq order: %" PRIu64 " (%s) after %" PRIu64
                    " (reordered, or a seq delivered again for another message)", event->seq,
                    event->msg.msg_id, self->last_seq);
        self->last_seq = event->seq;
        self->delivered [p][n] = event->seq;
        self->distinct++;
    }
    else
    if (self->delivered [p][n] == event->seq)
        self->repeated++;
    else
        s_fail ("%s delivered as seq %" PRIu64 " and as seq %" PRIu64
                ": a duplicate was not suppressed, or a delivered message was lost",
                event->msg.msg_id, self->delivered [p][n], event->seq);
}

//  The recipient's live client: takes and acks deliveries while the
//  broker is killed and started (the library reconnects), and is made
//  anew should it break.
static void *
s_recipient (void *arg)
{
    taker_t *self = (taker_t *) arg;
    kim_client_t *client = NULL;
    while (!atomic_load (&s_stop)) {
        if (!client) {
            kim_client_config_t config =
                kim_testbroker_client_config (self->broker, RECIPIENT, 256, false);
            config.timeout_ms = 1000;
            int err = 0;
            client = kim_client_new (&config, &err);   //  waits up to 1 s while it is down
            if (client)
                self->clients++;
            else
                zclock_sleep (10);      //  a broker that is down may refuse at once
            continue;
        }
        kim_event_t event;
        int rc = kim_client_recv (client, &event, 50);
        if (rc == 0) {
            s_take (self, &event);
            self->live++;
            rc = kim_client_ack (client, event.seq);
        }
        if (rc && rc != -KIM_E_TIMEOUT)
            kim_client_destroy (&client);
    }
    kim_client_destroy (&client);
    return NULL;
}

//  What a power cut leaves must still verify: the log's chain, its signed
//  checkpoints, and the latest checkpoint kept beside it (a checkpoint file
//  that claims records the log lost would read as a log cut short).
static void
s_verify_log (const char *data_dir, int round)
{
    char why [512];
    if (s_itest_verify_log (data_dir, why, sizeof why))
        s_fail ("round %d: the log does not verify after the power cut: %s", round, why);
}

static uint64_t
s_total_receipted (producer_t *producers)
{
    uint64_t total = 0;
    for (int i = 0; i < PRODUCERS; i++)
        total += atomic_load (&producers [i].receipted);
    return total;
}

static int
s_compare_u64 (const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
    return x < y? -1: x > y;
}

int
main (void)
{
    KIM_CHECK (sodium_init () >= 0);
    const char *seed_text = getenv ("KIM_TEST_SEED");
    uint64_t seed = seed_text? strtoull (seed_text, NULL, 10)
                             : (uint64_t) time (NULL) ^ ((uint64_t) getpid () << 32);
    if (seed == 0)
        seed = 1;
    printf ("test_sigkill: seed %" PRIu64 " (KIM_TEST_SEED=%" PRIu64 " repeats it)\n", seed, seed);
    fflush (stdout);
    uint64_t rng = seed;

    producer_t producers [PRODUCERS];
    memset (producers, 0, sizeof producers);
    const char *orgs [PRODUCERS + 2] = { RECIPIENT };
    for (int i = 0; i < PRODUCERS; i++) {
        producers [i].index = i;
        snprintf (producers [i].org, sizeof producers [i].org, "kim.producer%d", i);
        producers [i].seqs = (uint64_t *) calloc (MSGS_MAX, sizeof (uint64_t));
        KIM_CHECK (producers [i].seqs);
        orgs [i + 1] = producers [i].org;
    }
    orgs [PRODUCERS + 1] = NULL;
    //  A short heartbeat: a client whose send window is full hears nothing
    //  from a killed broker and notices the restart only at its next PING.
    //  KIM_STORE_JOURNAL=0 or 1: the store's journal (store/journal) off or on
    const char *journal = getenv ("KIM_STORE_JOURNAL");
    char extra [128] = "    heartbeat_ms = 1000\n";
    if (journal && *journal) {
        size_t used = strlen (extra);
        snprintf (extra + used, sizeof extra - used, "store\n    journal = %s\n", journal);
        printf ("test_sigkill: store/journal = %s\n", journal);
    }
    //  With the journal, LMDB's file is whole only once a broker has
    //  replayed the journal (kim_store_journal.c): after a cut, a broker
    //  starts and stops on the folder, or kim-broker --recover runs on it,
    //  before the log is read
    bool recover_first = journal && streq (journal, "1");
    kim_testbroker_t *broker = s_itest_broker (orgs, extra);
    for (int i = 0; i < PRODUCERS; i++)
        producers [i].broker = broker;
    //  A power cut takes back what was not synced in the store's folder.
    const char *powercut = getenv ("KIM_POWERCUT");
    char data_dir [PATH_MAX];
    snprintf (data_dir, sizeof data_dir, "%s/data", kim_testbroker_dir (broker));
    kim_powercut_stats_t cut_total = { 0 };
    if (powercut && powercut [0]) {
        KIM_CHECK (access (powercut, R_OK) == 0);
        kim_testbroker_preload (broker, powercut);
        KIM_CHECK (setenv ("KIM_POWERCUT_DIR", data_dir, 1) == 0);
        //  Slower, so that the recipient takes messages moments after their
        //  commit, where a delivery of what is not yet durable would show.
        s_rate = RATE_POWERCUT;
        printf ("test_sigkill: every kill is a power cut (%s)\n", powercut);
    }

    int64_t test_started = s_itest_now ();
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    atomic_store (&s_epoch, 1);
    pthread_t threads [PRODUCERS];
    for (int i = 0; i < PRODUCERS; i++)
        KIM_CHECK (pthread_create (&threads [i], NULL, s_producer, &producers [i]) == 0);
    taker_t taker = { .producers = producers, .broker = broker };
    for (int i = 0; i < PRODUCERS; i++) {
        taker.delivered [i] = (uint64_t *) calloc (MSGS_MAX, sizeof (uint64_t));
        KIM_CHECK (taker.delivered [i]);
    }
    pthread_t recipient_thread;
    KIM_CHECK (pthread_create (&recipient_thread, NULL, s_recipient, &taker) == 0);

    int stalled = 0;
    const char *rounds_text = getenv ("KIM_FAULT_ROUNDS");
    int rounds = rounds_text? atoi (rounds_text): ROUNDS;
    if (rounds < 1)
        rounds = ROUNDS;
    for (int round = 0; round < rounds; round++) {
        if (round > 0) {
            if (kim_testbroker_start (broker))
                s_fail ("round %d: the broker does not start on the folder it was killed on "
                        "(see %s/broker.log)", round, kim_testbroker_dir (broker));
            atomic_fetch_add (&s_epoch, 1);
        }
        //  Wait until traffic flows again, then kill at a random moment.
        int64_t started = s_itest_now ();
        uint64_t before = s_total_receipted (producers);
        while (s_total_receipted (producers) == before && s_itest_now () - started < 5000)
            zclock_sleep (5);           //  polling for progress, bounded
        if (s_total_receipted (producers) == before)
            stalled++;
        int64_t resumed_ms = s_itest_now () - started;
        int delay = 50 + (int) (s_itest_rand (&rng) % 451);
        zclock_sleep (delay);           //  the fault's timing, not synchronisation
        uint64_t at_kill = s_total_receipted (producers);
        int status = kim_testbroker_stop (broker, SIGKILL);
        if (!WIFSIGNALED (status) || WTERMSIG (status) != SIGKILL)
            s_fail ("round %d: the broker had died before the kill: status 0x%x (see %s/broker.log)",
                    round, status, kim_testbroker_dir (broker));
        printf ("round %2d: traffic after %4" PRId64 " ms, killed %3d ms later; "
                "%" PRIu64 " receipted this round, %" PRIu64 " in all\n",
                round, resumed_ms, delay, at_kill - before, at_kill);
        if (powercut && powercut [0]) {
            kim_powercut_stats_t cut;
            bool worst = round % 2 == 0;
            if (kim_powercut_apply (data_dir, worst, &rng, &cut))
                s_fail ("round %d: the power cut could not be applied", round);
            printf ("          power cut (%s): %" PRIu64 " unsynced writes in %" PRIu64
                    " files, %" PRIu64 " of %" PRIu64 " pages set back\n",
                    worst? "every unsynced page": "pages at random", cut.writes, cut.files,
                    cut.pages_back, cut.pages);
            cut_total.files += cut.files;
            cut_total.writes += cut.writes;
            cut_total.pages_back += cut.pages_back;
            //  Replayed by a broker that starts and stops in odd rounds, by
            //  kim-broker --recover in even ones
            if (recover_first && round % 2 == 0) {
                int ran = kim_testbroker_run (broker, "--recover");
                if (ran == -1 || !WIFEXITED (ran) || WEXITSTATUS (ran) != 0)
                    s_fail ("round %d: kim-broker --recover failed on the folder it was cut "
                            "on: status 0x%x (see %s/broker.log)", round, ran,
                            kim_testbroker_dir (broker));
            }
            else
            if (recover_first) {
                if (kim_testbroker_start (broker))
                    s_fail ("round %d: the broker does not start on the folder it was cut "
                            "on (see %s/broker.log)", round, kim_testbroker_dir (broker));
                int stopped = kim_testbroker_stop (broker, SIGTERM);
                if (!WIFEXITED (stopped) || WEXITSTATUS (stopped) != 0)
                    s_fail ("round %d: the broker did not stop cleanly after replaying its "
                            "journal: status 0x%x", round, stopped);
            }
            s_verify_log (data_dir, round);
        }
        fflush (stdout);
    }
    //  A cut that never found anything to take back tested nothing.
    if (powercut && powercut [0] && (cut_total.files == 0 || cut_total.pages_back == 0))
        s_fail ("the power cuts took nothing back (%" PRIu64 " undo files): "
                "was the library loaded?", cut_total.files);

    //  The last start: it stays up; producers flush and finish.
    if (kim_testbroker_start (broker))
        s_fail ("the broker does not start after the last kill (see %s/broker.log)",
                kim_testbroker_dir (broker));
    atomic_fetch_add (&s_epoch, 1);
    atomic_store (&s_stop, true);
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join (threads [i], NULL);

    uint64_t sent = 0, receipted = 0, dups = 0, resends = 0, recreations = 0, errors = 0;
    uint64_t reconnects = 0, rejects = 0, after_flush = 0;
    for (int i = 0; i < PRODUCERS; i++) {
        producer_t *p = &producers [i];
        sent += p->next;
        receipted += atomic_load (&p->receipted);
        dups += p->dup_receipts;
        resends += p->explicit_resends;
        recreations += p->recreations;
        errors += p->client_errors;
        reconnects += p->reconnects;
        rejects += p->rejects;
        after_flush += p->unreceipted_after_flush;
        if (p->first_error [0])
            fprintf (stderr, "%s: first error: %s\n", p->org, p->first_error);
    }
    printf ("producers: %" PRIu64 " sent, %" PRIu64 " receipted, %" PRIu64 " dup receipts, "
            "%" PRIu64 " library reconnects, %" PRIu64 " fresh clients (%" PRIu64
            " explicit resends), %" PRIu64 " client errors, %" PRIu64 " rejects, %" PRIu64
            " left unreceipted by the library's final flush\n",
            sent, receipted, dups, reconnects, recreations, resends, errors, rejects, after_flush);
    fflush (stdout);

    //  Receipts: one seq per msg_id (checked on arrival), one msg_id per seq.
    uint64_t *all = (uint64_t *) malloc ((receipted + 1) * sizeof (uint64_t));
    KIM_CHECK (all);
    size_t count = 0;
    for (int i = 0; i < PRODUCERS; i++)
        for (uint32_t n = 0; n < producers [i].next; n++)
            if (producers [i].seqs [n])
                all [count++] = producers [i].seqs [n];
    KIM_CHECK (count == receipted);
    qsort (all, count, sizeof (uint64_t), s_compare_u64);
    for (size_t i = 1; i < count; i++)
        if (all [i] == all [i - 1])
            s_fail ("seq %" PRIu64 " was receipted for two different msg_ids", all [i]);
    uint64_t max_seq = count? all [count - 1]: 0;
    free (all);

    //  Drain the recipient's mailbox.
    pthread_join (recipient_thread, NULL);
    kim_client_t *recipient = kim_testbroker_client (broker, RECIPIENT, 256, false);
    KIM_CHECK (recipient);
    int64_t drain_started = s_itest_now ();
    kim_event_t event;
    while (true) {
        int rc = kim_client_recv (recipient, &event, taker.distinct >= receipted? 1000: 15000);
        if (rc == -KIM_E_TIMEOUT)
            break;
        if (rc)
            s_fail ("recipient: kim_client_recv returned %s: %s", kim_errname (rc),
                    kim_client_error (recipient));
        s_take (&taker, &event);
        ITEST_RC (kim_client_ack (recipient, event.seq), 0);
    }
    int64_t drain_ms = s_itest_now () - drain_started;
    kim_status_t status = ITEST_WAIT_MAILBOX (recipient, 0, 0, 30000);
    KIM_CHECK (status.log_head >= max_seq);
    //  The version the run was meant to exercise is the one spoken.
    const char *protocol = getenv ("KIM_PROTOCOL");
    uint32_t expected = protocol && streq (protocol, "1")? 1: 2;
    if (kim_client_protocol (recipient) != expected)
        s_fail ("the recipient spoke protocol %u, expected %u", kim_client_protocol (recipient),
                expected);
    for (int p = 0; p < PRODUCERS; p++)
        if (producers [p].protocol != expected)
            s_fail ("producer %d spoke protocol %u, expected %u", p, producers [p].protocol,
                    expected);
    kim_client_destroy (&recipient);

    //  Every receipted message was delivered.
    uint64_t lost = 0, unreceipted = 0, delivered_unreceipted = 0;
    for (int p = 0; p < PRODUCERS; p++) {
        //  The recipient checked msg_ids only against MSGS_MAX while the
        //  producers were still counting
        for (uint32_t n = producers [p].next; n < MSGS_MAX; n++)
            if (taker.delivered [p][n])
                s_fail ("delivered seq %" PRIu64 " msg_id 'p%d-%u' was never sent",
                        taker.delivered [p][n], p, n);
        for (uint32_t n = 0; n < producers [p].next; n++) {
            if (producers [p].seqs [n] && taker.delivered [p][n] != producers [p].seqs [n]) {
                if (lost < 10 && taker.delivered [p][n])
                    fprintf (stderr, "LOST: p%d-%u receipted as seq %" PRIu64 ", delivered as "
                             "seq %" PRIu64 "\n", p, n, producers [p].seqs [n],
                             taker.delivered [p][n]);
                else
                if (lost < 10)
                    fprintf (stderr, "LOST: p%d-%u receipted as seq %" PRIu64 ", never delivered\n",
                             p, n, producers [p].seqs [n]);
                lost++;
            }
            if (!producers [p].seqs [n]) {
                unreceipted++;
                if (taker.delivered [p][n])
                    delivered_unreceipted++;
            }
        }
    }

    printf ("test_sigkill: protocol %u, seed %" PRIu64 ", %d rounds, %" PRIu64 " messages sent, %" PRIu64
            " receipted, %" PRIu64 " delivered (%" PRIu64 " redelivered), %" PRIu64
            " duplicates suppressed, %" PRIu64 " lost, %" PRIu64 " never receipted (%" PRIu64
            " of them delivered), %d stalled rounds; %" PRIu64 " delivered live by %" PRIu64
            " clients; drain %" PRId64 " ms, total %" PRId64 " ms\n",
            expected, seed, rounds, sent, receipted, taker.distinct, taker.repeated, dups, lost,
            unreceipted, delivered_unreceipted, stalled, taker.live, taker.clients, drain_ms,
            s_itest_now () - test_started);
    if (lost)
        s_fail ("%" PRIu64 " receipted messages were lost", lost);
    if (unreceipted)
        s_fail ("%" PRIu64 " messages were never receipted, even after explicit resends "
                "to a broker that stayed up", unreceipted);
    if (rejects)
        s_fail ("producers got %" PRIu64 " REJECTs (first above)", rejects);

    for (int i = 0; i < PRODUCERS; i++) {
        free (producers [i].seqs);
        free (taker.delivered [i]);
    }
    s_itest_broker_destroy (&broker);
    printf ("test_sigkill: OK\n");
    return 0;
}
