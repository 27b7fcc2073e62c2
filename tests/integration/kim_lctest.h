/*  kim_lctest.h — helpers of the life-cycle tests (test_lifecycle,
    test_deadlines, test_cases, test_subscriptions): build the header of any
    referral or case message, send it and check the broker's verdict, and
    wait for a delivery of a given type. Header-only.
*/
#ifndef KIM_LCTEST_H_INCLUDED
#define KIM_LCTEST_H_INCLUDED

#include "kim_itest.h"
#include "kim_rawsock.h"

//  A header of `type`, with just the fields its per-type rules require.
//  `arg` is the code (DECLINE, STATUS, OUTCOME, HANDOVER_DECLINE), the org
//  (FORWARD, NOT_COMPETENT) or the ref_msg_id (HANDOVER_ACCEPT/DECLINE).
static inline void
s_lc_msg (kim_msg_t *msg, kim_type_t type, const char *to, const char *id, const char *msg_id,
          const char *arg)
{
    kim_msg_init (msg);
    msg->type = type;
    snprintf (msg->msg_id, sizeof msg->msg_id, "%s", msg_id);
    msg->created_at = (uint64_t) zclock_time ();
    if (to)
        snprintf (msg->recipient, sizeof msg->recipient, "%s", to);
    switch (type) {
        case KIM_TYPE_REFERRAL:
            kim_test_referral (msg, to, id);
            snprintf (msg->msg_id, sizeof msg->msg_id, "%s", msg_id);
            if (arg)                //  the case
                snprintf (msg->case_id, sizeof msg->case_id, "%s", arg);
            break;
        case KIM_TYPE_DECLINE:
        case KIM_TYPE_STATUS:
        case KIM_TYPE_OUTCOME:
            snprintf (msg->referral_id, sizeof msg->referral_id, "%s", id);
            snprintf (msg->code, sizeof msg->code, "%s", arg);
            break;
        case KIM_TYPE_NOT_COMPETENT:
            snprintf (msg->referral_id, sizeof msg->referral_id, "%s", id);
            if (arg)
                snprintf (msg->org, sizeof msg->org, "%s", arg);
            break;
        case KIM_TYPE_FORWARD:
            snprintf (msg->referral_id, sizeof msg->referral_id, "%s", id);
            snprintf (msg->org, sizeof msg->org, "%s", arg);
            snprintf (msg->purpose, sizeof msg->purpose, "integration");
            msg->basis = KIM_BASIS_STATUTE;
            snprintf (msg->citation, sizeof msg->citation, "SGB X §69(1)1");
            break;
        case KIM_TYPE_HANDOVER_OFFER:
            snprintf (msg->case_id, sizeof msg->case_id, "%s", id);
            msg->basis = KIM_BASIS_STATUTE;
            snprintf (msg->citation, sizeof msg->citation, "SGB X §69(1)1");
            break;
        case KIM_TYPE_HANDOVER_ACCEPT:
        case KIM_TYPE_HANDOVER_DECLINE:
            snprintf (msg->case_id, sizeof msg->case_id, "%s", id);
            snprintf (msg->ref_msg_id, sizeof msg->ref_msg_id, "%s", arg);
            break;
        case KIM_TYPE_CASE_CLOSED:
            snprintf (msg->case_id, sizeof msg->case_id, "%s", id);
            break;
        default:
            snprintf (msg->referral_id, sizeof msg->referral_id, "%s", id);
    }
}

//  Sends and checks the verdict: 0 for a RECEIPT, else the REJECT code and
//  a text that contains each of the NULL-terminated strings after `code`.
#define LC_SEND(client, msg, code, ...) \
    s_lc_send (__FILE__, __LINE__, (client), (msg), (code), __VA_ARGS__, NULL)

static inline uint64_t
s_lc_send (const char *file, int line, kim_client_t *client, kim_msg_t *msg, int code, ...)
{
    uint64_t seq = 0;
    bool dup = false;
    int rc = kim_client_send (client, msg, NULL, 0, &seq, &dup, 10000);
    const char *text = kim_client_error (client);
    if (rc != -code) {
        fprintf (stderr, "%s:%d: %s %s from %s: got %s (%s), expected %s\n", file, line,
                 kim_type_name (msg->type), msg->msg_id, kim_client_org (client),
                 kim_errname (rc), rc? text: "receipted", kim_errname (code));
        exit (1);
    }
    va_list args;
    va_start (args, code);
    for (const char *part = va_arg (args, const char *); part; part = va_arg (args, const char *))
        if (code && !strstr (text, part)) {
            fprintf (stderr, "%s:%d: REJECT text '%s' lacks '%s'\n", file, line, text, part);
            exit (1);
        }
    va_end (args);
    return seq;
}

