/*  kim_agent_users.c — staff accounts, login lockout and sessions.

    Accounts live in a small text file (web/users, mode 0600), one
    "name role hash" line each, where the hash is libsodium's argon2id string
    (crypto_pwhash_str: salt and parameters inside). `kim-agent --add-user`
    writes it atomically; the agent re-reads it when it changes, so accounts
    can be added while the agent runs.

    A login with an unknown name still runs one argon2id verification, so
    the answer's timing does not tell which names exist. After max_failures
    failed logins for a name within lockout_s, that name is locked out for
    lockout_s, right password or not; an address is locked after four times
    as many (an office's staff often share one address behind a router, and
    one forgetful colleague must not lock out the rest).

    Sessions are kept in memory only (a restart signs everyone out): a
    random id for the cookie, the user, the role, and a random CSRF token
    that every form carries. A session ends on logout, after 30 minutes
    without a request, or after 12 hours.
*/
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <czmq.h>
#include <sodium.h>

#include "kim_agent_web.h"

#define S_USERS_MAX         256
#define S_SESSIONS_MAX      512
#define S_TRACKED_MAX       1024
#define S_IDLE_MS           (30 * 60 * 1000)
#define S_LIFETIME_MS       (12 * 3600 * 1000)
#define S_FILE_MAX          (S_USERS_MAX * 256)

typedef struct {
    char name [KIM_AGENT_USER_MAX + 1];
    kim_agent_role_t role;
    char hash [crypto_pwhash_STRBYTES];
} s_user_t;

typedef struct {
    uint8_t sid_hash [32];              //  BLAKE2b of the cookie value: a memory dump holds no live id
    kim_agent_session_t session;
    uint64_t created;
    uint64_t seen;
    bool used;
} s_session_t;

//  Failed logins of a user name or an address.
typedef struct {
    char key [80];                      //  "u:name" or "a:address"
    uint32_t failures;
    uint64_t first;                     //  the first failure of the current window
    uint64_t locked_until;
} s_tracked_t;

struct _kim_agent_users_t {
    pthread_mutex_t mutex;
    char path [PATH_MAX];
    struct timespec mtime;
    off_t file_size;
    s_user_t *users;
    size_t user_count;
    s_session_t *sessions;
    s_tracked_t *tracked;
    uint32_t max_failures;
    uint64_t lockout_ms;
    kim_agent_clock_fn *clock;          //  ms; the wall clock unless a test moves it
    char dummy_hash [crypto_pwhash_STRBYTES];
};

static uint64_t
s_wall_clock (void)
{
    return (uint64_t) zclock_time ();
}

bool
kim_agent_users_name_valid (const char *name)
{
    size_t length = name? strlen (name): 0;
    if (length == 0 || length > KIM_AGENT_USER_MAX)
        return false;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '.' || *p == '_'
           || *p == '-'))
            return false;
    return true;
}

static kim_agent_role_t
s_role (const char *text)
{
    return streq (text, "staff")? KIM_AGENT_ROLE_STAFF
         : streq (text, "readonly")? KIM_AGENT_ROLE_READONLY: KIM_AGENT_ROLE_NONE;
}

void
kim_agent_users_token (char out [KIM_AGENT_TOKEN_HEX + 1])
{
    uint8_t random [KIM_AGENT_TOKEN_HEX / 2];
    randombytes_buf (random, sizeof random);
    sodium_bin2hex (out, KIM_AGENT_TOKEN_HEX + 1, random, sizeof random);
}

//  Reads the accounts file into `users`; returns the count or -1. Lines
//  that are not "name role $argon2id$..." are skipped with a warning.
static int
s_parse (const char *path, s_user_t *users, struct stat *st_out)
{
    int fd = open (path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd == -1)
        return errno == ENOENT? 0: -1;
    struct stat st;
    if (fstat (fd, &st) != 0 || !S_ISREG (st.st_mode) || st.st_size > S_FILE_MAX
    ||  (st.st_mode & (S_IRWXG | S_IRWXO))) {
        zsys_error ("kim-agent: web/users %s must be a regular file of mode 0600 and at most "
                    "%d bytes; no logins until it is", path, S_FILE_MAX);
        close (fd);
        return -1;
    }
    char *text = (char *) calloc (1, (size_t) st.st_size + 1);
    ssize_t got = text? read (fd, text, (size_t) st.st_size): -1;
    close (fd);
    if (got != st.st_size) {
        free (text);
        return -1;
    }
    *st_out = st;
    int count = 0;
    size_t line_number = 0;
    char *save = NULL;
    for (char *line = strtok_r (text, "\n", &save); line; line = strtok_r (NULL, "\n", &save)) {
        line_number++;
        if (*line == '#' || !*line)
            continue;
        char *fields [3] = { NULL, NULL, NULL };
        char *field_save = NULL;
        fields [0] = strtok_r (line, " \t\r", &field_save);
        fields [1] = fields [0]? strtok_r (NULL, " \t\r", &field_save): NULL;
        fields [2] = fields [1]? strtok_r (NULL, " \t\r", &field_save): NULL;
        if (!fields [2] || !kim_agent_users_name_valid (fields [0])
        ||  s_role (fields [1]) == KIM_AGENT_ROLE_NONE
        ||  strncmp (fields [2], "$argon2id$", 10) != 0
        ||  strlen (fields [2]) >= crypto_pwhash_STRBYTES || count == S_USERS_MAX) {
            zsys_warning ("kim-agent: web/users %s line %zu is not \"name staff|readonly "
                          "argon2id-hash\"; skipped", path, line_number);
            continue;
        }
        s_user_t *user = &users [count++];
        kim_str_copy (user->name, sizeof user->name, fields [0]);
        user->role = s_role (fields [1]);
        kim_str_copy (user->hash, sizeof user->hash, fields [2]);
    }
    sodium_memzero (text, (size_t) st.st_size);
    free (text);
    return count;
}

