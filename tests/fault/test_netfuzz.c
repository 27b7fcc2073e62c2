/*  test_netfuzz.c — hostile input under load.

    For a bounded time (KIM_NETFUZZ_SECONDS, default 20) a fuzzer thread
    drives several raw CURVE DEALER sockets with registered keys (and one
    with an unregistered key) against the sanitizer-built broker: random
    bytes, mutated corpus files (tests/fuzz/corpus/cmd), mutated valid
    commands, oversized frames, 3+ frames, PING floods, ACKs of random seqs,
    HELLO storms, commands before HELLO on fresh connections. Meanwhile a
    well-behaved agent sends sealed referrals to another through the client
    library. At the end:
      - every one of the agent's messages was receipted, none refused;
      - each is delivered under exactly one seq (the receipted one), intact;
      - the broker process is alive and still answers;
      - after a clean stop, broker.log has no AddressSanitizer,
        LeakSanitizer or UBSan ("runtime error") report.

    The PRNG seed is printed; KIM_NETFUZZ_SEED=<n> repeats a run's choices.
*/
#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>

#include "kim_rawsock.h"

#define GOOD_SENDER     "jc.rheine"
#define GOOD_RECIPIENT  "kim.rheine"
#define FUZZERS         4
#define GOOD_MAX        20000
#define CORPUS_MAX      256

static const char *s_fuzz_orgs [FUZZERS] = { "aba.f1", "aba.f2", "ebb.f3", "ebb.f4" };

typedef struct {
    uint8_t *data;
    size_t size;
} blob_t;

typedef struct {
    kim_testbroker_t *broker;
    uint64_t seed;
    int64_t deadline;
    blob_t corpus [CORPUS_MAX];
    size_t corpus_count;
    atomic_bool stop;
    uint64_t sent [16];                 //  per action
    uint64_t replies;
} fuzz_t;

static size_t
s_below (uint64_t *state, size_t n)
{
    return n? (size_t) (s_itest_rand (state) % n): 0;
}

static void
s_corpus_load (fuzz_t *self, const char *dir)
{
    DIR *folder = opendir (dir);
    KIM_CHECK (folder);
    struct dirent *item;
    while ((item = readdir (folder)) && self->corpus_count < CORPUS_MAX) {
        if (item->d_name [0] == '.')
            continue;
        char path [PATH_MAX];
        snprintf (path, sizeof path, "%s/%s", dir, item->d_name);
        FILE *file = fopen (path, "rb");
        if (!file)
            continue;
        uint8_t *data = (uint8_t *) malloc (KIM_FRAME_MAX + 1);
        KIM_CHECK (data);
        size_t size = fread (data, 1, KIM_FRAME_MAX + 1, file);
        fclose (file);
        self->corpus [self->corpus_count].data = data;
        self->corpus [self->corpus_count].size = size;
        self->corpus_count++;
    }
    closedir (folder);
    KIM_CHECK (self->corpus_count > 0);
}

//  Flips, inserts, deletes, overwrites with interesting bytes, truncates.
static size_t
s_mutate (uint64_t *rng, uint8_t *data, size_t size, size_t capacity)
{
    static const uint8_t interesting [] = {
        0x00, 0x7f, 0x80, 0x8f, 0x9f, 0xc0, 0xc1, 0xc2, 0xc4, 0xcc, 0xcf, 0xd9, 0xdb,
        0xdc, 0xdd, 0xde, 0xdf, 0xff
    };
    size_t rounds = 1 + s_below (rng, 8);
    for (size_t r = 0; r < rounds; r++) {
        switch (s_below (rng, 6)) {
            case 0:
                if (size)
                    data [s_below (rng, size)] ^= (uint8_t) (1u << s_below (rng, 8));
                break;
            case 1:
                if (size)
                    data [s_below (rng, size)] = interesting [s_below (rng, sizeof interesting)];
                break;
            case 2:
                if (size < capacity) {
                    size_t at = s_below (rng, size + 1);
                    memmove (data + at + 1, data + at, size - at);
                    data [at] = (uint8_t) s_itest_rand (rng);
                    size++;
                }
                break;
            case 3:
                if (size) {
                    size_t at = s_below (rng, size);
                    memmove (data + at, data + at + 1, size - at - 1);
                    size--;
                }
                break;
            case 4:
                size = s_below (rng, size + 1);
                break;
            default:
                if (size >= 4) {
                    //  A huge count in a 32-bit array or map header.
                    size_t at = s_below (rng, size - 4);
                    data [at] = s_below (rng, 2)? 0xdd: 0xdf;
                    memset (data + at + 1, 0xff, 3);
                }
                break;
        }
    }
    return size;
}

