/*  test_agent_folder.c — an office that speaks files only.

    Office A's system drops messages into A's outbox folder (a header with
    an inline payload; a header with a payload file; one without msg_id,
    named by its file); office B's agent writes the deliveries into B's
    inbox folder, whole, with their payloads. Files that try path tricks or
    are broken are refused into refused/ with an error file, never followed
    or half read; half-written files (temporary names) are left alone.
    B's agent is killed right after committing deliveries and before
    writing them out: after the restart every delivery is in the folder,
    and dropping an accepted file again sends nothing twice.
*/
#include <czmq.h>
#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "kim_agenttest.h"

static void
s_write (const char *dir, const char *name, const char *text)
{
    //  As a system should: a temporary name, then a rename
    char temp [300], path [300];
    snprintf (temp, sizeof temp, "%s/.%s.part", dir, name);
    snprintf (path, sizeof path, "%s/%s", dir, name);
    FILE *file = fopen (temp, "w");
    KIM_CHECK (file);
    fputs (text, file);
    fclose (file);
    KIM_CHECK (rename (temp, path) == 0);
}

static bool
s_exists (const char *dir, const char *name)
{
    char path [300];
    snprintf (path, sizeof path, "%s/%s", dir, name);
    struct stat st;
    return lstat (path, &st) == 0;
}

static bool
s_wait_exists (const char *dir, const char *name)
{
    for (int attempt = 0; attempt < 600; attempt++) {
        if (s_exists (dir, name))
            return true;
        zclock_sleep (50);
    }
    fprintf (stderr, "%s/%s never appeared\n", dir, name);
    return false;
}

static json_t *
s_load (const char *dir, const char *name)
{
    char path [300];
    snprintf (path, sizeof path, "%s/%s", dir, name);
    return json_load_file (path, 0, NULL);
}

//  The .json files of the inbox folder, by msg_id; fails on a msg_id twice.
//  Temporary dot-names (a write in progress) are not files of the folder.
static size_t
s_inbox_files (const char *dir, zhashx_t *ids)
{
    DIR *handle = opendir (dir);
    KIM_CHECK (handle);
    struct dirent *entry;
    size_t count = 0;
    while ((entry = readdir (handle)) != NULL) {
        const char *name = entry->d_name;
        if (name [0] == '.')
            continue;
        size_t length = strlen (name);
        if (length > 5 && streq (name + length - 5, ".json")) {
            json_t *json = s_load (dir, name);
            KIM_CHECK (json);
            const char *msg_id = json_string_value (json_object_get (json, "msg_id"));
            KIM_CHECK (msg_id);
            KIM_CHECK (atoll (name) == json_integer_value (json_object_get (json, "seq")));
            KIM_CHECK (zhashx_insert (ids, msg_id, (void *) 1) == 0);
            json_decref (json);
            count++;
        }
    }
    closedir (handle);
    return count;
}

