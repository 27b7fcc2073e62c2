/*  test_erasure_disk.c — an erasure or a retention purge leaves nothing on
    disk that holds or opens the erased payloads.

    Over a real broker (payloads sent as plaintext, so the bytes the broker
    stores are exactly the random bytes the test chose): three transfers
    about subject p-erase, two in case C-R, one about p-keep. The test reads
    the at-rest key of each payload from the key store (read-only, beside
    the running broker), erases p-erase, closes C-R and moves the clock past
    retention/payload_seconds. Once the payloads are gone it stops the
    broker, makes a backup (kim_backup_run, what `kim-broker --backup`
    runs), and scans every file under the broker's folder (data folder,
    backup, the broker's log) for each erased payload and each erased key:
    one hit fails the test. For contrast, p-keep's key is found in the key
    store (the scan can see keys) and its payload still reads from the live
    store and from the backup.

    With KIM_POWERCUT=<path of libkim_powercut_shim.so> the broker is not
    stopped but cut from the power once the erased keys have left its key
    store (tests/fault/powercut): every write no flush covered is taken back,
    and so is the key store's compaction if its rename was not made durable.
    The erasure must hold all the same.
*/
#include <dirent.h>
#include <sys/stat.h>

#include "kim_lctest.h"
#include "kim_backup.h"
#include "kim_powercut.h"
#include "kim_store.h"

#define KIM     "kim.rheine"
#define JC      "jc.rheine"
#define ERASED  5               //  three erased, two purged by retention
#define PAYLOAD 48

typedef struct {
    const char *referral;
    const char *case_id;
    const char *subject;
    uint8_t payload [PAYLOAD];
    uint8_t key [32];
    uint64_t seq;
} s_transfer_t;

static s_transfer_t s_transfers [] = {
    { .referral = "RE1", .case_id = "C-E",  .subject = "p-erase" },
    { .referral = "RE2", .case_id = "C-E",  .subject = "p-erase" },
    { .referral = "RE3", .case_id = "C-E2", .subject = "p-erase" },
    { .referral = "RR1", .case_id = "C-R",  .subject = "p-ret" },
    { .referral = "RR2", .case_id = "C-R",  .subject = "p-ret" },
    { .referral = "RK1", .case_id = "C-K",  .subject = "p-keep" },
};
#define S_COUNT (sizeof s_transfers / sizeof s_transfers [0])

static kim_store_t *
s_open_store (const char *path)
{
    kim_store_config_t config = { .path = path, .read_only = true };
    int err = 0;
    kim_store_t *store = kim_store_new (&config, &err);
    if (!store)
        fprintf (stderr, "test_erasure_disk: %s: %s\n", path, kim_strerror (err));
    KIM_CHECK (store);
    return store;
}

//  How many of the transfers in [from, to) still have a stored payload.
static int
s_stored (const char *path, size_t from, size_t to)
{
    kim_store_t *store = s_open_store (path);
    int stored = 0;
    KIM_CHECK (kim_store_read_begin (store) == 0);
    for (size_t i = from; i < to; i++) {
        int rc = kim_store_payload_exists (store, s_transfers [i].seq);
        KIM_CHECK (rc >= 0);
        stored += rc;
    }
    kim_store_read_end (store);
    kim_store_destroy (&store);
    return stored;
}

//  Polls until no payload of [from, to) is stored (the broker keeps serving).
static void
s_await_gone (const char *path, size_t from, size_t to, const char *what)
{
    int64_t deadline = s_itest_now () + 20000;
    while (s_stored (path, from, to) > 0) {
        if (s_itest_now () > deadline) {
            fprintf (stderr, "test_erasure_disk: %s: payloads still stored\n", what);
            exit (1);
        }
        zclock_sleep (100);             //  poll interval, not synchronisation
    }
}

static void
s_check_payload (const char *path, const s_transfer_t *transfer)
{
    kim_store_t *store = s_open_store (path);
    KIM_CHECK (kim_store_read_begin (store) == 0);
    const uint8_t *data;
    size_t size;
    KIM_CHECK (kim_store_payload_get (store, transfer->seq, &data, &size) == 0);
    KIM_CHECK (size == PAYLOAD && memcmp (data, transfer->payload, PAYLOAD) == 0);
    kim_store_read_end (store);
    kim_store_destroy (&store);
}

