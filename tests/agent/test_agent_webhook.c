/*  test_agent_webhook.c — agent B pushes its deliveries to a webhook receiver.

    The receiver is a process of this test on a real socket. It checks every
    request's Standard Webhooks signature with its own HMAC-SHA256 (not the
    agent's code), answers the first two requests with 500 and the rest
    with 200, and writes down what it saw. Every delivery reaches it, signed,
    with a fresh timestamp; the failed ones come again with the same id.
    Then the receiver fails every request: a delivery becomes a dead letter
    after max_attempts, and a retry through the API brings it over once the
    receiver works again.
*/
#include <czmq.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <sodium.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "kim_agenttest.h"

#define S_SECRET "a-webhook-secret-of-some-length-0123456789"

static const char *
s_header (const char *head, const char *name, char *value, size_t size)
{
    const char *line = head;
    while ((line = strstr (line, "\r\n")) != NULL) {
        line += 2;
        if (strncasecmp (line, name, strlen (name)) == 0 && line [strlen (name)] == ':') {
            const char *start = line + strlen (name) + 1;
            while (*start == ' ')
                start++;
            size_t length = strcspn (start, "\r\n");
            snprintf (value, size, "%.*s", (int) (length < size? length: size - 1), start);
            return value;
        }
    }
    return NULL;
}

//  The receiver: one request per connection, as curl sends them here.
static void
s_receiver (int listener, const char *log_path, int fail_first)
{
    int served = 0;
    while (true) {
        int fd = accept (listener, NULL, NULL);
        if (fd < 0)
            continue;
        char buffer [256 * 1024];
        size_t used = 0;
        char *end = NULL;
        while (used < sizeof buffer - 1) {
            ssize_t rc = recv (fd, buffer + used, sizeof buffer - 1 - used, 0);
            if (rc <= 0)
                break;
            used += (size_t) rc;
            buffer [used] = 0;
            end = strstr (buffer, "\r\n\r\n");
            if (end) {
                char length_text [32];
                size_t length = s_header (buffer, "Content-Length", length_text,
                                          sizeof length_text)? (size_t) atol (length_text): 0;
                if (used >= (size_t) (end + 4 - buffer) + length)
                    break;
            }
        }
        char id [64] = "", timestamp [64] = "", signature [128] = "";
        s_header (buffer, "webhook-id", id, sizeof id);
        s_header (buffer, "webhook-timestamp", timestamp, sizeof timestamp);
        s_header (buffer, "webhook-signature", signature, sizeof signature);
        const char *body = end? end + 4: "";
        //  Our own check of the signature: HMAC-SHA256 over id.timestamp.body
        char signed_text [256 * 1024];
        int signed_size = snprintf (signed_text, sizeof signed_text, "%s.%s.%s", id, timestamp,
                                    body);
        uint8_t mac [crypto_auth_hmacsha256_BYTES];
        crypto_auth_hmacsha256_state state;
        crypto_auth_hmacsha256_init (&state, (const uint8_t *) S_SECRET, strlen (S_SECRET));
        crypto_auth_hmacsha256_update (&state, (const uint8_t *) signed_text, (size_t) signed_size);
        crypto_auth_hmacsha256_final (&state, mac);
        char expected [128] = "v1,";
        sodium_bin2base64 (expected + 3, sizeof expected - 3, mac, sizeof mac,
                           sodium_base64_VARIANT_ORIGINAL);
        bool valid = streq (expected, signature);
        json_t *json = json_loads (body, 0, NULL);
        const char *msg_id = json_string_value (json_object_get (json, "msg_id"));
        const char *payload = json_string_value (json_object_get (json, "payload"));
        int status = served++ < fail_first? 500: 200;
        FILE *log = fopen (log_path, "a");
        if (log) {
            fprintf (log, "%s %s %d %d %s %s\n", id [0]? id: "-", timestamp [0]? timestamp: "-",
                     valid, status, msg_id? msg_id: "-",
                     payload && strncmp (payload, "text ", 5) == 0? "payload": "-");
            fclose (log);
        }
        json_decref (json);
        char answer [128];
        int size = snprintf (answer, sizeof answer, "HTTP/1.1 %d X\r\nContent-Length: 0\r\n"
                             "Connection: close\r\n\r\n", status);
        if (send (fd, answer, (size_t) size, MSG_NOSIGNAL) < 0) {
            //  the agent will try again
        }
        close (fd);
    }
}

