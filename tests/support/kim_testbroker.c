/*  kim_testbroker.c — a real broker process per test. */
#include <czmq.h>
#include <signal.h>
#include <sodium.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "kim_testbroker.h"

#define KIM_TEST_ORGS_MAX 32

typedef struct {
    char id [KIM_ORG_MAX + 1];
    char role [16];
    char public_key [41];
    char secret_key [41];
    char sign_public [41];              //  "" unless the org was given as id:role+sign
    char sign_secret [41];              //  Z85 of the Ed25519 seed
} test_org_t;

//  Test folders live under /tmp with short names; ipc paths must stay
//  below the 107-byte limit of a Unix socket path anyway.
#define KIM_TEST_DIR_MAX 64

struct _kim_testbroker_t {
    char dir [KIM_TEST_DIR_MAX];
    char config_path [KIM_TEST_DIR_MAX + 16];
    char ipc [KIM_TEST_DIR_MAX + 32];
    char tcp [64];
    char broker_key [41];
    char name [KIM_ORG_MAX + 1];
    char broker_secret [41];            //  made ahead by kim_testbroker_new_named
    char broker_sign [41];              //  Z85 of its Ed25519 public key
    test_org_t orgs [KIM_TEST_ORGS_MAX];
    size_t org_count;
    pid_t pid;
    bool plaintext;                     //  clients do not seal (kim_testbroker_plaintext)
    char preload [KIM_TEST_DIR_MAX];    //  LD_PRELOAD of the broker (kim_testbroker_preload)
};

int
kim_testbroker_free_port (void)
{
    //  Bind to port 0 and let the kernel choose; the broker binds it a moment
    //  later. Ports come from the ephemeral range, so collisions are rare.
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = 0 };
    addr.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    int port = -1;
    if (fd >= 0 && bind (fd, (struct sockaddr *) &addr, sizeof addr) == 0
    &&  getsockname (fd, (struct sockaddr *) &addr, &len) == 0)
        port = ntohs (addr.sin_port);
    if (fd >= 0)
        close (fd);
    return port;
}

//  The policy tests of other features run under: every transfer passes,
//  its legal basis unchecked. Test-only; the broker warns when it loads it.
static const char s_test_policy [] =
    "#   TEST-ONLY policy written by tests/support/kim_testbroker.c: every transfer\n"
    "#   passes and its legal basis is NOT checked. Never use it in a real broker.\n"
    "policy\n    checks = \"REFERRAL, FORWARD, HANDOVER_OFFER\"\n"
    "rules\n    test_allow_all\n        law = \"none: test-only policy\"\n"
    "        from = *\n        to = *\n        decision = allow\n        basis = unchecked\n"
    "        categories = \"art9, sgb8_s65, stgb203, residence_status, contact\"\n";

static kim_testbroker_t *
s_new (const char *name, const char *orgs [], const char *extra, const char *policy_file,
       const kim_testbroker_t *keys_from);

kim_testbroker_t *
kim_testbroker_new (const char *orgs [], const char *extra)
{
    return s_new ("kim.test", orgs, extra, KIM_TESTBROKER_TEST_POLICY, NULL);
}

kim_testbroker_t *
kim_testbroker_new_policy (const char *orgs [], const char *extra, const char *policy_file)
{
    return s_new ("kim.test", orgs, extra, policy_file, NULL);
}

kim_testbroker_t *
kim_testbroker_new_sharing (const char *orgs [], const char *extra,
                            const kim_testbroker_t *keys_from)
{
    return s_new ("kim.test", orgs, extra, KIM_TESTBROKER_TEST_POLICY, keys_from);
}

//  Writes `text` to `path` with `mode`.
static int
s_write (const char *path, const char *text, mode_t mode)
{
    FILE *file = fopen (path, "w");
    if (!file)
        return -1;
    int rc = fputs (text, file) < 0? -1: 0;
    if (fclose (file))
        rc = -1;
    return rc == 0? chmod (path, mode): rc;
}