//  Receives (and acks) deliveries until one of each types [i] for ids [i]
//  (referral or case; NULL for any) has arrived, in any order, into
//  events [i]. More than one: notices of timers due within moments of each
//  other, whose order nobody promises. Fails after timeout_ms.
#define LC_WAIT_EACH(client, count, types, ids, events) \
    s_lc_wait_each (__FILE__, __LINE__, (client), (count), (types), (ids), (events), 15000)

static inline void
s_lc_wait_each (const char *file, int line, kim_client_t *client, size_t count,
                const kim_type_t *types, const char *const *ids, kim_event_t *events,
                int timeout_ms)
{
    bool seen [8] = { false };
    KIM_CHECK (count > 0 && count <= sizeof seen / sizeof seen [0]);
    size_t left = count;
    int64_t deadline = s_itest_now () + timeout_ms;
    kim_event_t event;
    while (left && s_itest_now () < deadline) {
        int rc = kim_client_recv (client, &event, 200);
        if (rc == -KIM_E_TIMEOUT)
            continue;
        if (rc || event.type != KIM_EVENT_DELIVER) {
            fprintf (stderr, "%s:%d: %s waiting for %s:\n", file, line,
                     kim_client_org (client), kim_type_name (types [0]));
            if (rc == 0)
                s_itest_print_event (kim_client_org (client), &event);
            exit (1);
        }
        kim_client_ack (client, event.seq);
        for (size_t i = 0; i < count; i++)
            if (!seen [i] && event.msg.type == types [i]
            &&  (!ids [i] || streq (event.msg.referral_id, ids [i])
                          || streq (event.msg.case_id, ids [i]))) {
                seen [i] = true;
                events [i] = event;
                left--;
                break;
            }
    }
    for (size_t i = 0; i < count; i++)
        if (!seen [i]) {
            fprintf (stderr, "%s:%d: %s got no %s for %s within %d ms\n", file, line,
                     kim_client_org (client), kim_type_name (types [i]),
                     ids [i]? ids [i]: "anything", timeout_ms);
            exit (1);
        }
    kim_client_flush (client, 5000);                //  the acks go out now
}

//  The same for one delivery of `type` for `id`.
#define LC_WAIT(client, type, id, event) \
    s_lc_wait (__FILE__, __LINE__, (client), (type), (id), (event), 15000)

static inline void
s_lc_wait (const char *file, int line, kim_client_t *client, kim_type_t type, const char *id,
           kim_event_t *event, int timeout_ms)
{
    s_lc_wait_each (file, line, client, 1, &type, &id, event, timeout_ms);
}

//  SUBSCRIBE (types: a NULL-terminated list, or NULL) or UNSUBSCRIBE over a
//  raw session of `org`; expects the RECEIPT naming sub_id.
static inline void
s_lc_subscribe (kim_testbroker_t *broker, const char *org, bool subscribe, const char *sub_id,
                const char *case_id, const kim_type_t *types)
{
    zsock_t *sock = s_raw_new (broker, org, NULL, NULL);
    s_raw_hello (sock, org, 0);
    kim_cmd_t *cmd = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    KIM_CHECK (cmd);
    kim_cmd_init (cmd, subscribe? KIM_CMD_SUBSCRIBE: KIM_CMD_UNSUBSCRIBE);
    snprintf (cmd->sub_id, sizeof cmd->sub_id, "%s", sub_id);
    if (subscribe && case_id)
        snprintf (cmd->case_id, sizeof cmd->case_id, "%s", case_id);
    for (size_t i = 0; subscribe && types && types [i]; i++)
        cmd->types [cmd->type_count++] = types [i];
    s_raw_send_cmd (sock, cmd, NULL, 0, 0);
    free (cmd);
    s_raw_expect_receipt (sock, sub_id);
    zsock_destroy (&sock);
}

#endif