//  A valid command of a random kind, encoded.
static void
s_valid_cmd (uint64_t *rng, kim_cmd_t *cmd, kim_buf_t *out, const char *to)
{
    kim_buf_reset (out);
    switch (s_below (rng, 6)) {
        case 0:
            kim_cmd_init (cmd, KIM_CMD_HELLO);
            cmd->version_count = 1;
            cmd->versions [0] = KIM_PROTOCOL_VERSION;
            snprintf (cmd->agent, sizeof cmd->agent, "netfuzz");
            cmd->window = (uint32_t) s_below (rng, 64);
            break;
        case 1: {
            kim_cmd_init (cmd, KIM_CMD_SEND);
            kim_test_referral (&cmd->msg, to, "nf-ref");
            snprintf (cmd->msg.referral_id, sizeof cmd->msg.referral_id, "nf-%016" PRIx64,
                      s_itest_rand (rng));
            snprintf (cmd->msg.msg_id, sizeof cmd->msg.msg_id, "nf-%016" PRIx64,
                      s_itest_rand (rng));
            cmd->msg.created_at = (uint64_t) zclock_time ();
            break;
        }
        case 2:
            kim_cmd_init (cmd, KIM_CMD_ACK);
            cmd->ack_count = 1 + s_below (rng, 8);
            for (size_t i = 0; i < cmd->ack_count; i++)
                cmd->acks [i] = 1 + s_below (rng, 100000);
            break;
        case 3:
            kim_cmd_init (cmd, KIM_CMD_SUBSCRIBE);
            snprintf (cmd->sub_id, sizeof cmd->sub_id, "nf-%u", (unsigned) s_below (rng, 100));
            break;
        case 4:
            kim_cmd_init (cmd, KIM_CMD_DIRECTORY);
            break;
        default:
            kim_cmd_init (cmd, KIM_CMD_STATUS);
            break;
    }
    KIM_CHECK (kim_cmd_encode (cmd, out) == 0);
}

//  Sends frames without blocking; a full pipe just drops this attempt.
static void
s_send (zsock_t *sock, const void *const *frames, const size_t *sizes, int count)
{
    void *handle = zsock_resolve (sock);
    for (int i = 0; i < count; i++)
        if (zmq_send (handle, frames [i], sizes [i],
                      ZMQ_DONTWAIT | (i + 1 < count? ZMQ_SNDMORE: 0)) == -1)
            return;
}

static void
s_send1 (zsock_t *sock, const void *data, size_t size)
{
    const void *frames [] = { data };
    size_t sizes [] = { size };
    s_send (sock, frames, sizes, 1);
}

static size_t
s_drain_replies (zsock_t *sock)
{
    size_t count = 0;
    zmq_msg_t msg;
    zmq_msg_init (&msg);
    while (zmq_msg_recv (&msg, zsock_resolve (sock), ZMQ_DONTWAIT) >= 0)
        count++;
    zmq_msg_close (&msg);
    return count;
}