kim_testbroker_t *
kim_testbroker_new_named (const char *name, const char *orgs [], const char *extra)
{
    kim_testbroker_t *self = s_new (name, orgs, extra, KIM_TESTBROKER_TEST_POLICY, NULL);
    if (!self)
        return NULL;
    //  The keys the broker would make on first start (kim_keys.c,
    //  kim_audit.c), made here so that its peers know them beforehand.
    char path [PATH_MAX];
    snprintf (path, sizeof path, "%s/data/keys", self->dir);
    zcert_t *cert = zcert_new ();
    uint8_t pk [crypto_sign_PUBLICKEYBYTES], sk [crypto_sign_SECRETKEYBYTES];
    char hex [2 * crypto_sign_SECRETKEYBYTES + 2];
    int rc = cert && zsys_dir_create ("%s", path) == 0? 0: -1;
    if (rc == 0) {
        memcpy (self->broker_key, zcert_public_txt (cert), 41);
        memcpy (self->broker_secret, zcert_secret_txt (cert), 41);
        snprintf (path, sizeof path, "%s/data/keys/broker.cert", self->dir);
        rc = zcert_save (cert, path);
        char secret_path [PATH_MAX + 8];
        snprintf (secret_path, sizeof secret_path, "%s_secret", path);
        if (rc == 0)
            rc = chmod (secret_path, 0600);
    }
    zcert_destroy (&cert);
    if (rc == 0) {
        crypto_sign_keypair (pk, sk);
        zmq_z85_encode (self->broker_sign, pk, sizeof pk);
        sodium_bin2hex (hex, sizeof hex, sk, sizeof sk);
        strcat (hex, "\n");
        snprintf (path, sizeof path, "%s/data/keys/broker.sign_secret", self->dir);
        rc = s_write (path, hex, 0600);
        sodium_bin2hex (hex, sizeof hex, pk, sizeof pk);
        strcat (hex, "\n");
        snprintf (path, sizeof path, "%s/data/keys/broker.sign.pub", self->dir);
        if (rc == 0)
            rc = s_write (path, hex, 0644);
    }
    if (rc) {
        kim_testbroker_destroy (&self);
        return NULL;
    }
    //  kim_testbroker_start reads the public key again from the file.
    self->broker_key [0] = 0;
    return self;
}

int
kim_testbroker_link (kim_testbroker_t *brokers [], size_t count)
{
    for (size_t i = 0; i < count; i++) {
        FILE *file = fopen (brokers [i]->config_path, "a");
        if (!file)
            return -1;
        fprintf (file, "peers\n");
        for (size_t j = 0; j < count; j++) {
            if (j == i)
                continue;
            kim_testbroker_t *peer = brokers [j];
            fprintf (file, "    %s\n        endpoint = \"%s\"\n        public_key = \"%s\"\n"
                     "        sign_key = \"%s\"\n", peer->name, peer->tcp,
                     kim_testbroker_broker_public (peer), peer->broker_sign);
        }
        fclose (file);
    }
    return 0;
}

const char *
kim_testbroker_name (kim_testbroker_t *self)
{
    return self->name;
}

const char *
kim_testbroker_broker_public (kim_testbroker_t *self)
{
    if (!self->broker_key [0]) {
        char path [PATH_MAX];
        snprintf (path, sizeof path, "%s/data/keys/broker.cert", self->dir);
        zcert_t *cert = zcert_load (path);
        if (cert) {
            memcpy (self->broker_key, zcert_public_txt (cert), 41);
            zcert_destroy (&cert);
        }
    }
    return self->broker_key;
}

const char *
kim_testbroker_broker_secret (kim_testbroker_t *self)
{
    return self->broker_secret;
}

const char *
kim_testbroker_broker_sign (kim_testbroker_t *self)
{
    return self->broker_sign;
}

const char *
kim_testbroker_config (kim_testbroker_t *self)
{
    return self->config_path;
}

static const test_org_t *
s_org_of (const kim_testbroker_t *self, const char *id)
{
    for (size_t i = 0; self && i < self->org_count; i++)
        if (streq (self->orgs [i].id, id))
            return &self->orgs [i];
    return NULL;
}