int
main (void)
{
    const char *orgs [] = { "kim.a", "jc.b", NULL };
    kim_testbroker_t *broker = kim_testbroker_new (orgs, NULL);
    KIM_CHECK (broker);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    char out_dir [200], in_dir [200], accepted [220], refused [220], extra_a [400], extra_b [400];
    snprintf (out_dir, sizeof out_dir, "%s/a-out", kim_testbroker_dir (broker));
    snprintf (in_dir, sizeof in_dir, "%s/b-in", kim_testbroker_dir (broker));
    snprintf (accepted, sizeof accepted, "%s/accepted", out_dir);
    snprintf (refused, sizeof refused, "%s/refused", out_dir);
    KIM_CHECK (mkdir (out_dir, 0700) == 0);
    KIM_CHECK (mkdir (in_dir, 0700) == 0);
    snprintf (extra_a, sizeof extra_a, "folder\n    outbox = \"%s\"\n    poll_ms = 50\n", out_dir);
    snprintf (extra_b, sizeof extra_b, "folder\n    inbox = \"%s\"\n    poll_ms = 50\n", in_dir);
    kim_agenttest_t a, b;
    KIM_CHECK (kim_agenttest_init (&a, broker, "kim.a", extra_a) == 0);
    KIM_CHECK (kim_agenttest_init (&b, broker, "jc.b", extra_b) == 0);
    KIM_CHECK (kim_agenttest_start (&a, true) == 0);
    KIM_CHECK (kim_agenttest_start (&b, true) == 0);

    //  Hostile and broken files first, and a half-written one
    char target [300], link_path [300];
    snprintf (target, sizeof target, "%s/agent.cfg", a.dir);
    snprintf (link_path, sizeof link_path, "%s/evil.json", out_dir);
    KIM_CHECK (symlink (target, link_path) == 0);
    snprintf (link_path, sizeof link_path, "%s/linked.payload", out_dir);
    KIM_CHECK (symlink (target, link_path) == 0);
    s_write (out_dir, "linked.json", "{\"type\":\"ACCEPT\",\"recipient\":\"jc.b\","
             "\"referral_id\":\"r\"}");
    s_write (out_dir, "bad.json", "{\"type\":");
    s_write (out_dir, "bad name.json", "{}");
    s_write (out_dir, "wrong.json", "{\"type\":\"ACCEPT\",\"recipient\":\"jc.b\"}");
    char subdir [300];
    snprintf (subdir, sizeof subdir, "%s/folder.json", out_dir);
    KIM_CHECK (mkdir (subdir, 0700) == 0);
    s_write (out_dir, "m-half.json.part", "{\"type\":\"REF");
    s_write (out_dir, ".m-hidden.json", "{}");

    //  Three good messages
    const char *referral =
        "{\"type\":\"REFERRAL\",%s\"recipient\":\"jc.b\",\"referral_id\":\"%s\","
        "\"case_id\":\"c-f\",\"subject\":\"p-f\",\"purpose\":\"job_placement\","
        "\"legal_basis\":{\"kind\":\"statute\",\"citation\":\"SGB X §69(1)1\"}%s}";
    char text [1024];
    snprintf (text, sizeof text, referral, "\"msg_id\":\"m-f-1\",", "r-f-1",
              ",\"payload\":\"inline text\"");
    s_write (out_dir, "one.json", text);
    s_write (out_dir, "m-f-2.payload", "payload from a file");
    snprintf (text, sizeof text, referral, "", "r-f-2", "");
    s_write (out_dir, "m-f-2.json", text);

    //  One the broker will refuse: an answer to a referral it does not know
    s_write (out_dir, "ghost.json", "{\"type\":\"ACCEPT\",\"recipient\":\"jc.b\","
             "\"referral_id\":\"r-ghost\"}");

    KIM_CHECK (s_wait_exists (accepted, "one.json"));
    KIM_CHECK (s_wait_exists (accepted, "m-f-2.json"));
    KIM_CHECK (s_exists (accepted, "m-f-2.payload"));
    KIM_CHECK (!s_exists (out_dir, "one.json") && !s_exists (out_dir, "m-f-2.json"));

    //  The refusals, each with its reason
    KIM_CHECK (s_wait_exists (refused, "evil.error.json"));
    KIM_CHECK (s_wait_exists (refused, "bad.error.json"));
    KIM_CHECK (s_wait_exists (refused, "bad-name.error.json"));
    KIM_CHECK (s_wait_exists (refused, "wrong.error.json"));
    KIM_CHECK (s_wait_exists (refused, "linked.error.json"));
    const char *expect [][2] = {
        { "evil.error.json", "BAD_VALUE" }, { "bad.error.json", "MALFORMED" },
        { "bad-name.error.json", "BAD_ID" }, { "wrong.error.json", "MISSING_FIELD" },
        { "linked.error.json", "BAD_VALUE" }
    };
    for (size_t i = 0; i < sizeof expect / sizeof expect [0]; i++) {
        json_t *error = s_load (refused, expect [i][0]);
        KIM_CHECK (error);
        KIM_CHECK (streq (json_string_value (json_object_get (error, "error")), expect [i][1]));
        json_decref (error);
    }
    KIM_CHECK (s_exists (refused, "evil.json"));        //  the link moved, not followed
    struct stat st;
    KIM_CHECK (stat (target, &st) == 0);                 //  its target untouched
    KIM_CHECK (s_exists (out_dir, "m-half.json.part"));  //  left alone
    KIM_CHECK (s_exists (out_dir, ".m-hidden.json"));
    KIM_CHECK (s_exists (out_dir, "folder.json"));

    //  The broker's answers come back as files
    char answers [220];
    snprintf (answers, sizeof answers, "%s/answers", out_dir);
    const char *answered [][3] = {
        { "one.json", "m-f-1", "receipted" }, { "m-f-2.json", "m-f-2", "receipted" },
        { "ghost.json", "ghost", "refused" }
    };
    for (size_t i = 0; i < 3; i++) {
        KIM_CHECK (s_wait_exists (answers, answered [i][0]));
        json_t *answer = s_load (answers, answered [i][0]);
        KIM_CHECK (answer);
        KIM_CHECK (streq (json_string_value (json_object_get (answer, "msg_id")), answered [i][1]));
        KIM_CHECK (streq (json_string_value (json_object_get (answer, "status")), answered [i][2]));
        if (streq (answered [i][2], "receipted"))
            KIM_CHECK (json_integer_value (json_object_get (answer, "seq")) > 0);
        else
            KIM_CHECK (streq (json_string_value (json_object_get (answer, "error")),
                              "UNKNOWN_REFERRAL"));
        KIM_CHECK (!json_object_get (answer, "_folder"));
        json_decref (answer);
    }

    //  B's inbox folder: both messages, with their payloads
    zhashx_t *ids = zhashx_new ();
    for (int attempt = 0; attempt < 600; attempt++) {
        zhashx_purge (ids);
        if (s_inbox_files (in_dir, ids) >= 2)
            break;
        zclock_sleep (50);
    }
    KIM_CHECK (zhashx_size (ids) == 2);
    KIM_CHECK (zhashx_lookup (ids, "m-f-1") && zhashx_lookup (ids, "m-f-2"));
    json_t *inbox = NULL;
    KIM_CHECK (kim_agenttest_call (&b, "GET", "/v1/inbox", NULL, &inbox) == 200);
    KIM_CHECK (json_array_size (json_object_get (inbox, "items")) == 2);
    size_t index;
    json_t *item;
    json_array_foreach (json_object_get (inbox, "items"), index, item) {
        char name [64];
        json_int_t seq = json_integer_value (json_object_get (item, "seq"));
        snprintf (name, sizeof name, "%lld.json", (long long) seq);
        json_t *file = s_load (in_dir, name);
        KIM_CHECK (file);
        const char *payload = json_string_value (json_object_get (file, "payload"));
        const char *msg_id = json_string_value (json_object_get (file, "msg_id"));
        KIM_CHECK (payload && streq (payload, streq (msg_id, "m-f-1")? "inline text"
                                                                     : "payload from a file"));
        json_decref (file);
        snprintf (name, sizeof name, "%lld.payload", (long long) seq);
        KIM_CHECK (s_exists (in_dir, name));
    }
    json_decref (inbox);

    //  Dropping an accepted file again sends nothing twice
    snprintf (text, sizeof text, referral, "", "r-f-2", "");
    s_write (out_dir, "m-f-2.payload", "payload from a file");
    s_write (out_dir, "m-f-2.json", text);
    for (int attempt = 0; attempt < 600 && s_exists (out_dir, "m-f-2.json"); attempt++)
        zclock_sleep (50);
    KIM_CHECK (!s_exists (out_dir, "m-f-2.json"));
    KIM_CHECK (s_exists (accepted, "m-f-2.json"));

    //  B dies right after committing deliveries, before the folder has them
    kim_agenttest_stop (&b, SIGTERM);
    for (int i = 3; i < 13; i++) {
        char name [32], id [32], msg [64];
        snprintf (name, sizeof name, "m-f-%d.json", i);
        snprintf (id, sizeof id, "r-f-%d", i);
        snprintf (msg, sizeof msg, "\"msg_id\":\"m-f-%d\",", i);
        snprintf (text, sizeof text, referral, msg, id, ",\"payload\":\"more\"");
        s_write (out_dir, name, text);
    }
    KIM_CHECK (s_wait_exists (accepted, "m-f-12.json"));
    b.env = "KIM_AGENT_CRASH_AFTER_DELIVERIES=1";
    if (kim_agenttest_start (&b, false) == 0) {
        int status = kim_agenttest_wait (&b);
        KIM_CHECK (WIFSIGNALED (status) && WTERMSIG (status) == SIGKILL);
    }
    KIM_CHECK (kim_agenttest_start (&b, true) == 0);
    for (int attempt = 0; attempt < 600; attempt++) {
        zhashx_purge (ids);
        if (s_inbox_files (in_dir, ids) >= 12)
            break;
        zclock_sleep (50);
    }
    KIM_CHECK (zhashx_size (ids) == 12);
    KIM_CHECK (kim_agenttest_call (&b, "GET", "/v1/inbox", NULL, &inbox) == 200);
    KIM_CHECK (json_array_size (json_object_get (inbox, "items")) == 12);
    json_decref (inbox);
    zhashx_destroy (&ids);
    //  After a clean stop no temporary file is left: the one the crash may
    //  have left was removed at the restart
    int status = kim_agenttest_stop (&b, SIGTERM);
    KIM_CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0);
    DIR *handle = opendir (in_dir);
    KIM_CHECK (handle);
    struct dirent *entry;
    while ((entry = readdir (handle)) != NULL)
        KIM_CHECK (streq (entry->d_name, ".") || streq (entry->d_name, "..")
                   || entry->d_name [0] != '.');
    closedir (handle);

    kim_agenttest_cleanup (&a);
    kim_agenttest_cleanup (&b);
    kim_testbroker_destroy (&broker);
    printf ("agent.folder: OK\n");
    return 0;
}