//  Re-reads the file when it changed. Called with the mutex held.
static void
s_reload (kim_agent_users_t *self)
{
    struct stat st;
    if (stat (self->path, &st) != 0) {
        self->user_count = 0;
        return;
    }
    if (st.st_mtim.tv_sec == self->mtime.tv_sec && st.st_mtim.tv_nsec == self->mtime.tv_nsec
    &&  st.st_size == self->file_size)
        return;
    int count = s_parse (self->path, self->users, &st);
    self->user_count = count > 0? (size_t) count: 0;
    self->mtime = st.st_mtim;
    self->file_size = st.st_size;
}

kim_agent_users_t *
kim_agent_users_new (const char *path, uint32_t max_failures, uint32_t lockout_s)
{
    kim_agent_users_t *self = (kim_agent_users_t *) calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->users = (s_user_t *) calloc (S_USERS_MAX, sizeof (s_user_t));
    self->sessions = (s_session_t *) calloc (S_SESSIONS_MAX, sizeof (s_session_t));
    self->tracked = (s_tracked_t *) calloc (S_TRACKED_MAX, sizeof (s_tracked_t));
    kim_str_copy (self->path, sizeof self->path, path);
    self->max_failures = max_failures? max_failures: 5;
    self->lockout_ms = (uint64_t) (lockout_s? lockout_s: 900) * 1000;
    self->clock = s_wall_clock;
    pthread_mutex_init (&self->mutex, NULL);
    //  A hash to verify against when the name is unknown (same cost)
    char dummy [KIM_AGENT_TOKEN_HEX + 1];
    kim_agent_users_token (dummy);
    if (!self->users || !self->sessions || !self->tracked
    ||  crypto_pwhash_str (self->dummy_hash, dummy, strlen (dummy),
                           crypto_pwhash_OPSLIMIT_INTERACTIVE,
                           crypto_pwhash_MEMLIMIT_INTERACTIVE) != 0) {
        kim_agent_users_destroy (&self);
        return NULL;
    }
    s_reload (self);
    return self;
}

void
kim_agent_users_set_clock (kim_agent_users_t *self, kim_agent_clock_fn *clock)
{
    self->clock = clock? clock: s_wall_clock;
}

void
kim_agent_users_destroy (kim_agent_users_t **self_p)
{
    if (self_p && *self_p) {
        kim_agent_users_t *self = *self_p;
        pthread_mutex_destroy (&self->mutex);
        if (self->sessions)
            sodium_memzero (self->sessions, S_SESSIONS_MAX * sizeof (s_session_t));
        free (self->users);
        free (self->sessions);
        free (self->tracked);
        free (self);
        *self_p = NULL;
    }
}

//  The tracking entry of a key, made when absent (the oldest is reused when
//  the table is full). Called with the mutex held.
static s_tracked_t *
s_tracked (kim_agent_users_t *self, const char *key, uint64_t now)
{
    s_tracked_t *free_slot = NULL, *oldest = NULL;
    for (size_t i = 0; i < S_TRACKED_MAX; i++) {
        s_tracked_t *entry = &self->tracked [i];
        if (entry->key [0] && streq (entry->key, key))
            return entry;
        bool stale = entry->key [0] && entry->locked_until < now
                  && entry->first + self->lockout_ms < now;
        if (!entry->key [0] || stale) {
            if (!free_slot)
                free_slot = entry;
        }
        else
        if (!oldest || entry->first < oldest->first)
            oldest = entry;
    }
    s_tracked_t *entry = free_slot? free_slot: oldest;
    memset (entry, 0, sizeof *entry);
    kim_str_copy (entry->key, sizeof entry->key, key);
    //  Not stale before its window ends, so that the caller's next lookup
    //  cannot take this slot while the caller still holds it
    entry->first = now;
    return entry;
}