//  Whether the file at `path` holds none of the first `count` transfers' keys.
static bool
s_keys_gone (const char *path, size_t count)
{
    FILE *file = fopen (path, "rb");
    if (!file)
        return false;
    static uint8_t bytes [4 << 20];
    size_t got = fread (bytes, 1, sizeof bytes, file);
    fclose (file);
    for (size_t i = 0; i < count; i++)
        if (memmem (bytes, got, s_transfers [i].key, 32))
            return false;
    return true;
}

//  Counts the files in which `needle` occurs, under `path`; lists them.
static int
s_scan (const char *path, const uint8_t *needle, size_t size, const char *what, int *files)
{
    DIR *dir = opendir (path);
    KIM_CHECK (dir);
    int hits = 0;
    struct dirent *entry;
    while ((entry = readdir (dir))) {
        if (streq (entry->d_name, ".") || streq (entry->d_name, ".."))
            continue;
        char child [PATH_MAX];
        KIM_CHECK (snprintf (child, sizeof child, "%s/%s", path, entry->d_name)
                   < (int) sizeof child);
        struct stat st;
        KIM_CHECK (lstat (child, &st) == 0);
        if (S_ISDIR (st.st_mode)) {
            hits += s_scan (child, needle, size, what, files);
            continue;
        }
        if (!S_ISREG (st.st_mode))
            continue;
        if (files)
            (*files)++;
        FILE *file = fopen (child, "rb");
        KIM_CHECK (file);
        uint8_t *bytes = (uint8_t *) malloc ((size_t) st.st_size + 1);
        KIM_CHECK (bytes);
        size_t got = fread (bytes, 1, (size_t) st.st_size, file);
        fclose (file);
        if (memmem (bytes, got, needle, size)) {
            printf ("  %s found in %s\n", what, child);
            hits++;
        }
        free (bytes);
    }
    closedir (dir);
    return hits;
}

