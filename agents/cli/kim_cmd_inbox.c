/*  kim_cmd_inbox.c — `kim inbox`: our organisation's deliveries as JSON lines.

    Each delivery is printed and flushed to stdout before it is acked, so a
    message is never acked that did not reach the consumer of our output
    (if stdout fails, we stop without acking). Deliveries are at-least-once:
    after a reconnect the broker hands out again what we had not acked. We
    print each seq once per run and ack repeats again, since the repeat may
    mean our first ack was lost with the old connection.
*/
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <czmq.h>
#include <jansson.h>
#include <sodium.h>

#include "kim_cli.h"

const char kim_cmd_inbox_usage [] =
    "Usage: kim inbox [connection options] [--count N] [--idle MS | --follow] [--no-ack]\n"
    "                 [--window N]\n"
    "\n"
    "Receives the messages waiting for our organisation, prints each as one JSON line\n"
    "  {\"seq\":42,\"hdr\":{...},\"payload_base64\":\"...\",\"payload\":\"...\"}\n"
    "(\"payload\" only when the payload is valid UTF-8), and acks it once printed.\n"
    "Payloads are opened with our key; one that does not open is printed as received\n"
    "with \"sealed_error\":true (and acked like any other).\n"
    "A message redelivered after a reconnect is printed once per run.\n"
    "\n"
    "Options:\n"
    "  --count N       stop after N messages\n"
    "  --idle MS       stop after MS without a message (default 1000)\n"
    "  --follow        never stop (until interrupted)\n"
    "  --no-ack        print but do not ack: the broker keeps the messages and delivers\n"
    "                  them again next time (at most --window of them per run)\n"
    "  --window N      messages in flight to us at once (default 64)\n"
    "\n"
    "Example:\n"
    "  kim inbox --cert jc.rheine.cert_secret --follow | jq -c '{seq, type: .hdr.type}'\n";

//  Seqs printed in this run: an open-addressing set (seq 0 marks a free slot).
typedef struct {
    uint64_t *slots;
    size_t capacity;                //  a power of two
    size_t count;
} s_seen_t;

static size_t
s_seen_slot (const s_seen_t *self, uint64_t seq)
{
    //  Fibonacci hashing spreads the dense sequence numbers
    size_t mask = self->capacity - 1;
    size_t slot = (size_t) ((seq * 11400714819323198485ull) >> 20) & mask;
    while (self->slots [slot] && self->slots [slot] != seq)
        slot = (slot + 1) & mask;
    return slot;
}

static bool
s_seen_has (const s_seen_t *self, uint64_t seq)
{
    return self->capacity && self->slots [s_seen_slot (self, seq)] == seq;
}

static int
s_seen_add (s_seen_t *self, uint64_t seq)
{
    if ((self->count + 1) * 2 > self->capacity) {
        s_seen_t bigger = { NULL, self->capacity? self->capacity * 2: 1024, 0 };
        bigger.slots = (uint64_t *) calloc (bigger.capacity, sizeof (uint64_t));
        if (!bigger.slots)
            return -1;
        for (size_t i = 0; i < self->capacity; i++)
            if (self->slots [i]) {
                bigger.slots [s_seen_slot (&bigger, self->slots [i])] = self->slots [i];
                bigger.count++;
            }
        free (self->slots);
        *self = bigger;
    }
    size_t slot = s_seen_slot (self, seq);
    if (self->slots [slot] != seq) {
        self->slots [slot] = seq;
        self->count++;
    }
    return 0;
}

//  Prints one delivery and flushes; returns 0 only if stdout took it.
static int
s_print_delivery (const kim_event_t *event, kim_buf_t *buf, char **base64, size_t *base64_size)
{
    kim_buf_reset (buf);
    int rc = kim_msg_to_json (&event->msg, buf);
    json_t *hdr = rc == 0? json_loadb ((const char *) buf->data, buf->size, 0, NULL): NULL;
    if (!hdr) {
        kim_cli_error ("inbox", "cannot render the header of seq %" PRIu64 " as JSON: %s",
                       event->seq, kim_strerror (rc? rc: -KIM_E_INTERNAL));
        return -1;
    }
    size_t needed = sodium_base64_encoded_len (event->payload_size, sodium_base64_VARIANT_ORIGINAL);
    if (needed > *base64_size) {
        char *bigger = (char *) realloc (*base64, needed);
        if (!bigger) {
            json_decref (hdr);
            kim_cli_error ("inbox", "out of memory");
            return -1;
        }
        *base64 = bigger;
        *base64_size = needed;
    }
    sodium_bin2base64 (*base64, needed, event->payload, event->payload_size,
                       sodium_base64_VARIANT_ORIGINAL);
    json_t *line = json_object ();
    if (!line) {
        json_decref (hdr);
        return -1;
    }
    json_object_set_new (line, "seq", json_integer ((json_int_t) event->seq));
    json_object_set_new (line, "hdr", hdr);
    json_object_set_new (line, "payload_base64", json_string (*base64));
    if (event->sealed_error)
        json_object_set_new (line, "sealed_error", json_true ());
    if (kim_utf8_valid (event->payload, event->payload_size))
        json_object_set_new (line, "payload",
                             json_stringn ((const char *) event->payload, event->payload_size));
    rc = json_dumpf (line, stdout, JSON_COMPACT);
    json_decref (line);
    if (rc == 0 && fputc ('\n', stdout) != EOF && fflush (stdout) == 0)
        return 0;
    kim_cli_error ("inbox", "cannot write to stdout: %s (seq %" PRIu64 " stays unacked)",
                   strerror (errno), event->seq);
    return -1;
}