static bool
s_locked (s_tracked_t *entry, uint64_t now)
{
    return entry->locked_until > now;
}

static void
s_fail (kim_agent_users_t *self, s_tracked_t *entry, uint64_t now, uint32_t limit)
{
    if (entry->first + self->lockout_ms < now) {
        entry->failures = 0;
        entry->first = now;
    }
    if (++entry->failures >= limit)
        entry->locked_until = now + self->lockout_ms;
}

int
kim_agent_users_login (kim_agent_users_t *self, const char *user, const char *password,
                       const char *address, char sid [KIM_AGENT_TOKEN_HEX + 1],
                       kim_agent_session_t *session)
{
    memset (session, 0, sizeof *session);
    sid [0] = 0;
    char user_key [80], address_key [80];
    snprintf (user_key, sizeof user_key, "u:%.32s", user);
    snprintf (address_key, sizeof address_key, "a:%.64s", address);
    uint64_t now = self->clock ();

    pthread_mutex_lock (&self->mutex);
    s_reload (self);
    bool locked = s_locked (s_tracked (self, user_key, now), now)
               || s_locked (s_tracked (self, address_key, now), now);
    char hash [crypto_pwhash_STRBYTES];
    kim_str_copy (hash, sizeof hash, self->dummy_hash);
    kim_agent_role_t role = KIM_AGENT_ROLE_NONE;
    for (size_t i = 0; i < self->user_count; i++)
        if (streq (self->users [i].name, user)) {
            kim_str_copy (hash, sizeof hash, self->users [i].hash);
            role = self->users [i].role;
        }
    pthread_mutex_unlock (&self->mutex);
    if (locked)
        return -KIM_E_RATE_LIMITED;

    //  The slow part runs without the lock
    bool valid = crypto_pwhash_str_verify (hash, password, strlen (password)) == 0
              && role != KIM_AGENT_ROLE_NONE;

    pthread_mutex_lock (&self->mutex);
    s_tracked_t *by_user = s_tracked (self, user_key, now);
    s_tracked_t *by_address = s_tracked (self, address_key, now);
    int rc = 0;
    if (s_locked (by_user, now) || s_locked (by_address, now))
        rc = -KIM_E_RATE_LIMITED;       //  locked meanwhile by a parallel attempt
    else
    if (!valid) {
        s_fail (self, by_user, now, self->max_failures);
        s_fail (self, by_address, now, self->max_failures * 4);
        rc = -KIM_E_FORBIDDEN;
    }
    else {
        by_user->failures = 0;
        //  A free slot, or the session seen least recently
        s_session_t *slot = NULL;
        for (size_t i = 0; i < S_SESSIONS_MAX; i++) {
            s_session_t *entry = &self->sessions [i];
            bool expired = entry->used && (entry->seen + S_IDLE_MS < now
                                           || entry->created + S_LIFETIME_MS < now);
            if (!entry->used || expired) {
                slot = entry;
                break;
            }
            if (!slot || entry->seen < slot->seen)
                slot = entry;
        }
        memset (slot, 0, sizeof *slot);
        kim_agent_users_token (sid);
        crypto_generichash (slot->sid_hash, sizeof slot->sid_hash, (const uint8_t *) sid,
                            strlen (sid), NULL, 0);
        kim_str_copy (slot->session.user, sizeof slot->session.user, user);
        slot->session.role = role;
        kim_agent_users_token (slot->session.csrf);
        slot->created = slot->seen = now;
        slot->used = true;
        *session = slot->session;
    }
    pthread_mutex_unlock (&self->mutex);
    return rc;
}

//  The session of a cookie value, or NULL. Called with the mutex held.
static s_session_t *
s_find (kim_agent_users_t *self, const char *sid)
{
    if (!sid || strlen (sid) != KIM_AGENT_TOKEN_HEX)
        return NULL;
    uint8_t hash [32];
    crypto_generichash (hash, sizeof hash, (const uint8_t *) sid, strlen (sid), NULL, 0);
    s_session_t *found = NULL;
    for (size_t i = 0; i < S_SESSIONS_MAX; i++)
        if (self->sessions [i].used
        &&  sodium_memcmp (self->sessions [i].sid_hash, hash, sizeof hash) == 0)
            found = &self->sessions [i];
    return found;
}