static void *
s_fuzzer (void *arg)
{
    fuzz_t *self = (fuzz_t *) arg;
    uint64_t rng = self->seed? self->seed: 1;
    zsock_t *socks [FUZZERS + 1];
    for (int i = 0; i < FUZZERS; i++)
        socks [i] = s_raw_new (self->broker, s_fuzz_orgs [i], NULL, NULL);
    zcert_t *stranger = zcert_new ();         //  a key nobody registered
    socks [FUZZERS] = s_raw_new (self->broker, s_fuzz_orgs [0], zcert_public_txt (stranger),
                                 zcert_secret_txt (stranger));
    kim_cmd_t *cmd = (kim_cmd_t *) malloc (sizeof (kim_cmd_t));
    uint8_t *work = (uint8_t *) malloc (2 * KIM_FRAME_MAX);
    size_t big_size = 2u * 1024 * 1024;        //  above max_payload
    uint8_t *big = (uint8_t *) calloc (1, big_size);
    KIM_CHECK (cmd && work && big);
    kim_buf_t buf;
    kim_buf_init (&buf);

    while (!atomic_load (&self->stop) && zclock_mono () < self->deadline) {
        size_t which = s_below (&rng, FUZZERS + 1);
        zsock_t *sock = socks [which];
        const char *to = s_fuzz_orgs [s_below (&rng, FUZZERS)];
        size_t action = s_below (&rng, 11);
        self->sent [action]++;
        switch (action) {
            case 0: {                           //  random bytes
                size_t size = s_below (&rng, 400);
                for (size_t i = 0; i < size; i++)
                    work [i] = (uint8_t) s_itest_rand (&rng);
                s_send1 (sock, work, size);
                break;
            }
            case 1: {                           //  a mutated corpus file
                blob_t *blob = &self->corpus [s_below (&rng, self->corpus_count)];
                size_t size = blob->size < KIM_FRAME_MAX? blob->size: KIM_FRAME_MAX;
                memcpy (work, blob->data, size);
                size = s_mutate (&rng, work, size, 2 * KIM_FRAME_MAX);
                s_send1 (sock, work, size);
                break;
            }
            case 2: {                           //  a mutated valid command
                s_valid_cmd (&rng, cmd, &buf, to);
                memcpy (work, buf.data, buf.size);
                size_t size = s_mutate (&rng, work, buf.size, 2 * KIM_FRAME_MAX);
                const void *frames [] = { work, work };
                size_t sizes [] = { size, s_below (&rng, 64) };
                s_send (sock, frames, sizes, 1 + (int) s_below (&rng, 2));
                break;
            }
            case 3: {                           //  oversized frame 0, or payload
                s_valid_cmd (&rng, cmd, &buf, to);
                if (s_below (&rng, 2)) {
                    size_t size = KIM_FRAME_MAX + 1 + s_below (&rng, 1000);
                    memset (work, 0x91, size);
                    s_send1 (sock, work, size);
                }
                else {
                    const void *frames [] = { buf.data, big };
                    size_t sizes [] = { buf.size, big_size };
                    s_send (sock, frames, sizes, 2);
                }
                break;
            }
            case 4: {                           //  3 to 5 frames
                s_valid_cmd (&rng, cmd, &buf, to);
                const void *frames [] = { buf.data, work, work, work, work };
                size_t sizes [] = { buf.size, 3, 0, 7, 1 };
                s_send (sock, frames, sizes, 3 + (int) s_below (&rng, 3));
                break;
            }
            case 5: {                           //  PING flood
                kim_cmd_init (cmd, KIM_CMD_PING);
                kim_buf_reset (&buf);
                KIM_CHECK (kim_cmd_encode (cmd, &buf) == 0);
                for (int i = 0; i < 200; i++)
                    s_send1 (sock, buf.data, buf.size);
                break;
            }
            case 6: {                           //  ACKs of random seqs
                kim_cmd_init (cmd, KIM_CMD_ACK);
                cmd->ack_count = 1 + s_below (&rng, KIM_ACKS_MAX);
                for (size_t i = 0; i < cmd->ack_count; i++)
                    cmd->acks [i] = 1 + s_itest_rand (&rng)
                                      % (s_below (&rng, 2)? 1000: UINT64_MAX - 1);
                kim_buf_reset (&buf);
                if (kim_cmd_encode (cmd, &buf) == 0)
                    s_send1 (sock, buf.data, buf.size);
                break;
            }
            case 7: {                           //  HELLO storm
                kim_cmd_init (cmd, KIM_CMD_HELLO);
                cmd->version_count = 1;
                cmd->versions [0] = KIM_PROTOCOL_VERSION;
                cmd->window = 4096;
                kim_buf_reset (&buf);
                KIM_CHECK (kim_cmd_encode (cmd, &buf) == 0);
                for (int i = 0; i < 50; i++)
                    s_send1 (sock, buf.data, buf.size);
                break;
            }
            case 8: {                           //  a fresh connection, commands before HELLO
                zsock_destroy (&socks [which]);
                socks [which] = which < FUZZERS
                    ? s_raw_new (self->broker, s_fuzz_orgs [which], NULL, NULL)
                    : s_raw_new (self->broker, s_fuzz_orgs [0], zcert_public_txt (stranger),
                                 zcert_secret_txt (stranger));
                for (int i = 0; i < 5; i++) {
                    s_valid_cmd (&rng, cmd, &buf, to);
                    if (cmd->id != KIM_CMD_HELLO)
                        s_send1 (socks [which], buf.data, buf.size);
                }
                break;
            }
            case 9: {                           //  valid traffic between fuzzers
                s_valid_cmd (&rng, cmd, &buf, to);
                const void *frames [] = { buf.data, work };
                size_t sizes [] = { buf.size, s_below (&rng, 2048) };
                s_send (sock, frames, sizes, cmd->id == KIM_CMD_SEND? 2: 1);
                break;
            }
            default: {                          //  deep nesting and huge claimed counts
                size_t depth = 1 + s_below (&rng, 200);
                size_t size = 0;
                work [size++] = 0x81;
                work [size++] = 0xa3; memcpy (work + size, "cmd", 3); size += 3;
                for (size_t i = 0; i < depth && size < 1000; i++)
                    work [size++] = s_below (&rng, 2)? 0x91: 0xdd;
                s_send1 (sock, work, size);
                break;
            }
        }
        for (int i = 0; i <= FUZZERS; i++)
            self->replies += s_drain_replies (socks [i]);
    }
    for (int i = 0; i <= FUZZERS; i++)
        zsock_destroy (&socks [i]);
    zcert_destroy (&stranger);
    kim_buf_free (&buf);
    free (big);
    free (work);
    free (cmd);
    return NULL;
}