int
kim_cmd_inbox (int argc, char *argv [])
{
    const char *cmd = "inbox";
    kim_cli_conn_t conn;
    kim_cli_conn_init (&conn);
    uint64_t count = 0, idle_ms = 1000, window = 64;
    bool follow = false, ack = true;

    kim_cli_args_t args;
    kim_cli_args_init (&args, argc, argv);
    while (kim_cli_args_next (&args)) {
        int exit_code;
        int taken = kim_cli_args_common (cmd, &conn, &args, &exit_code);
        if (taken < 0)
            return exit_code;
        if (taken)
            continue;
        if (kim_cli_args_is (&args, "--follow"))
            follow = true;
        else
        if (kim_cli_args_is (&args, "--no-ack"))
            ack = false;
        else
        if (kim_cli_args_is (&args, "--count") || kim_cli_args_is (&args, "--idle")
        ||  kim_cli_args_is (&args, "--window")) {
            const char *value = kim_cli_args_value (&args);
            if (!value)
                return KIM_EXIT_USAGE;
            bool is_count = kim_cli_args_is (&args, "--count");
            bool is_idle = kim_cli_args_is (&args, "--idle");
            uint64_t *target = is_count? &count: is_idle? &idle_ms: &window;
            uint64_t max = is_idle? INT32_MAX: is_count? UINT64_MAX: KIM_WINDOW_MAX;
            if (!kim_cli_parse_uint (value, 1, max, target))
                return kim_cli_usage_error (cmd, "%s wants a number from 1 to %" PRIu64
                                            ", not '%s'", args.name, max, value);
        }
        else
            return kim_cli_args_unknown (&args);
    }
    if (args.failed)
        return KIM_EXIT_USAGE;

    kim_client_t *client = kim_cli_connect (cmd, &conn, (uint32_t) window);
    if (!client)
        return KIM_EXIT_USAGE;

    int exit_code = KIM_EXIT_OK;
    s_seen_t seen = { NULL, 0, 0 };
    kim_buf_t buf;
    kim_buf_init (&buf);
    char *base64 = NULL;
    size_t base64_size = 0;
    uint64_t printed = 0;
    int64_t last_activity = zclock_mono ();
    kim_event_t event;

    while (count == 0 || printed < count) {
        int wait = -1;
        if (!follow) {
            int64_t left = (int64_t) idle_ms - (zclock_mono () - last_activity);
            if (left <= 0)
                break;
            wait = (int) left;
        }
        int rc = kim_client_recv (client, &event, wait);
        if (rc == -KIM_E_TIMEOUT)
            continue;               //  the loop head decides whether we are idle
        if (rc) {
            if (!zsys_interrupted) {
                kim_cli_error (cmd, "%s", kim_client_error (client));
                exit_code = KIM_EXIT_USAGE;
            }
            break;
        }
        if (event.type == KIM_EVENT_REJECT) {
            //  BAD_ACK: we acked a repeat whose first ack did arrive; harmless
            if (event.code != KIM_E_BAD_ACK)
                kim_cli_warn (cmd, "broker refused a command: %s (%d) %s",
                              kim_errname (event.code), event.code, event.text);
            continue;
        }
        if (event.type != KIM_EVENT_DELIVER)
            continue;
        last_activity = zclock_mono ();
        if (!s_seen_has (&seen, event.seq)) {
            if (s_print_delivery (&event, &buf, &base64, &base64_size)) {
                exit_code = KIM_EXIT_USAGE;
                break;
            }
            if (s_seen_add (&seen, event.seq)) {
                kim_cli_error (cmd, "out of memory");
                exit_code = KIM_EXIT_USAGE;
                break;
            }
            printed++;
        }
        if (ack)
            kim_client_ack (client, event.seq);
    }
    //  Let the last acks reach the broker before we say BYE
    if (ack && kim_client_flush (client, conn.timeout_ms) && exit_code == KIM_EXIT_OK
    &&  !zsys_interrupted)
        kim_cli_warn (cmd, "acks may not have reached the broker: %s (those messages "
                      "will be delivered again)", kim_client_error (client));
    kim_client_destroy (&client);
    kim_buf_free (&buf);
    free (base64);
    free (seen.slots);
    return exit_code;
}