bool
kim_agent_users_session (kim_agent_users_t *self, const char *sid, kim_agent_session_t *session)
{
    memset (session, 0, sizeof *session);
    uint64_t now = self->clock ();
    pthread_mutex_lock (&self->mutex);
    s_session_t *entry = s_find (self, sid);
    bool live = entry && entry->seen + S_IDLE_MS >= now && entry->created + S_LIFETIME_MS >= now;
    if (entry && !live)
        memset (entry, 0, sizeof *entry);
    if (live) {
        entry->seen = now;
        *session = entry->session;
    }
    pthread_mutex_unlock (&self->mutex);
    return live;
}

void
kim_agent_users_logout (kim_agent_users_t *self, const char *sid)
{
    pthread_mutex_lock (&self->mutex);
    s_session_t *entry = s_find (self, sid);
    if (entry)
        sodium_memzero (entry, sizeof *entry);
    pthread_mutex_unlock (&self->mutex);
}

size_t
kim_agent_users_password_length (const char *password)
{
    size_t length = 0;
    for (const unsigned char *p = (const unsigned char *) password; *p; p++)
        length += (*p & 0xc0) != 0x80;     //  continuation bytes are no character
    return length;
}

int
kim_agent_users_add (const char *path, const char *user, const char *role, const char *password,
                     char *error, size_t error_size)
{
    if (!kim_agent_users_name_valid (user)) {
        snprintf (error, error_size, "the name must be 1..%d of a-z, 0-9, '.', '_' and '-'",
                  KIM_AGENT_USER_MAX);
        return -1;
    }
    if (s_role (role) == KIM_AGENT_ROLE_NONE) {
        snprintf (error, error_size, "--role must be staff or readonly");
        return -1;
    }
    size_t length = kim_agent_users_password_length (password);
    if (length < KIM_AGENT_PASSWORD_MIN || length > KIM_AGENT_PASSWORD_MAX) {
        snprintf (error, error_size, "the password must have %d to %d characters (it has %zu)",
                  KIM_AGENT_PASSWORD_MIN, KIM_AGENT_PASSWORD_MAX, length);
        return -1;
    }
    char hash [crypto_pwhash_STRBYTES];
    if (crypto_pwhash_str (hash, password, strlen (password), crypto_pwhash_OPSLIMIT_INTERACTIVE,
                           crypto_pwhash_MEMLIMIT_INTERACTIVE) != 0) {
        snprintf (error, error_size, "out of memory while hashing the password");
        return -1;
    }
    s_user_t *users = (s_user_t *) calloc (S_USERS_MAX, sizeof (s_user_t));
    struct stat st;
    int count = users? s_parse (path, users, &st): -1;
    if (count < 0) {
        snprintf (error, error_size, "cannot read %s (it must be a regular file of mode 0600)",
                  path);
        free (users);
        return -1;
    }
    size_t at = (size_t) count;
    for (size_t i = 0; i < (size_t) count; i++)
        if (streq (users [i].name, user))
            at = i;
    if (at == S_USERS_MAX) {
        snprintf (error, error_size, "%s holds %d accounts already", path, S_USERS_MAX);
        free (users);
        return -1;
    }
    kim_str_copy (users [at].name, sizeof users [at].name, user);
    users [at].role = s_role (role);
    kim_str_copy (users [at].hash, sizeof users [at].hash, hash);
    if (at == (size_t) count)
        count++;

    char temp [PATH_MAX + 8];
    snprintf (temp, sizeof temp, "%s.tmp", path);
    int fd = open (temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    FILE *file = fd >= 0? fdopen (fd, "w"): NULL;
    int rc = file? 0: -1;
    if (file) {
        fprintf (file, "# kim-agent staff accounts: name role argon2id-hash "
                 "(written by kim-agent --add-user)\n");
        for (size_t i = 0; i < (size_t) count; i++)
            fprintf (file, "%s %s %s\n", users [i].name,
                     users [i].role == KIM_AGENT_ROLE_STAFF? "staff": "readonly", users [i].hash);
        if (fflush (file) != 0 || fsync (fileno (file)) != 0)
            rc = -1;
        if (fclose (file) != 0)
            rc = -1;
    }
    else
    if (fd >= 0)
        close (fd);
    if (rc == 0 && rename (temp, path) != 0)
        rc = -1;
    if (rc == 0) {
        //  Make the rename durable too
        char dir [PATH_MAX];
        kim_str_copy (dir, sizeof dir, path);
        char *slash = strrchr (dir, '/');
        if (slash)
            *slash = 0;
        int dir_fd = open (slash? (dir [0]? dir: "/"): ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir_fd >= 0) {
            fsync (dir_fd);
            close (dir_fd);
        }
    }
    else {
        snprintf (error, error_size, "cannot write %s: %s", path, strerror (errno));
        unlink (temp);
    }
    free (users);
    return rc;
}