static kim_testbroker_t *
s_new (const char *name, const char *orgs [], const char *extra, const char *policy_file,
       const kim_testbroker_t *keys_from)
{
    kim_testbroker_t *self = (kim_testbroker_t *) calloc (1, sizeof (kim_testbroker_t));
    if (!self)
        return NULL;
    snprintf (self->dir, sizeof self->dir, "/tmp/kim-test-XXXXXX");
    if (!mkdtemp (self->dir)) {
        free (self);
        return NULL;
    }
    snprintf (self->config_path, sizeof self->config_path, "%s/kim.cfg", self->dir);
    snprintf (self->ipc, sizeof self->ipc, "ipc://%s/kim.sock", self->dir);
    snprintf (self->tcp, sizeof self->tcp, "tcp://127.0.0.1:%d", kim_testbroker_free_port ());

    FILE *file = fopen (self->config_path, "w");
    if (!file) {
        kim_testbroker_destroy (&self);
        return NULL;
    }
    snprintf (self->name, sizeof self->name, "%s", name);
    fprintf (file, "broker\n    name = %s\n    data = \"%s/data\"\n"
             "    bind = \"%s, %s\"\n%s", name, self->dir, self->ipc, self->tcp, extra? extra: "");
    if (policy_file == KIM_TESTBROKER_TEST_POLICY) {
        char policy_path [KIM_TEST_DIR_MAX + 32];
        snprintf (policy_path, sizeof policy_path, "%s/test-policy.cfg", self->dir);
        FILE *policy = fopen (policy_path, "w");
        if (!policy || fputs (s_test_policy, policy) < 0) {
            if (policy)
                fclose (policy);
            fclose (file);
            kim_testbroker_destroy (&self);
            return NULL;
        }
        fclose (policy);
        fprintf (file, "policy\n    file = \"%s\"\n", policy_path);
    }
    else
    if (policy_file)
        fprintf (file, "policy\n    file = \"%s\"\n", policy_file);
    fprintf (file, "orgs\n");
    for (size_t i = 0; orgs [i] && i < KIM_TEST_ORGS_MAX; i++) {
        test_org_t *org = &self->orgs [self->org_count++];
        const char *colon = strchr (orgs [i], ':');
        snprintf (org->id, sizeof org->id, "%.*s",
                  (int) (colon? (size_t) (colon - orgs [i]): strlen (orgs [i])), orgs [i]);
        snprintf (org->role, sizeof org->role, "%s", colon? colon + 1: "agency");
        //  "id:role+private": a private carrier (public_body = 0).
        char *plus = strchr (org->role, '+');
        bool private_carrier = plus && streq (plus, "+private");
        if (private_carrier)
            *plus = 0;
        const test_org_t *same = s_org_of (keys_from, org->id);
        if (plus && streq (plus, "+sign") && same && same->sign_public [0]) {
            *plus = 0;
            memcpy (org->sign_secret, same->sign_secret, sizeof org->sign_secret);
            memcpy (org->sign_public, same->sign_public, sizeof org->sign_public);
        }
        else
        if (plus && streq (plus, "+sign")) {
            *plus = 0;
            uint8_t seed [crypto_sign_SEEDBYTES], pk [crypto_sign_PUBLICKEYBYTES],
                    sk [crypto_sign_SECRETKEYBYTES];
            randombytes_buf (seed, sizeof seed);
            crypto_sign_seed_keypair (pk, sk, seed);
            zmq_z85_encode (org->sign_secret, seed, sizeof seed);
            zmq_z85_encode (org->sign_public, pk, sizeof pk);
        }
        if (same) {
            memcpy (org->public_key, same->public_key, sizeof org->public_key);
            memcpy (org->secret_key, same->secret_key, sizeof org->secret_key);
        }
        else {
            zcert_t *cert = zcert_new ();
            memcpy (org->public_key, zcert_public_txt (cert), 41);
            memcpy (org->secret_key, zcert_secret_txt (cert), 41);
            zcert_destroy (&cert);
        }
        fprintf (file, "    %s\n        name = \"Test %s\"\n        role = %s\n"
                 "        public_key = \"%s\"\n", org->id, org->id, org->role, org->public_key);
        if (org->sign_public [0])
            fprintf (file, "        sign_key = \"%s\"\n", org->sign_public);
        if (private_carrier)
            fprintf (file, "        public_body = 0\n");
    }
    fclose (file);
    return self;
}

static const char *
s_broker_binary (void)
{
    const char *path = getenv ("KIM_BROKER");
    return path? path: KIM_BROKER_PATH;
}