//  The recipient's view: msg number -> seq delivered (0: not yet).
static void
s_receive (kim_client_t *recipient, uint64_t *delivered, uint32_t *deliveries, int timeout_ms)
{
    kim_event_t event;
    while (kim_client_recv (recipient, &event, timeout_ms) == 0) {
        timeout_ms = 0;
        KIM_CHECK (event.type == KIM_EVENT_DELIVER);
        unsigned number;
        if (streq (event.msg.sender, GOOD_SENDER)
        &&  sscanf (event.msg.msg_id, "good-%u", &number) == 1 && number < GOOD_MAX) {
            KIM_CHECK (!event.sealed_error);
            char expected [64];
            snprintf (expected, sizeof expected, "payload of good-%u", number);
            KIM_CHECK (event.payload_size == strlen (expected)
                       && memcmp (event.payload, expected, event.payload_size) == 0);
            //  At-least-once: a redelivery repeats the same seq, never another.
            KIM_CHECK (delivered [number] == 0 || delivered [number] == event.seq);
            if (delivered [number] == 0)
                deliveries [0]++;
            delivered [number] = event.seq;
        }
        ITEST_RC (kim_client_ack (recipient, event.seq), 0);
    }
}

int
main (void)
{
    KIM_CHECK (sodium_init () >= 0);
    const char *seconds_text = getenv ("KIM_NETFUZZ_SECONDS");
    const char *seed_text = getenv ("KIM_NETFUZZ_SEED");
    int seconds = seconds_text? atoi (seconds_text): 20;
    if (seconds <= 0)
        seconds = 20;
    fuzz_t *fuzz = (fuzz_t *) calloc (1, sizeof (fuzz_t));
    KIM_CHECK (fuzz);
    fuzz->seed = seed_text? strtoull (seed_text, NULL, 10): (uint64_t) zclock_time ();
    printf ("netfuzz: seed %" PRIu64 " (KIM_NETFUZZ_SEED), %d s (KIM_NETFUZZ_SECONDS)\n",
            fuzz->seed, seconds);
    fflush (stdout);
    s_corpus_load (fuzz, KIM_CORPUS_DIR);

    const char *orgs [] = { GOOD_SENDER, GOOD_RECIPIENT, "aba.f1", "aba.f2", "ebb.f3",
                            "ebb.f4", NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs, NULL);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_client_t *sender = kim_testbroker_client (broker, GOOD_SENDER, 0, false);
    kim_client_t *recipient = kim_testbroker_client (broker, GOOD_RECIPIENT, 64, true);
    KIM_CHECK (sender && recipient);

    fuzz->broker = broker;
    fuzz->deadline = zclock_mono () + seconds * 1000;
    pthread_t thread;
    KIM_CHECK (pthread_create (&thread, NULL, s_fuzzer, fuzz) == 0);

    uint64_t *receipted = (uint64_t *) calloc (GOOD_MAX, sizeof (uint64_t));
    uint64_t *delivered = (uint64_t *) calloc (GOOD_MAX, sizeof (uint64_t));
    KIM_CHECK (receipted && delivered);
    uint32_t sent = 0, first_deliveries = 0;
    while (zclock_mono () < fuzz->deadline && sent < GOOD_MAX) {
        kim_msg_t msg;
        char msg_id [32], payload [64];
        snprintf (msg_id, sizeof msg_id, "good-%u", sent);
        snprintf (payload, sizeof payload, "payload of good-%u", sent);
        s_itest_msg (&msg, GOOD_RECIPIENT, msg_id, msg_id);
        bool dup = false;
        int rc = kim_client_send (sender, &msg, payload, strlen (payload), &receipted [sent],
                                  &dup, 30000);
        if (rc) {
            fprintf (stderr, "netfuzz: good-%u refused or lost: %s (%s); seed %" PRIu64 "\n",
                     sent, kim_errname (rc), kim_client_error (sender), fuzz->seed);
            exit (1);
        }
        sent++;
        s_receive (recipient, delivered, &first_deliveries, 0);
    }
    atomic_store (&fuzz->stop, true);
    pthread_join (thread, NULL);

    //  Everything the agent sent arrives, once, under its receipted seq.
    int64_t deadline = zclock_mono () + 30000;
    while (first_deliveries < sent && zclock_mono () < deadline)
        s_receive (recipient, delivered, &first_deliveries, 200);
    for (uint32_t i = 0; i < sent; i++)
        if (delivered [i] != receipted [i]) {
            fprintf (stderr, "netfuzz: good-%u receipted as seq %" PRIu64 ", delivered as %"
                     PRIu64 "; seed %" PRIu64 "\n", i, receipted [i], delivered [i], fuzz->seed);
            exit (1);
        }
    KIM_CHECK (sent > 10);
    KIM_CHECK (kim_client_flush (recipient, 10000) == 0);

    //  Alive and serving.
    pid_t pid = kim_testbroker_pid (broker);
    KIM_CHECK (pid > 0 && kill (pid, 0) == 0);
    kim_status_t status;
    ITEST_RC (kim_client_status (sender, &status, 10000), 0);
    zsock_t *probe = s_raw_new (broker, "aba.f1", NULL, NULL);
    s_raw_hello (probe, "aba.f1", 0);
    s_raw_ping (probe);
    zsock_destroy (&probe);

    uint64_t actions = 0;
    for (int i = 0; i < 16; i++)
        actions += fuzz->sent [i];
    printf ("netfuzz: %u referrals receipted and delivered once; %" PRIu64 " hostile actions, %"
            PRIu64 " replies to them; broker alive\n", sent, actions, fuzz->replies);

    kim_client_destroy (&sender);
    kim_client_destroy (&recipient);
    //  A clean stop, so that LeakSanitizer reports what the broker leaked.
    int exit_status = kim_testbroker_stop (broker, SIGTERM);
    char log_path [PATH_MAX];
    snprintf (log_path, sizeof log_path, "%s/broker.log", kim_testbroker_dir (broker));
    FILE *log = fopen (log_path, "r");
    KIM_CHECK (log);
    char line [4096];
    bool dirty = false;
    while (fgets (line, sizeof line, log))
        if (strstr (line, "AddressSanitizer") || strstr (line, "LeakSanitizer")
        ||  strstr (line, "runtime error")) {
            fprintf (stderr, "netfuzz: broker.log: %s", line);
            dirty = true;
        }
    fclose (log);
    if (dirty || !WIFEXITED (exit_status) || WEXITSTATUS (exit_status) != 0) {
        fprintf (stderr, "netfuzz: sanitizer report or unclean exit (status %d); log in %s; "
                 "seed %" PRIu64 "\n", exit_status, log_path, fuzz->seed);
        exit (1);
    }
    for (size_t i = 0; i < fuzz->corpus_count; i++)
        free (fuzz->corpus [i].data);
    free (fuzz);
    free (receipted);
    free (delivered);
    s_itest_broker_destroy (&broker);
    printf ("netfuzz: no sanitizer report, clean exit: OK\n");
    return 0;
}