typedef struct {
    char id [32];
    long timestamp;
    int valid;
    int status;
    char msg_id [80];
    char payload [16];
} s_line_t;

static size_t
s_read_log (const char *path, s_line_t *lines, size_t max)
{
    FILE *file = fopen (path, "r");
    size_t count = 0;
    if (!file)
        return 0;
    while (count < max && fscanf (file, "%31s %ld %d %d %79s %15s", lines [count].id,
                                  &lines [count].timestamp, &lines [count].valid,
                                  &lines [count].status, lines [count].msg_id,
                                  lines [count].payload) == 6)
        count++;
    fclose (file);
    return count;
}

static size_t
s_pushed (const char *path, const char *msg_id)
{
    s_line_t lines [256];
    size_t count = s_read_log (path, lines, 256), found = 0;
    for (size_t i = 0; i < count; i++)
        found += lines [i].status == 200 && streq (lines [i].msg_id, msg_id);
    return found;
}

static void
s_post (kim_agenttest_t *agent, const char *name)
{
    char body [512];
    snprintf (body, sizeof body,
              "{\"type\":\"REFERRAL\",\"msg_id\":\"%s\",\"recipient\":\"jc.b\","
              "\"referral_id\":\"r-%s\",\"case_id\":\"c-w\",\"subject\":\"p-w\","
              "\"purpose\":\"job_placement\",\"legal_basis\":{\"kind\":\"statute\","
              "\"citation\":\"SGB X §69(1)1\"},\"payload\":\"text %s\"}", name, name, name);
    KIM_CHECK (kim_agenttest_call (agent, "POST", "/v1/messages", body, NULL) == 202);
}

static bool
s_wait_pushed (const char *path, const char *msg_id)
{
    for (int attempt = 0; attempt < 600; attempt++) {
        if (s_pushed (path, msg_id))
            return true;
        zclock_sleep (50);
    }
    fprintf (stderr, "%s never reached the receiver\n", msg_id);
    return false;
}