//  Forks kim-broker on this broker's config, with `option` (NULL: none)
//  after it and its log (and, with `option`, its output) in broker.log, a
//  file in its folder for post-mortems. Returns the child's pid or -1.
static pid_t
s_fork_broker (kim_testbroker_t *self, const char *option)
{
    pid_t pid = self->pid? -1: fork ();
    if (pid != 0)
        return pid;
    //  A test that dies without cleaning up must not leave its broker behind.
    prctl (PR_SET_PDEATHSIG, SIGKILL);
    char log_path [PATH_MAX + 16];
    snprintf (log_path, sizeof log_path, "%s/broker.log", self->dir);
    FILE *log = fopen (log_path, "a");
    if (log && option)
        dup2 (fileno (log), STDOUT_FILENO);
    if (log)
        dup2 (fileno (log), STDERR_FILENO);
    if (self->preload [0] && !option)
        kim_testbroker_preload_env (self->preload);
    execl (s_broker_binary (), "kim-broker", "--config", self->config_path, option,
           (char *) NULL);
    _exit (127);
}

//  Whether the file at `path` holds `text` after its first `from` bytes.
static bool
s_log_says (const char *path, off_t from, const char *text)
{
    FILE *file = fopen (path, "r");
    if (!file)
        return false;
    bool found = false;
    char line [4096];
    if (fseeko (file, from, SEEK_SET) == 0)
        while (!found && fgets (line, sizeof line, file))
            found = strstr (line, text) != NULL;
    fclose (file);
    return found;
}

int
kim_testbroker_run (kim_testbroker_t *self, const char *option)
{
    pid_t pid = s_fork_broker (self, option);
    int status = 0;
    return pid > 0 && waitpid (pid, &status, 0) == pid? status: -1;
}

int
kim_testbroker_start (kim_testbroker_t *self)
{
    char log_path [PATH_MAX + 16];
    snprintf (log_path, sizeof log_path, "%s/broker.log", self->dir);
    off_t log_from = zsys_file_exists (log_path)? zsys_file_size (log_path): 0;
    pid_t pid = s_fork_broker (self, NULL);
    if (pid < 0)
        return -1;
    self->pid = pid;
    //  Ready when the key exists and a HELLO gets a WELCOME; a broker with
    //  no organisation to say HELLO as, when it has logged that it serves.
    char key_path [PATH_MAX + 32];
    snprintf (key_path, sizeof key_path, "%s/data/keys/broker.cert", self->dir);
    for (int attempt = 0; attempt < 200; attempt++) {
        int status;
        if (waitpid (pid, &status, WNOHANG) == pid) {
            fprintf (stderr, "testbroker: kim-broker exited at start (see %s/broker.log)\n",
                     self->dir);
            self->pid = 0;
            return -1;
        }
        if (!self->broker_key [0] && zsys_file_exists (key_path)) {
            zcert_t *cert = zcert_load (key_path);
            if (cert) {
                memcpy (self->broker_key, zcert_public_txt (cert), 41);
                zcert_destroy (&cert);
            }
        }
        if (self->broker_key [0] && self->org_count) {
            kim_client_config_t config =
                kim_testbroker_client_config (self, self->orgs [0].id, 0, false);
            config.timeout_ms = 500;
            int err = 0;
            kim_client_t *client = kim_client_new (&config, &err);
            if (client) {
                kim_client_destroy (&client);
                return 0;
            }
        }
        else
        if (self->broker_key [0] && s_log_says (log_path, log_from, " serving on "))
            return 0;
        zclock_sleep (25);
    }
    fprintf (stderr, "testbroker: kim-broker did not start serving (see %s/broker.log)\n",
             self->dir);
    return -1;
}

int
kim_testbroker_stop (kim_testbroker_t *self, int signal)
{
    if (!self->pid)
        return -1;
    kill (self->pid, signal);
    int status = 0;
    waitpid (self->pid, &status, 0);
    self->pid = 0;
    return status;
}

pid_t
kim_testbroker_pid (kim_testbroker_t *self)
{
    return self->pid;
}

