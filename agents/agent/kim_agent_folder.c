/*  kim_agent_folder.c — the folder bridge, for case systems that only
    export and import files.

    Outbox folder (folder/outbox): the local system drops NAME.json, a
    message as POST /v1/messages takes it, and optionally NAME.payload, the
    payload's bytes; it writes each under another name first and renames it
    into place, the .payload before the .json, so the agent never reads a
    half file (it looks only at *.json, and never at names starting with a
    dot). A message without msg_id gets NAME as its msg_id, so dropping the
    same file again sends nothing twice. An accepted message is committed to
    the outbox like an HTTP post and its files move to accepted/; a refused
    one moves to refused/ with NAME.error.json beside it (kim's reason code,
    text and field). When the broker answers an accepted message, its outbox
    record (receipted with seq, or refused with kim's reason) is written as
    answers/NAME.json, so a system that speaks files only learns both. The agent reads no path from a file: names must be ids,
    and symbolic links, other non-regular files and oversized files are
    refused without being opened.

    Inbox folder (folder/inbox): every fresh delivery is queued for the
    folder in the commit that writes it into the inbox, and written as
    SEQ.payload (when it has one) and SEQ.json (the JSON of GET
    /v1/inbox/{seq}), each to a temporary dot-name, synced, renamed into
    place and the folder synced: a file that has its name is whole. The
    system takes SEQ.json files (and their .payload) away when it has them.

    A thread of its own; it touches only the store, the folders, and the
    link's wake-up pipe.
*/
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <czmq.h>
#include <sodium.h>

#include "kim_agent.h"

#define S_ROUND_MAX     64          //  files or deliveries handled per round

struct _kim_agent_folder_t {
    const kim_agent_config_t *config;
    kim_agent_store_t *store;
    kim_agent_shared_t *shared;
    int outbox_fd, accepted_fd, refused_fd, answers_fd, inbox_fd;
    pthread_t thread;
    bool started;
    atomic_bool stop;
};