int
main (void)
{
    const char *orgs [] = { "kim.a", "jc.b", NULL };
    kim_testbroker_t *broker = kim_testbroker_new (orgs, NULL);
    KIM_CHECK (broker);
    KIM_CHECK (kim_testbroker_start (broker) == 0);

    //  The receiver's socket, made here so that it outlives its processes
    int listener = socket (AF_INET, SOCK_STREAM, 0);
    KIM_CHECK (listener >= 0);
    int one = 1;
    setsockopt (listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = 0 };
    addr.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    socklen_t addr_size = sizeof addr;
    KIM_CHECK (bind (listener, (struct sockaddr *) &addr, sizeof addr) == 0);
    KIM_CHECK (getsockname (listener, (struct sockaddr *) &addr, &addr_size) == 0);
    KIM_CHECK (listen (listener, 16) == 0);
    char log_path [200], secret [200], extra [512];
    snprintf (log_path, sizeof log_path, "%s/webhook.log", kim_testbroker_dir (broker));
    snprintf (secret, sizeof secret, "%s/webhook.secret", kim_testbroker_dir (broker));
    FILE *file = fopen (secret, "w");
    KIM_CHECK (file);
    fputs (S_SECRET "\n", file);
    fclose (file);
    KIM_CHECK (chmod (secret, 0600) == 0);
    pid_t receiver = fork ();
    KIM_CHECK (receiver >= 0);
    if (receiver == 0)
        s_receiver (listener, log_path, 2);

    snprintf (extra, sizeof extra, "webhook\n    url = \"http://127.0.0.1:%d/kim\"\n"
              "    secret_file = \"%s\"\n    max_attempts = 3\n    backoff_ms = 100\n"
              "    timeout_ms = 2000\n", ntohs (addr.sin_port), secret);
    kim_agenttest_t a, b;
    KIM_CHECK (kim_agenttest_init (&a, broker, "kim.a", NULL) == 0);
    KIM_CHECK (kim_agenttest_init (&b, broker, "jc.b", extra) == 0);
    KIM_CHECK (kim_agenttest_start (&a, true) == 0);
    KIM_CHECK (kim_agenttest_start (&b, true) == 0);

    //  Five deliveries, two of the first pushes refused by the receiver
    for (int i = 0; i < 5; i++) {
        char name [16];
        snprintf (name, sizeof name, "m-w-%d", i);
        s_post (&a, name);
    }
    for (int i = 0; i < 5; i++) {
        char name [16];
        snprintf (name, sizeof name, "m-w-%d", i);
        KIM_CHECK (s_wait_pushed (log_path, name));
        KIM_CHECK (s_pushed (log_path, name) == 1);
    }
    s_line_t lines [256];
    size_t count = s_read_log (log_path, lines, 256);
    KIM_CHECK (count == 7);
    long now = (long) (zclock_time () / 1000);
    for (size_t i = 0; i < count; i++) {
        KIM_CHECK (lines [i].valid == 1);
        KIM_CHECK (streq (lines [i].payload, "payload"));
        KIM_CHECK (lines [i].timestamp > now - 120 && lines [i].timestamp <= now + 1);
        //  Each push's id is its delivery's seq; a retry has the same id
        for (size_t j = 0; j < count; j++)
            if (streq (lines [i].msg_id, lines [j].msg_id))
                KIM_CHECK (streq (lines [i].id, lines [j].id));
    }
    KIM_CHECK (lines [0].status == 500 && lines [1].status == 500);

    //  A receiver that fails everything: a dead letter after max_attempts
    kill (receiver, SIGKILL);
    waitpid (receiver, NULL, 0);
    receiver = fork ();
    KIM_CHECK (receiver >= 0);
    if (receiver == 0)
        s_receiver (listener, log_path, INT_MAX);
    s_post (&a, "m-w-dead");
    json_t *letters = NULL;
    bool dead = false;
    for (int attempt = 0; attempt < 600 && !dead; attempt++) {
        json_decref (letters);
        KIM_CHECK (kim_agenttest_call (&b, "GET", "/v1/webhook/dead", NULL, &letters) == 200);
        dead = json_array_size (json_object_get (letters, "items")) == 1;
        if (!dead)
            zclock_sleep (50);
    }
    KIM_CHECK (dead);
    json_t *letter = json_array_get (json_object_get (letters, "items"), 0);
    KIM_CHECK (streq (json_string_value (json_object_get (letter, "msg_id")), "m-w-dead"));
    KIM_CHECK (json_integer_value (json_object_get (letter, "attempts")) == 3);
    KIM_CHECK (json_string_length (json_object_get (letter, "last_error")) > 0);
    json_int_t seq = json_integer_value (json_object_get (letter, "seq"));
    json_decref (letters);

    KIM_CHECK (!s_pushed (log_path, "m-w-dead"));

    //  The receiver works again; a retry brings the letter over
    kill (receiver, SIGKILL);
    waitpid (receiver, NULL, 0);
    receiver = fork ();
    KIM_CHECK (receiver >= 0);
    if (receiver == 0)
        s_receiver (listener, log_path, 0);
    char path [80];
    snprintf (path, sizeof path, "/v1/webhook/dead/%lld/retry", (long long) seq);
    KIM_CHECK (kim_agenttest_call (&b, "POST", path, NULL, NULL) == 200);
    KIM_CHECK (s_wait_pushed (log_path, "m-w-dead"));
    KIM_CHECK (kim_agenttest_call (&b, "GET", "/v1/webhook/dead", NULL, &letters) == 200);
    KIM_CHECK (json_array_size (json_object_get (letters, "items")) == 0);
    json_decref (letters);
    KIM_CHECK (kim_agenttest_call (&b, "POST", path, NULL, NULL) == 404);

    kill (receiver, SIGKILL);
    waitpid (receiver, NULL, 0);
    close (listener);
    kim_agenttest_cleanup (&a);
    kim_agenttest_cleanup (&b);
    kim_testbroker_destroy (&broker);
    printf ("agent.webhook: OK\n");
    return 0;
}