kim_client_config_t
kim_testbroker_client_config (kim_testbroker_t *self, const char *org, uint32_t window, bool tcp)
{
    kim_client_config_t config = { 0 };
    config.endpoint = tcp? self->tcp: self->ipc;
    config.broker_key = self->broker_key;
    config.window = window;
    config.agent = "kim-test";
    config.timeout_ms = 5000;
    for (size_t i = 0; i < self->org_count; i++)
        if (streq (self->orgs [i].id, org)) {
            config.public_key = self->orgs [i].public_key;
            config.secret_key = self->orgs [i].secret_key;
            if (self->orgs [i].sign_secret [0])
                config.sign_secret_key = self->orgs [i].sign_secret;
        }
    config.plaintext = self->plaintext;
    return config;
}

void
kim_testbroker_preload_env (const char *library)
{
    setenv ("LD_PRELOAD", library, 1);
    //  AddressSanitizer wants its runtime to be the first library loaded;
    //  the preloaded one is built without it and only passes calls on.
    const char *asan = getenv ("ASAN_OPTIONS");
    char options [1024];
    snprintf (options, sizeof options, "%s%sverify_asan_link_order=0",
              asan? asan: "", asan && asan [0]? ":": "");
    setenv ("ASAN_OPTIONS", options, 1);
}

void
kim_testbroker_preload (kim_testbroker_t *self, const char *library)
{
    snprintf (self->preload, sizeof self->preload, "%s", library? library: "");
}

void
kim_testbroker_plaintext (kim_testbroker_t *self, bool plaintext)
{
    self->plaintext = plaintext;
}

const char *
kim_testbroker_sign_secret (kim_testbroker_t *self, const char *org)
{
    for (size_t i = 0; i < self->org_count; i++)
        if (streq (self->orgs [i].id, org))
            return self->orgs [i].sign_secret [0]? self->orgs [i].sign_secret: NULL;
    return NULL;
}

const char *
kim_testbroker_sign_public (kim_testbroker_t *self, const char *org)
{
    for (size_t i = 0; i < self->org_count; i++)
        if (streq (self->orgs [i].id, org))
            return self->orgs [i].sign_public [0]? self->orgs [i].sign_public: NULL;
    return NULL;
}

kim_client_t *
kim_testbroker_client (kim_testbroker_t *self, const char *org, uint32_t window, bool tcp)
{
    kim_client_config_t config = kim_testbroker_client_config (self, org, window, tcp);
    int err = 0;
    kim_client_t *client = kim_client_new (&config, &err);
    if (!client)
        fprintf (stderr, "testbroker: %s cannot connect: %s\n", org, kim_strerror (err));
    return client;
}

const char *
kim_testbroker_dir (kim_testbroker_t *self)
{
    return self->dir;
}

const char *
kim_testbroker_endpoint (kim_testbroker_t *self, bool tcp)
{
    return tcp? self->tcp: self->ipc;
}

void
kim_testbroker_destroy (kim_testbroker_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kim_testbroker_t *self = *self_p;
    if (self->pid)
        kim_testbroker_stop (self, SIGKILL);
    //  Keep the folder of a failed run when asked, for post-mortems.
    if (!getenv ("KIM_TEST_KEEP")) {
        char command [PATH_MAX + 16];
        snprintf (command, sizeof command, "rm -rf '%s'", self->dir);
        if (system (command) != 0)
            fprintf (stderr, "testbroker: could not remove %s\n", self->dir);
    }
    free (self);
    *self_p = NULL;
}

void
kim_test_referral (kim_msg_t *msg, const char *to, const char *referral_id)
{
    kim_msg_init (msg);
    msg->type = KIM_TYPE_REFERRAL;
    msg->schema = KIM_SCHEMA_VERSION;
    snprintf (msg->recipient, sizeof msg->recipient, "%s", to);
    snprintf (msg->referral_id, sizeof msg->referral_id, "%s", referral_id);
    snprintf (msg->case_id, sizeof msg->case_id, "case-%s", referral_id);
    snprintf (msg->subject, sizeof msg->subject, "subj-%s", referral_id);
    snprintf (msg->purpose, sizeof msg->purpose, "integration");
    msg->basis = KIM_BASIS_STATUTE;
    snprintf (msg->citation, sizeof msg->citation, "SGB X §69(1)1");
}