int
main (void)
{
    KIM_CHECK (sodium_init () >= 0);
    const char *orgs [] = { KIM, JC, NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs, "retention\n    payload_seconds = 3600\n");
    kim_testbroker_plaintext (broker, true);    //  stored bytes = the bytes sent
    const char *dir = kim_testbroker_dir (broker);
    char clock_path [PATH_MAX], data [PATH_MAX], store_path [PATH_MAX], backup [PATH_MAX],
         backup_store [PATH_MAX];
    snprintf (clock_path, sizeof clock_path, "%s/clock", dir);
    snprintf (data, sizeof data, "%s/data", dir);
    snprintf (store_path, sizeof store_path, "%s/data/store", dir);
    snprintf (backup, sizeof backup, "%s/backup", dir);
    snprintf (backup_store, sizeof backup_store, "%s/backup/store", dir);
    FILE *file = fopen (clock_path, "w");
    KIM_CHECK (file && fprintf (file, "0\n") > 0 && fclose (file) == 0);
    KIM_CHECK (setenv ("KIM_CLOCK_FILE", clock_path, 1) == 0);
    const char *powercut = getenv ("KIM_POWERCUT");
    if (powercut && powercut [0]) {
        kim_testbroker_preload (broker, powercut);
        KIM_CHECK (setenv ("KIM_POWERCUT_DIR", data, 1) == 0);
    }
    else
        powercut = NULL;
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_client_t *kim = kim_testbroker_client (broker, KIM, 64, false);
    kim_client_t *jc = kim_testbroker_client (broker, JC, 64, false);
    KIM_CHECK (kim && jc);

    kim_msg_t msg;
    bool dup;
    for (size_t i = 0; i < S_COUNT; i++) {
        s_transfer_t *transfer = &s_transfers [i];
        randombytes_buf (transfer->payload, PAYLOAD);
        char msg_id [32];
        snprintf (msg_id, sizeof msg_id, "m-%s", transfer->referral);
        s_lc_msg (&msg, KIM_TYPE_REFERRAL, JC, transfer->referral, msg_id, transfer->case_id);
        snprintf (msg.subject, sizeof msg.subject, "%s", transfer->subject);
        ITEST_RC (kim_client_send (kim, &msg, transfer->payload, PAYLOAD, &transfer->seq, &dup,
                                   10000), 0);
    }
    //  The at-rest keys, read beside the running broker
    kim_store_t *store = s_open_store (store_path);
    for (size_t i = 0; i < S_COUNT; i++)
        KIM_CHECK (kim_store_payload_key (store, s_transfers [i].seq, s_transfers [i].key) == 1);
    kim_store_destroy (&store);
    KIM_CHECK (s_stored (store_path, 0, S_COUNT) == (int) S_COUNT);

    //  Erasure of p-erase
    kim_msg_init (&msg);
    msg.type = KIM_TYPE_ERASURE;
    msg.created_at = (uint64_t) zclock_time ();
    snprintf (msg.msg_id, sizeof msg.msg_id, "erase-p-erase");
    snprintf (msg.subject, sizeof msg.subject, "p-erase");
    uint64_t seq = 0;
    ITEST_RC (kim_client_send (kim, &msg, NULL, 0, &seq, &dup, 10000), 0);
    s_await_gone (store_path, 0, 3, "erasure");
    KIM_CHECK (s_stored (store_path, 3, S_COUNT) == 3);

    //  Retention of the closed case C-R, an hour later (moved clock)
    s_lc_msg (&msg, KIM_TYPE_CASE_CLOSED, NULL, "C-R", "close-C-R", NULL);
    LC_SEND (kim, &msg, 0, "");
    file = fopen (clock_path, "w");
    KIM_CHECK (file && fprintf (file, "%d\n", 3700 * 1000) > 0 && fclose (file) == 0);
    s_await_gone (store_path, 3, 5, "retention");
    KIM_CHECK (s_stored (store_path, 5, S_COUNT) == 1);

    kim_client_destroy (&kim);
    kim_client_destroy (&jc);
    if (powercut) {
        //  Once the key store was compacted without the erased keys, the
        //  power fails
        char keys_file [PATH_MAX + 32];
        snprintf (keys_file, sizeof keys_file, "%s/keys/data.mdb", store_path);
        int64_t deadline = s_itest_now () + 20000;
        while (!s_keys_gone (keys_file, ERASED)) {
            KIM_CHECK (s_itest_now () < deadline);
            zclock_sleep (50);          //  poll interval, not synchronisation
        }
        int status = kim_testbroker_stop (broker, SIGKILL);
        KIM_CHECK (WIFSIGNALED (status) && WTERMSIG (status) == SIGKILL);
        uint64_t rng = 1;
        kim_powercut_stats_t cut;
        KIM_CHECK (kim_powercut_apply (data, true, &rng, &cut) == 0);
        printf ("  power cut: %" PRIu64 " unsynced writes in %" PRIu64 " files, %" PRIu64
                " pages and %" PRIu64 " renames taken back\n", cut.writes, cut.files,
                cut.pages_back, cut.renames_back);
        KIM_CHECK (cut.files >= 2);     //  the library watched the store and the key store
    }
    else
        KIM_CHECK (kim_testbroker_stop (broker, SIGTERM) == 0);

    //  A backup after the erasure, as `kim-broker --backup` makes it
    char error [512] = "";
    kim_backup_result_t result;
    if (kim_backup_run (data, backup, &result, error, sizeof error)) {
        fprintf (stderr, "test_erasure_disk: backup: %s\n", error);
        return 1;
    }

    //  What is kept still reads, from the live store and from the backup
    const s_transfer_t *kept = &s_transfers [S_COUNT - 1];
    s_check_payload (store_path, kept);
    s_check_payload (backup_store, kept);

    //  The scan: no erased payload, no erased key, in any file
    int files = 0, hits = 0;
    for (size_t i = 0; i < ERASED; i++) {
        char what [64];
        snprintf (what, sizeof what, "payload of %s", s_transfers [i].referral);
        hits += s_scan (dir, s_transfers [i].payload, PAYLOAD, what, i == 0? &files: NULL);
        snprintf (what, sizeof what, "key of %s", s_transfers [i].referral);
        hits += s_scan (dir, s_transfers [i].key, 32, what, NULL);
    }
    printf ("  scanned %d files for %d erased payloads and their keys: %d hits\n", files,
            ERASED, hits);
    KIM_CHECK (files >= 4);
    KIM_CHECK (hits == 0);
    //  The scan sees keys: the kept payload's key is in the live key store
    //  and in the backup's, and nowhere else
    KIM_CHECK (s_scan (dir, kept->key, 32, "key of RK1 (kept)", NULL) == 2);
    //  ... and the payloads are not stored as they came
    KIM_CHECK (s_scan (dir, kept->payload, PAYLOAD, "payload of RK1 (kept)", NULL) == 0);

    s_itest_broker_destroy (&broker);
    printf ("test_erasure_disk: OK\n");
    return 0;
}