//  Writes `name` in the folder atomically: a dot-name first, synced, then
//  renamed, then the folder synced. Returns 0 or -1.
static int
s_write_atomic (int dir_fd, const char *name, const void *data, size_t size)
{
    char temp [NAME_MAX + 16];
    snprintf (temp, sizeof temp, ".%s.tmp", name);
    int fd = openat (dir_fd, temp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    const uint8_t *bytes = (const uint8_t *) data;
    size_t done = 0;
    while (done < size) {
        ssize_t rc = write (fd, bytes + done, size - done);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            break;
        done += (size_t) rc;
    }
    int rc = done == size && fsync (fd) == 0? 0: -1;
    close (fd);
    if (rc == 0)
        rc = renameat (dir_fd, temp, dir_fd, name);
    if (rc == 0)
        rc = fsync (dir_fd);
    else
        unlinkat (dir_fd, temp, 0);
    return rc;
}

//  Reads a regular file (never through a link) of at most `max` bytes.
//  Returns 0, -KIM_E_NOT_FOUND, -KIM_E_TOO_LARGE, -KIM_E_BAD_VALUE (not a
//  regular file) or -KIM_E_IO.
static int
s_read_file (int dir_fd, const char *name, size_t max, uint8_t **data, size_t *size)
{
    *data = NULL;
    *size = 0;
    struct stat st;
    if (fstatat (dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return errno == ENOENT? -KIM_E_NOT_FOUND: -KIM_E_IO;
    if (!S_ISREG (st.st_mode))
        return -KIM_E_BAD_VALUE;
    if ((size_t) st.st_size > max)
        return -KIM_E_TOO_LARGE;
    int fd = openat (dir_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ELOOP? -KIM_E_BAD_VALUE: -KIM_E_IO;
    *data = (uint8_t *) malloc ((size_t) st.st_size + 1);
    size_t done = 0;
    int rc = *data? 0: -KIM_E_NOMEM;
    while (rc == 0 && done < (size_t) st.st_size) {
        ssize_t got = read (fd, *data + done, (size_t) st.st_size - done);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            rc = -KIM_E_IO;
        else
            done += (size_t) got;
    }
    close (fd);
    if (rc) {
        free (*data);
        *data = NULL;
        return rc;
    }
    (*data) [done] = 0;
    *size = done;
    return 0;
}

static void
s_move (kim_agent_folder_t *self, const char *name, int to_fd)
{
    if (renameat (self->outbox_fd, name, to_fd, name) != 0 && errno != ENOENT)
        zsys_warning ("kim-agent %s: cannot move %s out of the outbox folder: %s",
                      self->config->org, name, strerror (errno));
}

static void
s_refuse (kim_agent_folder_t *self, const char *name, const char *base, int code,
          const char *why, const char *path)
{
    code = code < 0? -code: code;
    json_t *error = json_pack ("{s:s, s:i, s:s, s:s, s:s}", "error", kim_errname (code),
                               "code", code, "text", why && *why? why: kim_strerror (code),
                               "path", path? path: "", "file", name);
    char *text = error? json_dumps (error, JSON_COMPACT): NULL;
    json_decref (error);
    char error_name [NAME_MAX + 16];
    snprintf (error_name, sizeof error_name, "%s.error.json", base);
    if (!text || s_write_atomic (self->refused_fd, error_name, text, strlen (text)) != 0)
        zsys_warning ("kim-agent %s: cannot write %s", self->config->org, error_name);
    free (text);
    s_move (self, name, self->refused_fd);
    char payload_name [NAME_MAX + 16];
    snprintf (payload_name, sizeof payload_name, "%s.payload", base);
    s_move (self, payload_name, self->refused_fd);
    zsys_warning ("kim-agent %s: outbox file refused: %s", self->config->org,
                  kim_errname (code));
}

//  answers/NAME.json: the outbox record once the broker answered.
static void
s_write_answer (kim_agent_folder_t *self, const char *base, json_t *record)
{
    char *text = json_dumps (record, JSON_COMPACT);
    char name [NAME_MAX + 16];
    snprintf (name, sizeof name, "%s.json", base);
    if (!text || s_write_atomic (self->answers_fd, name, text, strlen (text)) != 0)
        zsys_warning ("kim-agent %s: cannot write answers/%s", self->config->org, name);
    free (text);
}

static void
s_write_answers (kim_agent_folder_t *self)
{
    json_t *due = kim_agent_store_answers_due (self->store, S_ROUND_MAX);
    size_t index;
    json_t *pair;
    json_array_foreach (due, index, pair) {
        const char *msg_id = json_string_value (json_array_get (pair, 0));
        const char *base = json_string_value (json_array_get (pair, 1));
        json_t *record = msg_id? kim_agent_store_outbox_get (self->store, msg_id): NULL;
        if (record && base && kim_id_valid (base))
            s_write_answer (self, base, record);
        json_decref (record);
        if (msg_id && kim_agent_store_answers_done (self->store, msg_id) != 0)
            break;
    }
    json_decref (due);
}

//  One NAME.json of the outbox folder.
static void
s_send_file (kim_agent_folder_t *self, const char *name)
{
    char base [NAME_MAX + 1];
    snprintf (base, sizeof base, "%.*s", (int) (strlen (name) - 5), name);
    struct stat st;
    if (fstatat (self->outbox_fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 || S_ISDIR (st.st_mode))
        return;                     //  gone meanwhile, or a folder: not ours
    if (!S_ISREG (st.st_mode)) {
        s_refuse (self, name, kim_id_valid (base)? base: "refused", KIM_E_BAD_VALUE,
                  "not a regular file (a symbolic link?): refused", "");
        return;
    }
    if (!kim_id_valid (base)) {
        //  The error file is named after the id rule, not after the name
        s_refuse (self, name, "bad-name", KIM_E_BAD_ID, "the file name without .json must be "
                  "1..64 of A-Z a-z 0-9 . _ : -", "");
        return;
    }
    uint8_t *header = NULL, *payload = NULL;
    size_t header_size = 0, payload_size = 0;
    int rc = s_read_file (self->outbox_fd, name, self->config->max_body, &header, &header_size);
    if (rc) {
        s_refuse (self, name, base, rc, rc == -KIM_E_TOO_LARGE? "the file is larger than "
                  "http/max_body": "cannot read the file", "");
        return;
    }
    char payload_name [NAME_MAX + 16];
    snprintf (payload_name, sizeof payload_name, "%s.payload", base);
    rc = s_read_file (self->outbox_fd, payload_name, KIM_PAYLOAD_MAX, &payload, &payload_size);
    bool has_payload_file = rc == 0;
    if (rc && rc != -KIM_E_NOT_FOUND) {
        free (header);
        s_refuse (self, name, base, rc, rc == -KIM_E_TOO_LARGE? "the payload file is too large"
                  : "the payload file is not a regular file or cannot be read", "payload");
        return;
    }
    json_error_t jerr;
    json_t *root = json_loadb ((const char *) header, header_size, JSON_REJECT_DUPLICATES, &jerr);
    free (header);
    char why [KIM_TEXT_MAX + 1] = "", path [KIM_PATH_MAX + 1] = "";
    kim_msg_t msg;
    uint8_t *inline_payload = NULL;
    size_t inline_size = 0;
    if (!root) {
        snprintf (why, sizeof why, "not JSON (line %d, column %d): %.160s", jerr.line,
                  jerr.column, jerr.text);
        rc = -KIM_E_MALFORMED;
    }
    else
        rc = kim_json_message (root, &msg, &inline_payload, &inline_size, why, sizeof why,
                                     path, sizeof path);
    if (rc == 0 && has_payload_file && (json_object_get (root, "payload")
                                    ||  json_object_get (root, "payload_base64"))) {
        snprintf (why, sizeof why, "give the payload in %.80s or in the header, not both",
                  payload_name);
        snprintf (path, sizeof path, "payload");
        rc = -KIM_E_BAD_VALUE;
    }
    json_decref (root);
    if (rc == 0 && !msg.msg_id [0])
        kim_str_copy (msg.msg_id, sizeof msg.msg_id, base);
    json_t *record = NULL;
    if (rc == 0)
        rc = kim_agent_accept_message (self->config, self->store, &msg,
                                       has_payload_file? payload: inline_payload,
                                       has_payload_file? payload_size: inline_size,
                                       base, &record, why, sizeof why, path, sizeof path);
    free (payload);
    free (inline_payload);
    //  A file dropped again after the broker answered: its answer again
    const char *status = json_string_value (json_object_get (record, "status"));
    if (rc == 1 && status && !streq (status, "queued"))
        s_write_answer (self, base, record);
    json_decref (record);
    if (rc == -KIM_E_STORE_FULL || rc == -KIM_E_IO || rc == -KIM_E_NOMEM)
        return;                     //  ours to fix: the file stays and is tried again
    if (rc < 0) {
        s_refuse (self, name, base, rc == -KIM_E_REFERRAL_EXISTS? -KIM_E_BAD_VALUE: rc, why,
                  path);
        return;
    }
    if (rc == 0)
        kim_agent_wake (self->shared);
    //  The payload file first: the .json moving is what says "done"
    s_move (self, payload_name, self->accepted_fd);
    s_move (self, name, self->accepted_fd);
}

static void
s_scan_outbox (kim_agent_folder_t *self)
{
    int fd = dup (self->outbox_fd);
    DIR *dir = fd >= 0? fdopendir (fd): NULL;
    if (!dir) {
        if (fd >= 0)
            close (fd);
        return;
    }
    rewinddir (dir);
    zlistx_t *names = zlistx_new ();
    zlistx_set_destructor (names, (zlistx_destructor_fn *) zstr_free);
    struct dirent *entry;
    while (names && zlistx_size (names) < S_ROUND_MAX && (entry = readdir (dir)) != NULL) {
        size_t length = strlen (entry->d_name);
        if (entry->d_name [0] == '.' || length <= 5
        ||  !streq (entry->d_name + length - 5, ".json"))
            continue;
        zlistx_add_end (names, strdup (entry->d_name));
    }
    closedir (dir);
    for (char *name = names? (char *) zlistx_first (names): NULL; name;
         name = (char *) zlistx_next (names))
        if (!atomic_load (&self->stop))
            s_send_file (self, name);
    zlistx_destroy (&names);
}

static void
s_drop_deliveries (kim_agent_folder_t *self)
{
    json_t *due = kim_agent_store_drop_due (self->store, S_ROUND_MAX);
    size_t index;
    json_t *value;
    json_array_foreach (due, index, value) {
        uint64_t seq = (uint64_t) json_integer_value (value);
        json_t *delivery = kim_agent_store_inbox_get (self->store, seq);
        uint8_t *payload = NULL;
        size_t size = 0;
        int rc = delivery? kim_agent_store_inbox_payload (self->store, seq, &payload, &size): 0;
        char name [64];
        if (rc == 0 && delivery && size) {
            snprintf (name, sizeof name, "%" PRIu64 ".payload", seq);
            rc = s_write_atomic (self->inbox_fd, name, payload, size);
        }
        char *text = delivery? json_dumps (delivery, JSON_COMPACT): NULL;
        if (rc == 0 && delivery) {
            snprintf (name, sizeof name, "%" PRIu64 ".json", seq);
            rc = text? s_write_atomic (self->inbox_fd, name, text, strlen (text)): -1;
        }
        if (text)
            sodium_memzero (text, strlen (text));
        free (text);
        if (payload)
            sodium_memzero (payload, size);
        free (payload);
        json_decref (delivery);
        if (rc == 0)
            rc = kim_agent_store_drop_done (self->store, seq);
        if (rc) {
            zsys_warning ("kim-agent %s: cannot write seq %" PRIu64 " into the inbox folder; "
                          "trying again", self->config->org, seq);
            break;
        }
        if (self->config->verbose)
            zsys_debug ("kim-agent %s: seq %" PRIu64 " written into the inbox folder",
                        self->config->org, seq);
    }
    json_decref (due);
}

static void *
s_run (void *arg)
{
    kim_agent_folder_t *self = (kim_agent_folder_t *) arg;
    while (!atomic_load (&self->stop)) {
        if (self->outbox_fd >= 0) {
            s_scan_outbox (self);
            s_write_answers (self);
        }
        if (self->inbox_fd >= 0)
            s_drop_deliveries (self);
        for (int waited = 0; waited < self->config->folder_poll_ms && !atomic_load (&self->stop);
             waited += 50)
            zclock_sleep (50);
    }
    return NULL;
}

//  A crash while writing leaves a temporary dot-name of ours behind: the
//  delivery is still queued and is written again, so the leftover goes.
static void
s_remove_temps (int dir_fd)
{
    int fd = dup (dir_fd);
    DIR *dir = fd >= 0? fdopendir (fd): NULL;
    if (!dir) {
        if (fd >= 0)
            close (fd);
        return;
    }
    struct dirent *entry;
    while ((entry = readdir (dir)) != NULL) {
        size_t length = strlen (entry->d_name);
        if (entry->d_name [0] == '.' && length > 5
        &&  streq (entry->d_name + length - 4, ".tmp"))
            unlinkat (dir_fd, entry->d_name, 0);
    }
    closedir (dir);
}

static int
s_open_dir (int at_fd, const char *path, bool create)
{
    if (create && mkdirat (at_fd, path, 0700) != 0 && errno != EEXIST)
        return -1;
    return openat (at_fd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

kim_agent_folder_t *
kim_agent_folder_new (const kim_agent_config_t *config, kim_agent_store_t *store,
                      kim_agent_shared_t *shared, char *error, size_t error_size)
{
    kim_agent_folder_t *self = (kim_agent_folder_t *) calloc (1, sizeof *self);
    if (!self) {
        snprintf (error, error_size, "out of memory");
        return NULL;
    }
    self->config = config;
    self->store = store;
    self->shared = shared;
    self->outbox_fd = self->accepted_fd = self->refused_fd = self->answers_fd = -1;
    self->inbox_fd = -1;
    atomic_init (&self->stop, false);
    if (config->folder_outbox [0]) {
        self->outbox_fd = s_open_dir (AT_FDCWD, config->folder_outbox, false);
        if (self->outbox_fd >= 0) {
            self->accepted_fd = s_open_dir (self->outbox_fd, "accepted", true);
            self->refused_fd = s_open_dir (self->outbox_fd, "refused", true);
            self->answers_fd = s_open_dir (self->outbox_fd, "answers", true);
        }
        if (self->outbox_fd < 0 || self->accepted_fd < 0 || self->refused_fd < 0
        ||  self->answers_fd < 0) {
            snprintf (error, error_size, "folder/outbox: cannot open %s or make accepted/, "
                      "refused/ and answers/ in it: %s", config->folder_outbox, strerror (errno));
            kim_agent_folder_destroy (&self);
            return NULL;
        }
    }
    if (config->folder_inbox [0]) {
        self->inbox_fd = s_open_dir (AT_FDCWD, config->folder_inbox, false);
        if (self->inbox_fd < 0) {
            snprintf (error, error_size, "folder/inbox: cannot open %s: %s", config->folder_inbox,
                      strerror (errno));
            kim_agent_folder_destroy (&self);
            return NULL;
        }
        s_remove_temps (self->inbox_fd);
    }
    if (pthread_create (&self->thread, NULL, s_run, self) != 0) {
        snprintf (error, error_size, "cannot start the folder thread");
        kim_agent_folder_destroy (&self);
        return NULL;
    }
    self->started = true;
    return self;
}

void
kim_agent_folder_destroy (kim_agent_folder_t **self_p)
{
    if (self_p && *self_p) {
        kim_agent_folder_t *self = *self_p;
        atomic_store (&self->stop, true);
        if (self->started)
            pthread_join (self->thread, NULL);
        int fds [5] = { self->outbox_fd, self->accepted_fd, self->refused_fd, self->answers_fd,
                        self->inbox_fd };
        for (int i = 0; i < 5; i++)
            if (fds [i] >= 0)
                close (fds [i]);
        free (self);
        *self_p = NULL;
    }
}
