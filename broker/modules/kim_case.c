/*  kim_case.c — cases, handovers, case-event subscriptions and retention
    (part of the life-cycle module; see kim_lifecycle.h).

    A case has one lead organisation at any time: the sender of its first
    REFERRAL (or CONSENT_GRANT), then whoever accepts a HANDOVER_OFFER. The
    lead changes in the write transaction that logs the HANDOVER_ACCEPT, so a
    crash leaves either the old lead or the new one, never both or none.
    Participants are the senders and recipients of the case's messages; only
    they receive the case's events, and only they refer within the case.

    Subscriptions are filters (case, types) per organisation. An event is
    put into the subscriber's durable mailbox in the transaction that logs
    it, so a subscriber that was offline gets every event later, in log
    order, once (the mailbox is a set).
*/
#include <czmq.h>

#include "kim_lifecycle_int.h"

#define S_PURGE_PART    256     //  payloads a purge removes per tick

#define S_LEGACY_FIXED      offsetof (kim_case_t, participants)
#define S_LEGACY_SIZE(n)    (S_LEGACY_FIXED + (size_t) (n) * (KIM_ORG_MAX + 1))
int
kim_lc_case_decode (const uint8_t *value, size_t value_size, kim_case_t *kcase)
{
    memset (kcase, 0, sizeof *kcase);
    if (value_size >= S_LEGACY_FIXED && value_size <= sizeof *kcase
    &&  value [0] == S_LEGACY_VERSION) {
        memcpy (kcase, value, value_size);          //  LMDB does not align values
        return kcase->participant_count > S_PARTICIPANTS_MAX
            || value_size != S_LEGACY_SIZE (kcase->participant_count)? -KIM_E_IO: 0;
    }
    kim_lc_reader_t reader = { value, value + value_size, false };
    if (kim_lc_get_u8 (&reader) != S_CASE_VERSION)
        return -KIM_E_IO;
    kcase->version = S_CASE_VERSION;
    kcase->closed = kim_lc_get_u8 (&reader);
    kcase->offer_seq = kim_lc_get_u64 (&reader);
    kcase->created_seq = kim_lc_get_u64 (&reader);
    kcase->closed_at = kim_lc_get_u64 (&reader);
    kim_lc_get_text (&reader, kcase->id, sizeof kcase->id);
    kim_lc_get_text (&reader, kcase->lead, sizeof kcase->lead);
    kim_lc_get_text (&reader, kcase->offer_msg_id, sizeof kcase->offer_msg_id);
    kim_lc_get_text (&reader, kcase->offer_to, sizeof kcase->offer_to);
    kcase->participant_count = kim_lc_get_u8 (&reader);
    if (kcase->participant_count > S_PARTICIPANTS_MAX)
        return -KIM_E_IO;
    for (uint32_t i = 0; i < kcase->participant_count; i++)
        kim_lc_get_text (&reader, kcase->participants [i], sizeof kcase->participants [i]);
    //  Since store version 3: when the case last saw a message, and
    //  whether its inactivity timer is set. Absent in older cases.
    if (!reader.bad && reader.at != reader.end) {
        kcase->active_at = kim_lc_get_u64 (&reader);
        kcase->idle_armed = kim_lc_get_u8 (&reader);
    }
    return reader.bad || reader.at != reader.end? -KIM_E_IO: 0;
}

static int
s_case_decode (const uint8_t *value, size_t size, void *into)
{
    return kim_lc_case_decode (value, size, (kim_case_t *) into);
}

int
kim_lc_case_get (kim_store_t *store, const char *id, kim_case_t *kcase)
{
    if (!id [0])
        return -KIM_E_NOT_FOUND;
    return kim_lc_fetch (store, KIM_DB_CASE, id, "case", s_case_decode, kcase);
}

size_t
kim_lc_case_encode (const kim_case_t *kcase, uint8_t value [KIM_LC_CASE_MAX])
{
    uint8_t *at = value;
    *at++ = S_CASE_VERSION;
    *at++ = (uint8_t) (kcase->closed != 0);
    at = kim_lc_put_u64 (at, kcase->offer_seq);
    at = kim_lc_put_u64 (at, kcase->created_seq);
    at = kim_lc_put_u64 (at, kcase->closed_at);
    at = kim_lc_put_text (at, kcase->id);
    at = kim_lc_put_text (at, kcase->lead);
    at = kim_lc_put_text (at, kcase->offer_msg_id);
    at = kim_lc_put_text (at, kcase->offer_to);
    *at++ = (uint8_t) kcase->participant_count;
    for (uint32_t i = 0; i < kcase->participant_count; i++)
        at = kim_lc_put_text (at, kcase->participants [i]);
    at = kim_lc_put_u64 (at, kcase->active_at);
    *at++ = (uint8_t) (kcase->idle_armed != 0);
    return (size_t) (at - value);
}

int
kim_lc_case_read (kim_lifecycle_t *self, kim_store_t *store, const char *id, kim_case_t *kcase)
{
    if (!(self->known && streq (self->known_id, id))) {
        self->known_rc = kim_lc_case_get (store, id, &self->known_case);
        if (self->known_rc && self->known_rc != -KIM_E_NOT_FOUND)
            return self->known_rc;          //  a store error: nothing to remember
        kim_str_copy (self->known_id, sizeof self->known_id, id);
        self->known = true;
    }
    if (self->known_rc == 0)
        *kcase = self->known_case;
    return self->known_rc;
}

void
kim_lc_case_forget (kim_lifecycle_t *self)
{
    self->known = false;
}

int
kim_lc_index_case_seq (kim_lifecycle_t *self, kim_store_t *store, const char *case_id,
                       uint64_t opens, uint64_t *case_seq)
{
    *case_seq = 0;
    if (!case_id [0])
        return 0;
    kim_case_t kcase;
    int rc = kim_lc_case_read (self, store, case_id, &kcase);
    if (rc == 0)
        *case_seq = kcase.created_seq;
    if (rc == -KIM_E_NOT_FOUND)
        *case_seq = opens;
    return rc == -KIM_E_NOT_FOUND? 0: rc;
}

//  A scan over two ranges: `fn` stopping the first (1) stops both.
typedef struct {
    kim_lc_scan_fn *fn;
    void *arg;
    bool stopped;
} s_case_scan_t;

static int
s_case_scan_one (void *varg, const char *referral_id, uint64_t seq)
{
    s_case_scan_t *scan = (s_case_scan_t *) varg;
    int rc = scan->fn (scan->arg, referral_id, seq);
    scan->stopped = rc == 1;
    return rc;
}

int
kim_lc_index_case_scan (kim_store_t *store, const char *party, const char *case_id,
                        const kim_case_t *kcase, kim_lc_scan_fn *fn, void *arg)
{
    s_case_scan_t scan = { fn, arg, false };
    uint8_t prefix [S_INDEX_KEY_MAX];
    uint64_t none = 0;
    int rc = 0;
    if (kcase && kcase->created_seq) {
        size_t size = kim_lc_index_party_key (prefix, party, &kcase->created_seq, NULL);
        rc = kim_lc_index_scan (store, prefix, size, case_id, s_case_scan_one, &scan);
    }
    if (rc == 0 && !scan.stopped) {
        size_t size = kim_lc_index_party_key (prefix, party, &none, NULL);
        rc = kim_lc_index_scan (store, prefix, size, case_id, s_case_scan_one, &scan);
    }
    return rc;
}

static int
s_case_put (kim_lifecycle_t *self, kim_store_t *store, const kim_case_t *kcase)
{
    uint8_t value [KIM_LC_CASE_MAX];
    size_t size = kim_lc_case_encode (kcase, value);
    int rc = kim_lc_put (store, KIM_DB_CASE, kcase->id, strlen (kcase->id), value, size,
                         "lifecycle: storing a case");
    if (rc == 0) {
        kim_str_copy (self->known_id, sizeof self->known_id, kcase->id);
        self->known_case = *kcase;
        self->known_rc = 0;
        self->known = true;
    }
    else
        kim_lc_case_forget (self);
    return rc;
}

static bool
s_participant (const kim_case_t *kcase, const char *org)
{
    for (uint32_t i = 0; i < kcase->participant_count; i++)
        if (streq (kcase->participants [i], org))
            return true;
    return false;
}

static void
s_participant_add (kim_case_t *kcase, const char *org)
{
    if (!org [0] || s_participant (kcase, org))
        return;
    if (kcase->participant_count == S_PARTICIPANTS_MAX) {
        zsys_warning ("lifecycle: case %s has %d participants already; %s is not added and "
                      "gets no case events", kcase->id, S_PARTICIPANTS_MAX, org);
        return;
    }
    kim_str_copy (kcase->participants [kcase->participant_count++], KIM_ORG_MAX + 1, org);
}

static int
s_refuse (kim_verdict_t *verdict, int code, const char *path, const char *format, ...)
{
    verdict->code = code;
    kim_str_copy (verdict->path, sizeof verdict->path, path? path: "");
    snprintf (verdict->rule, sizeof verdict->rule, "lifecycle");
    va_list args;
    va_start (args, format);
    vsnprintf (verdict->text, sizeof verdict->text, format, args);
    va_end (args);
    return -code;
}

int
kim_lc_case_check (kim_lifecycle_t *self, kim_ctx_t *ctx, kim_route_t *route,
                   kim_verdict_t *verdict)
{
    const kim_msg_t *msg = route->msg;
    const char *who = route->sender->id;
    kim_store_t *store = kim_ctx_store (ctx);
    kim_case_t kcase;
    int rc = kim_lc_case_read (self, store, msg->case_id, &kcase);
    //  An office of another district (federation) offers its case to one
    //  of ours: its broker checked that it leads it; here the case opens
    //  with the offer (kim_lc_case_applied).
    bool remote = !kim_ctx_org (ctx, who);
    if (rc == -KIM_E_NOT_FOUND && remote && msg->type == KIM_TYPE_HANDOVER_OFFER)
        return 0;
    //  A case one takes no part in gets the answer an unknown id gets.
    if (rc == -KIM_E_NOT_FOUND || (rc == 0 && !kim_lc_case_party (&kcase, who)))
        return s_refuse (verdict, KIM_E_UNKNOWN_CASE, "hdr.case_id",
                         "no case %s that %s takes part in is known to this broker",
                         msg->case_id, who);
    if (rc)
        return rc;
    if (kcase.closed)
        return s_refuse (verdict, KIM_E_BAD_STATE, "hdr.case_id",
                         "case %s was closed by %s", kcase.id, kcase.lead);
    switch (msg->type) {
        case KIM_TYPE_HANDOVER_OFFER:
        case KIM_TYPE_CASE_CLOSED:
            if (!streq (who, kcase.lead))
                //  Not naming the lead (PROTOCOL.md 9.4)
                return s_refuse (verdict, KIM_E_NOT_LEAD, "hdr.case_id",
                                 "%s is not the lead of case %s; only its lead offers or "
                                 "closes it", who, kcase.id);
            if (msg->type == KIM_TYPE_CASE_CLOSED)
                return 0;
            if (streq (msg->recipient, who))
                return s_refuse (verdict, KIM_E_BAD_VALUE, "hdr.recipient",
                                 "%s leads case %s already", who, kcase.id);
            for (size_t i = 0; i < msg->referral_count; i++) {
                kim_referral_t referral;
                char path [KIM_PATH_MAX + 1];
                snprintf (path, sizeof path, "hdr.referrals[%zu]", i);
                rc = kim_lc_referral_get (store, msg->referrals [i], &referral);
                //  The referrals of another district's case live at its broker.
                if (rc == -KIM_E_NOT_FOUND && remote)
                    continue;
                if (rc == -KIM_E_NOT_FOUND || (rc == 0 && !streq (referral.case_id, kcase.id)))
                    return s_refuse (verdict, KIM_E_UNKNOWN_REFERRAL, path,
                                     "referral %s is not part of case %s", msg->referrals [i],
                                     kcase.id);
                if (rc)
                    return rc;
            }
            return 0;
        case KIM_TYPE_HANDOVER_ACCEPT:
        case KIM_TYPE_HANDOVER_DECLINE:
            if (!kcase.offer_msg_id [0] || !streq (kcase.offer_to, who)
            ||  !streq (kcase.offer_msg_id, msg->ref_msg_id))
                return s_refuse (verdict, KIM_E_BAD_STATE, "hdr.ref_msg_id",
                                 "case %s has no open handover offer %s to %s%s%s%s", kcase.id,
                                 msg->ref_msg_id, who,
                                 kcase.offer_msg_id [0]? " (the open offer is ": "",
                                 kcase.offer_msg_id [0]? kcase.offer_msg_id: "",
                                 kcase.offer_msg_id [0]? ")": "");
            if (!streq (msg->recipient, kcase.lead))
                return s_refuse (verdict, KIM_E_NOT_PARTY, "hdr.recipient",
                                 "the answer to a handover offer goes to the lead, %s", kcase.lead);
            return 0;
        default:
            return 0;
    }
}

//  The record of a referral handed to a lead of another district, as a
//  broker-made HANDED_OVER to that lead: its state (in lower case), the
//  other party (`org`), the deadline and the message that opened it.
static int
s_hand_over_notice (kim_ctx_t *ctx, const kim_referral_t *referral)
{
    kim_msg_t notice;
    kim_msg_init (&notice);
    notice.type = KIM_TYPE_HANDED_OVER;
    kim_str_copy (notice.referral_id, sizeof notice.referral_id, referral->id);
    kim_str_copy (notice.case_id, sizeof notice.case_id, referral->case_id);
    kim_str_copy (notice.ref_msg_id, sizeof notice.ref_msg_id, referral->msg_id);
    kim_str_copy (notice.org, sizeof notice.org, referral->recipient);
    kim_str_copy (notice.purpose, sizeof notice.purpose, referral->purpose);
    notice.deadline = referral->deadline;
    //  Under a consent: the far broker suspends it too when the consent goes.
    if (referral->consent_id [0]) {
        notice.basis = KIM_BASIS_CONSENT;
        kim_str_copy (notice.consent_id, sizeof notice.consent_id, referral->consent_id);
    }
    const char *name = kim_lc_state_name (referral->state);
    size_t n = 0;
    for (; name [n] && n < KIM_CODE_MAX; n++)
        notice.code [n] = (char) (name [n] >= 'A' && name [n] <= 'Z'? name [n] + 32: name [n]);
    notice.code [n] = 0;
    return kim_ctx_emit (ctx, &notice, referral->sender, NULL);
}

//  The lead accepted a handover: the open referrals it listed move with it.
static int
s_hand_over (kim_ctx_t *ctx, kim_case_t *kcase, const char *to, uint64_t seq)
{
    kim_store_t *store = kim_ctx_store (ctx);
    char from [KIM_ORG_MAX + 1];
    kim_str_copy (from, sizeof from, kcase->lead);
    //  The offer's log record lists the referrals handed over.
    kim_msg_t *offer = (kim_msg_t *) calloc (1, sizeof (kim_msg_t));
    if (!offer)
        return -KIM_E_NOMEM;
    kim_record_t record;
    kim_decode_error_t error;
    int rc = kim_store_read (store, kcase->offer_seq, &record);
    if (rc == 0 && (record.kind != KIM_RECORD_MESSAGE
                ||  kim_msg_decode (offer, record.body, record.body_size, &error)
                ||  offer->type != KIM_TYPE_HANDOVER_OFFER)) {
        zsys_error ("lifecycle: case %s: record %" PRIu64 " is not the HANDOVER_OFFER it "
                    "should be", kcase->id, kcase->offer_seq);
        rc = -KIM_E_INTERNAL;
    }
    for (size_t i = 0; rc == 0 && i < offer->referral_count; i++) {
        kim_referral_t referral;
        rc = kim_lc_referral_get (store, offer->referrals [i], &referral);
        if (rc == -KIM_E_NOT_FOUND) {
            rc = 0;
            continue;
        }
        if (rc || !kim_lc_state_open (referral.state) || !streq (referral.sender, from))
            continue;
        kim_str_copy (referral.sender, sizeof referral.sender, to);
        referral.last_seq = seq;
        rc = kim_lc_referral_put (store, &referral);
        if (rc == 0)
            rc = kim_lc_index_move (store, &referral, kcase->created_seq, from, to);
        char json [512];
        snprintf (json, sizeof json, "{\"referral_id\":\"%s\",\"case_id\":\"%s\",\"from\":\"%s\","
                  "\"to\":\"%s\",\"sender_from\":\"%s\",\"sender_to\":\"%s\",\"seq\":%" PRIu64 "}",
                  referral.id, kcase->id, kim_lc_state_name (referral.state),
                  kim_lc_state_name (referral.state), from, to, seq);
        if (rc == 0)
            rc = kim_lc_record (ctx, json);
        //  A lead of another district: its broker learns the referral from
        //  this one, the broker of the referral's recipient, which vouches
        //  for its own offices only (PROTOCOL.md 16.6). The notice goes over
        //  the link behind the HANDOVER_ACCEPT, before any later answer.
        if (rc == 0 && !kim_ctx_org (ctx, to) && kim_ctx_org (ctx, referral.recipient))
            rc = s_hand_over_notice (ctx, &referral);
    }
    free (offer);
    kim_str_copy (kcase->lead, sizeof kcase->lead, to);
    kcase->offer_msg_id [0] = kcase->offer_to [0] = 0;
    kcase->offer_seq = 0;
    char json [512];
    //  Like every state record it has `from` and `to`, the case's state,
    //  which a handover leaves OPEN; the lead's change is `lead_from/_to`.
    snprintf (json, sizeof json, "{\"case_id\":\"%s\",\"from\":\"OPEN\",\"to\":\"OPEN\","
              "\"lead_from\":\"%s\",\"lead_to\":\"%s\",\"seq\":%" PRIu64 "}",
              kcase->id, from, to, seq);
    if (rc == 0)
        rc = kim_lc_record (ctx, json);
    if (rc == 0)
        zsys_info ("lifecycle: case %s handed over from %s to %s", kcase->id, from, to);
    return rc;
}

static bool
s_sub_matches (const kim_sub_t *sub, const char *case_id, kim_type_t type)
{
    if (sub->case_id [0] && !streq (sub->case_id, case_id))
        return false;
    if (sub->type_count == 0)
        return true;
    for (uint32_t i = 0; i < sub->type_count && i < KIM_LIST_MAX; i++)
        if (sub->types [i] == (uint32_t) type)
            return true;
    return false;
}

//  Does `org` hold a subscription matching (case, type)? 1, 0 or -KIM_E_*.
static int
s_subscribed (kim_store_t *store, const char *org, const char *case_id, kim_type_t type)
{
    MDB_txn *txn = kim_store_txn (store);
    MDB_cursor *cursor;
    int rc = mdb_cursor_open (txn, kim_store_dbi (store, KIM_DB_SUB), &cursor);
    if (rc)
        return kim_store_error (store, rc, "lifecycle: reading subscriptions");
    size_t prefix = strlen (org) + 1;
    MDB_val key = { prefix, (void *) org }, value;
    int found = 0;
    for (rc = mdb_cursor_get (cursor, &key, &value, MDB_SET_RANGE); rc == 0 && !found;
         rc = mdb_cursor_get (cursor, &key, &value, MDB_NEXT)) {
        if (key.mv_size < prefix || memcmp (key.mv_data, org, prefix) != 0)
            break;
        if (value.mv_size == sizeof (kim_sub_t)) {
            kim_sub_t sub;          //  copied: LMDB does not align values
            memcpy (&sub, value.mv_data, sizeof sub);
            found = s_sub_matches (&sub, case_id, type);
        }
    }
    mdb_cursor_close (cursor);
    if (rc && rc != MDB_NOTFOUND && !found)
        return kim_store_error (store, rc, "lifecycle: reading subscriptions");
    return found;
}

//  Whether a message changed the case enough to write it again. Only its
//  time of activity moves with every message, and the quiet time it feeds
//  is counted in days: a move of less than 1 % of that time (an hour at
//  most) is not written, so an answer in a busy case costs no case write.
//  The inactivity notice may then come that much early, never late.
static bool
s_case_changed (kim_lifecycle_t *self, const kim_case_t *before, const kim_case_t *after)
{
    kim_case_t moved = *before;
    moved.active_at = after->active_at;
    if (memcmp (&moved, after, sizeof moved) != 0)
        return true;
    uint64_t slack = self->idle_ms / 100;
    if (slack > 3600 * 1000)
        slack = 3600 * 1000;
    return self->idle_ms && after->active_at - before->active_at >= slack;
}

int
kim_lc_case_applied (kim_lifecycle_t *self, kim_ctx_t *ctx, kim_route_t *route,
                     const char *case_id)
{
    const kim_msg_t *msg = route->msg;
    kim_type_t type = msg->type;
    bool ours = type == KIM_TYPE_REFERRAL || (kim_type_flags (type) & KIM_MSG_REFERRAL_ANSWER)
             || type == KIM_TYPE_HANDOVER_OFFER || type == KIM_TYPE_HANDOVER_ACCEPT
             || type == KIM_TYPE_HANDOVER_DECLINE || type == KIM_TYPE_CASE_CLOSED;
    if (!case_id [0] || (!ours && type != KIM_TYPE_CONSENT_GRANT))
        return 0;
    kim_store_t *store = kim_ctx_store (ctx);
    kim_case_t kcase;
    int rc = kim_lc_case_read (self, store, case_id, &kcase);
    if (rc == -KIM_E_NOT_FOUND) {
        //  The first REFERRAL (or consent) of a case opens it; its sender
        //  leads. So does an offer of another district's lead (federation).
        if (type != KIM_TYPE_REFERRAL && type != KIM_TYPE_CONSENT_GRANT
        &&  !(type == KIM_TYPE_HANDOVER_OFFER && !kim_ctx_org (ctx, msg->sender)))
            return 0;
        memset (&kcase, 0, sizeof kcase);
        kcase.version = S_CASE_VERSION;
        kim_str_copy (kcase.id, sizeof kcase.id, case_id);
        kim_str_copy (kcase.lead, sizeof kcase.lead, msg->sender);
        kcase.created_seq = route->seq;
        s_participant_add (&kcase, msg->sender);
        //  No state record: the message that opens the case shows it.
        rc = 0;
    }
    else
    if (rc == 0 && !ours)
        return 0;           //  a consent in a known case changes nothing here
    if (rc)
        return rc;
    kim_case_t before = kcase;
    s_participant_add (&kcase, msg->sender);
    s_participant_add (&kcase, msg->recipient);
    if (type == KIM_TYPE_FORWARD)
        s_participant_add (&kcase, msg->org);
    if (type == KIM_TYPE_HANDOVER_OFFER) {
        kim_str_copy (kcase.offer_msg_id, sizeof kcase.offer_msg_id, msg->msg_id);
        kim_str_copy (kcase.offer_to, sizeof kcase.offer_to, msg->recipient);
        kcase.offer_seq = route->seq;
    }
    else
    if (type == KIM_TYPE_HANDOVER_ACCEPT)
        rc = s_hand_over (ctx, &kcase, msg->sender, route->seq);
    else
    if (type == KIM_TYPE_HANDOVER_DECLINE) {
        kcase.offer_msg_id [0] = kcase.offer_to [0] = 0;
        kcase.offer_seq = 0;
    }
    else
    if (type == KIM_TYPE_CASE_CLOSED) {
        kcase.closed = 1;
        kcase.closed_at = kim_ctx_now (ctx);
        char json [256];
        snprintf (json, sizeof json, "{\"case_id\":\"%s\",\"from\":\"OPEN\",\"to\":\"CLOSED\","
                  "\"seq\":%" PRIu64 "}", kcase.id, route->seq);
        rc = kim_lc_record (ctx, json);
        if (rc == 0)
            rc = kim_lc_timer_put (store, kcase.closed_at + self->payload_ms, kcase.id,
                                   S_TIMER_PURGE);
        //  Without a recipient, every participant is told.
        for (uint32_t i = 0; rc == 0 && !msg->recipient [0] && i < kcase.participant_count; i++)
            if (!streq (kcase.participants [i], msg->sender))
                rc = kim_ctx_deliver_also (ctx, kcase.participants [i], route->seq);
        zsys_info ("lifecycle: case %s closed by %s", kcase.id, msg->sender);
    }
    //  Inactivity: every message of an open case restarts its quiet time;
    //  the one timer (set here when none is) finds out at its due time
    //  whether the case stayed quiet, so a busy case costs no timer writes.
    if (rc == 0 && !kcase.closed) {
        kcase.active_at = kim_ctx_now (ctx);
        if (self->idle_ms && !kcase.idle_armed) {
            rc = kim_lc_timer_put (store, kcase.active_at + self->idle_ms - self->notice_ms,
                                   kcase.id, S_TIMER_IDLE_NOTICE);
            kcase.idle_armed = 1;
        }
    }
    if (rc == 0 && (kcase.created_seq == route->seq || s_case_changed (self, &before, &kcase)))
        rc = s_case_put (self, store, &kcase);
    //  The seq index lets retention find the case's payloads. The message
    //  that opened the case is not in it: the case names that one
    //  (created_seq), which spares every new case a put.
    if (rc == 0 && route->payload_size && route->seq != kcase.created_seq) {
        uint8_t key [KIM_ID_MAX + 1 + 8];
        size_t size = strlen (kcase.id) + 1;
        memcpy (key, kcase.id, size);
        for (int i = 0; i < 8; i++)
            key [size + i] = (uint8_t) (route->seq >> (56 - 8 * i));
        rc = kim_lc_put (store, KIM_DB_CASE_SEQ, key, size + 8, "", 0,
                         "lifecycle: indexing a case's payload");
    }
    //  Fan-out to subscribed participants (never to outsiders).
    for (uint32_t i = 0; rc == 0 && i < kcase.participant_count; i++) {
        const char *org = kcase.participants [i];
        if (streq (org, msg->sender) || streq (org, msg->recipient)
        ||  (type == KIM_TYPE_FORWARD && streq (org, msg->org)))
            continue;
        int found = s_subscribed (store, org, kcase.id, type);
        rc = found < 0? found: found? kim_ctx_deliver_also (ctx, org, route->seq): 0;
    }
    return rc;
}

//  --------------------------------------------------------------------------
//  Retention: payloads of a closed case are purged after retention/payload_days.

int
kim_lc_purge (kim_lifecycle_t *self, kim_ctx_t *ctx, const char *case_id, uint8_t kind)
{
    bool idle = kind == S_TIMER_IDLE_PURGE;
    kim_store_t *store = kim_ctx_store (ctx);
    MDB_txn *txn = kim_store_txn (store);
    MDB_dbi dbi = kim_store_dbi (store, KIM_DB_CASE_SEQ);
    size_t prefix = strlen (case_id) + 1;
    //  The index's entries, at most S_PURGE_PART a tick, and the message
    //  that opened the case (not indexed) while its payload is there
    uint64_t seqs [S_PURGE_PART + 1];
    size_t count = 0;
    MDB_cursor *cursor;
    int rc = mdb_cursor_open (txn, dbi, &cursor);
    if (rc)
        return kim_store_error (store, rc, "lifecycle: reading a case's payload index");
    MDB_val key = { prefix, (void *) case_id }, value;
    for (rc = mdb_cursor_get (cursor, &key, &value, MDB_SET_RANGE);
         rc == 0 && count < S_PURGE_PART;
         rc = mdb_cursor_get (cursor, &key, &value, MDB_NEXT)) {
        if (key.mv_size != prefix + 8 || memcmp (key.mv_data, case_id, prefix) != 0)
            break;
        seqs [count++] = kim_log_get_be64 ((const uint8_t *) key.mv_data + prefix);
    }
    mdb_cursor_close (cursor);
    if (rc && rc != MDB_NOTFOUND && count < S_PURGE_PART)
        return kim_store_error (store, rc, "lifecycle: reading a case's payload index");
    bool more = count == S_PURGE_PART;
    size_t indexed = count;
    kim_case_t kcase;
    rc = kim_lc_case_read (self, store, case_id, &kcase);
    if (rc == -KIM_E_NOT_FOUND)
        kcase.created_seq = 0;
    else
    if (rc)
        return rc;
    //  (A store from before this indexed the opening message too.)
    bool listed = false;
    for (size_t i = 0; i < indexed; i++)
        listed = listed || seqs [i] == kcase.created_seq;
    rc = kcase.created_seq && !listed? kim_store_payload_exists (store, kcase.created_seq): 0;
    if (rc < 0)
        return rc;
    //  The opening message is the case's first: it leads, so that the
    //  record lists the seqs in the log's order
    size_t first_indexed = 0;
    if (rc == 1) {
        memmove (seqs + 1, seqs, count * sizeof seqs [0]);
        seqs [0] = kcase.created_seq;
        first_indexed = 1;
        count++;
    }
    rc = 0;
    char json [(S_PURGE_PART + 1) * 22 + 256];
    size_t used = (size_t) snprintf (json, sizeof json,
                                     "{\"case_id\":\"%s\",\"reason\":\"%s\","
                                     "\"retention_s\":%" PRIu64 ",\"seqs\":[",
                                     case_id, idle? "inactivity": "retention",
                                     (idle? self->idle_ms: self->payload_ms) / 1000);
    for (size_t i = 0; rc == 0 && i < count; i++) {
        rc = kim_store_payload_del (store, seqs [i]);
        if (rc == 0 && i >= first_indexed) {
            uint8_t index_key [KIM_ID_MAX + 1 + 8];
            memcpy (index_key, case_id, prefix);
            kim_log_put_be64 (index_key + prefix, seqs [i]);
            MDB_val k = { prefix + 8, index_key };
            rc = kim_store_del (store, KIM_DB_CASE_SEQ, &k, NULL);
            if (rc)
                rc = kim_store_error (store, rc, "lifecycle: removing a payload index entry");
        }
        used += (size_t) snprintf (json + used, sizeof json - used, "%s%" PRIu64, i? ",": "",
                                   seqs [i]);
    }
    snprintf (json + used, sizeof json - used, "]}");
    if (rc == 0 && count) {
        kim_buf_t buf;
        kim_buf_init (&buf);
        rc = kim_json_to_msgpack (json, strlen (json), &buf);
        if (rc == 0)
            rc = kim_ctx_record (ctx, KIM_RECORD_PURGE, buf.data, buf.size, NULL);
        kim_buf_free (&buf);
        zsys_info ("lifecycle: purged %zu payloads of %s case %s (%s)", count,
                   idle? "idle": "closed", case_id, idle? "inactivity": "retention");
    }
    //  A very large case continues in the next tick.
    if (rc == 0 && more)
        rc = kim_lc_timer_put (store, kim_ctx_now (ctx), case_id, kind);
    return rc;
}

//  The notice to the lead: a broker-made REMINDER of an existing shape, so
//  that every agent reads it, about one of the lead's referrals in the case,
//  with the case and, as `deadline`, when the payloads go (in the future,
//  where a deadline REMINDER's lies in the past).
static int
s_first_referral (void *arg, const char *referral_id, uint64_t seq)
{
    (void) seq;
    kim_str_copy ((char *) arg, KIM_ID_MAX + 1, referral_id);
    return 1;
}

static int
s_idle_notice (kim_ctx_t *ctx, const kim_case_t *kcase, uint64_t purge_at)
{
    char referral_id [KIM_ID_MAX + 1] = "";
    int rc = kim_lc_index_case_scan (kim_ctx_store (ctx), kcase->lead, kcase->id, kcase,
                                     s_first_referral, referral_id);
    if (rc < 0)
        return rc;
    if (!referral_id [0]) {
        zsys_warning ("lifecycle: case %s is idle; its lead %s has no referral in it to "
                      "carry the notice", kcase->id, kcase->lead);
        return 0;
    }
    kim_msg_t notice;
    kim_msg_init (&notice);
    notice.type = KIM_TYPE_REMINDER;
    kim_str_copy (notice.referral_id, sizeof notice.referral_id, referral_id);
    kim_str_copy (notice.case_id, sizeof notice.case_id, kcase->id);
    notice.deadline = purge_at;
    zsys_info ("lifecycle: case %s is idle; its payloads go unless it sees a message; "
               "telling %s", kcase->id, kcase->lead);
    return kim_ctx_emit (ctx, &notice, kcase->lead, NULL);
}

//  One batch of kim_lc_idle_arm: the open cases without a timer get one.
//  Ids are collected first: the cases are rewritten after the cursor ends.
static int
s_idle_arm_batch (kim_lifecycle_t *self, kim_store_t *store, size_t *armed)
{
    MDB_txn *txn = kim_store_txn (store);
    MDB_cursor *cursor;
    int rc = mdb_cursor_open (txn, kim_store_dbi (store, KIM_DB_CASE), &cursor);
    if (rc)
        return kim_store_error (store, rc, "lifecycle: opening the cases");
    zlistx_t *ids = zlistx_new ();
    if (!ids) {
        mdb_cursor_close (cursor);
        return -KIM_E_NOMEM;
    }
    zlistx_set_destructor (ids, (zlistx_destructor_fn *) zstr_free);
    MDB_val key, value;
    int add_rc = 0;
    for (rc = mdb_cursor_get (cursor, &key, &value, MDB_FIRST); rc == 0 && add_rc == 0;
         rc = mdb_cursor_get (cursor, &key, &value, MDB_NEXT)) {
        kim_case_t kcase;
        if (kim_lc_case_decode (value.mv_data, value.mv_size, &kcase) == 0
        &&  !kcase.closed && !kcase.idle_armed) {
            char *id = strdup (kcase.id);
            add_rc = id && zlistx_add_end (ids, id)? 0: -KIM_E_NOMEM;
            if (add_rc)
                free (id);
        }
    }
    mdb_cursor_close (cursor);
    if (rc && rc != MDB_NOTFOUND && add_rc == 0)
        add_rc = kim_store_error (store, rc, "lifecycle: reading the cases");
    rc = add_rc;
    *armed = 0;
    for (char *id = (char *) zlistx_first (ids); rc == 0 && id; id = (char *) zlistx_next (ids)) {
        kim_case_t kcase;
        rc = kim_lc_case_get (store, id, &kcase);
        if (rc)
            break;
        //  When it was last active is not known (active_at 0): the timer
        //  is due at once, and firing starts its quiet time by the broker's
        //  clock (kim_lc_idle_fire)
        kcase.idle_armed = 1;
        uint64_t due = kcase.active_at? kcase.active_at + self->idle_ms - self->notice_ms: 0;
        rc = kim_lc_timer_put (store, due, kcase.id, S_TIMER_IDLE_NOTICE);
        if (rc == 0)
            rc = s_case_put (self, store, &kcase);
        (*armed)++;
    }
    zlistx_destroy (&ids);
    kim_lc_case_forget (self);
    return rc;
}

int
kim_lc_idle_arm (kim_lifecycle_t *self, kim_store_t *store)
{
    if (self->idle_ms == 0)
        return 0;
    for (int attempt = 0; attempt < 64; attempt++) {
        int rc = kim_store_begin (store);
        if (rc)
            return rc;
        size_t armed = 0;
        rc = s_idle_arm_batch (self, store, &armed);
        if (rc) {
            kim_store_abort (store);
            return rc;
        }
        bool retry = false;
        rc = kim_store_commit (store, &retry);
        if (rc == 0) {
            if (armed)
                zsys_info ("lifecycle: %zu open cases had no inactivity timer; those not "
                           "seen active since store version 3 are quiet from now on", armed);
            return 0;
        }
        if (!retry)
            return rc;
    }
    return -KIM_E_STORE_FULL;
}

int
kim_lc_idle_fire (kim_lifecycle_t *self, kim_ctx_t *ctx, const char *case_id, uint8_t kind)
{
    kim_store_t *store = kim_ctx_store (ctx);
    kim_case_t kcase;
    int rc = kim_lc_case_read (self, store, case_id, &kcase);
    if (rc)
        return rc == -KIM_E_NOT_FOUND? 0: rc;
    if (kcase.closed || self->idle_ms == 0) {
        //  Closed: closed-case retention takes over
        kcase.idle_armed = 0;
        return s_case_put (self, store, &kcase);
    }
    uint64_t now = kim_ctx_now (ctx);
    uint64_t purge_at = kcase.active_at + self->idle_ms;
    uint64_t notice_at = purge_at - self->notice_ms;
    if (kcase.active_at == 0 || now < notice_at) {
        //  It saw a message meanwhile (or is from before active_at was
        //  kept): wait again from the last one (or from now)
        if (kcase.active_at == 0) {
            kcase.active_at = now;
            notice_at = now + self->idle_ms - self->notice_ms;
        }
        kcase.idle_armed = 1;
        rc = kim_lc_timer_put (store, notice_at, kcase.id, S_TIMER_IDLE_NOTICE);
        return rc? rc: s_case_put (self, store, &kcase);
    }
    //  The notice is due: this quiet time's, or (the purge timer finding
    //  a message since the last notice) a new quiet time's, whose notice
    //  time has passed already (PROTOCOL.md 9.4: a later message starts
    //  the quiet time again, notice and all)
    if (kind == S_TIMER_IDLE_NOTICE || now < purge_at) {
        rc = s_idle_notice (ctx, &kcase, purge_at);
        return rc? rc: kim_lc_timer_put (store, purge_at, kcase.id, S_TIMER_IDLE_PURGE);
    }
    //  Quiet all along: the payloads go; the next message sets a new timer
    kcase.idle_armed = 0;
    rc = s_case_put (self, store, &kcase);
    return rc? rc: kim_lc_purge (self, ctx, kcase.id, S_TIMER_IDLE_PURGE);
}

//  --------------------------------------------------------------------------
//  SUBSCRIBE / UNSUBSCRIBE

typedef struct {
    const kim_peer_t *peer;
    const kim_cmd_t *cmd;
} s_sub_arg_t;

static int
s_sub_write (void *arg, kim_ctx_t *ctx)
{
    s_sub_arg_t *sub_arg = (s_sub_arg_t *) arg;
    kim_store_t *store = kim_ctx_store (ctx);
    const char *org = sub_arg->peer->org->id;
    const kim_cmd_t *cmd = sub_arg->cmd;
    uint8_t key [KIM_ORG_MAX + 1 + KIM_ID_MAX];
    size_t org_size = strlen (org) + 1, id_size = strlen (cmd->sub_id);
    memcpy (key, org, org_size);
    memcpy (key + org_size, cmd->sub_id, id_size);
    if (cmd->id == KIM_CMD_UNSUBSCRIBE) {
        MDB_val k = { org_size + id_size, key };
        int rc = kim_store_del (store, KIM_DB_SUB, &k, NULL);
        return rc && rc != MDB_NOTFOUND? kim_store_error (store, rc, "lifecycle: unsubscribing"): 0;
    }
    kim_sub_t sub;
    memset (&sub, 0, sizeof sub);
    sub.version = S_SUB_VERSION;
    kim_str_copy (sub.case_id, sizeof sub.case_id, cmd->case_id);
    sub.type_count = (uint32_t) cmd->type_count;
    for (size_t i = 0; i < cmd->type_count && i < KIM_LIST_MAX; i++)
        sub.types [i] = (uint32_t) cmd->types [i];
    return kim_lc_put (store, KIM_DB_SUB, key, org_size + id_size, &sub, sizeof sub,
                       "lifecycle: storing a subscription");
}

//  --------------------------------------------------------------------------
//  REFERRAL_QUERY: an organisation reads the referrals it takes part in.

#define S_INFO_MAX  (KIM_FRAME_MAX - 1024)     //  room for the rest of frame 0

typedef struct {
    const kim_peer_t *peer;
    const kim_cmd_t *cmd;
    kim_store_t *store;
    kim_buf_t body;                 //  JSON lines, one per referral
    uint64_t count;
    uint64_t visited;               //  referrals read to answer (debug log)
    bool more;
} s_query_arg_t;

static bool
s_query_match (const s_query_arg_t *arg, const kim_referral_t *referral)
{
    const char *me = arg->peer->org->id;
    const kim_cmd_t *cmd = arg->cmd;
    if (!streq (referral->sender, me) && !streq (referral->recipient, me))
        return false;
    if (cmd->referral_id [0] && !streq (cmd->referral_id, referral->id))
        return false;
    if (cmd->case_id [0] && !streq (cmd->case_id, referral->case_id))
        return false;
    if (cmd->org [0] && !streq (cmd->org, referral->sender) && !streq (cmd->org, referral->recipient))
        return false;
    return true;
}

//  One referral as a JSON line (ids and codes need no escaping).
static int
s_query_line (const kim_referral_t *referral, char *line, size_t size)
{
    return snprintf (line, size,
        "{\"referral_id\":\"%s\",\"state\":\"%s\",\"sender\":\"%s\",\"recipient\":\"%s\","
        "\"case_id\":\"%s\",\"purpose\":\"%s\",\"deadline\":%" PRIu64 ",\"forwarded_from\":\"%s\","
        "\"consent_id\":\"%s\",\"created_seq\":%" PRIu64 ",\"last_seq\":%" PRIu64 "}\n",
        referral->id, kim_lc_state_name (referral->state), referral->sender, referral->recipient,
        referral->case_id, referral->purpose, referral->deadline, referral->parent,
        referral->consent_id, referral->created_seq, referral->last_seq);
}

//  One referral the index lists for the asker: read, filter, answer.
static int
s_query_one (void *varg, const char *referral_id, uint64_t seq)
{
    s_query_arg_t *arg = (s_query_arg_t *) varg;
    kim_referral_t referral;
    arg->visited++;
    int rc = kim_lc_referral_find (arg->store, referral_id, seq, &referral);
    if (rc == -KIM_E_NOT_FOUND || rc == -KIM_E_IO)
        return 0;               //  (logged) an entry without its referral reads as none
    if (rc)
        return rc;
    if (!s_query_match (arg, &referral))
        return 0;
    char line [1024];
    int size = s_query_line (&referral, line, sizeof line);
    if (arg->body.size + (size_t) size > S_INFO_MAX) {
        arg->more = true;
        return 1;
    }
    if (kim_buf_append (&arg->body, line, (size_t) size))
        return -KIM_E_NOMEM;
    arg->count++;
    return 0;
}

static int
s_query_read (void *varg, kim_ctx_t *ctx)
{
    s_query_arg_t *arg = (s_query_arg_t *) varg;
    arg->store = kim_ctx_store (ctx);
    kim_buf_reset (&arg->body);
    arg->count = arg->visited = 0;
    arg->more = false;
    if (arg->cmd->referral_id [0])
        return s_query_one (arg, arg->cmd->referral_id, 0);  //  a point read
    //  The asker's own referrals only (of one case, if it names one): the
    //  cost follows its referrals, never the store's.
    const char *party = arg->peer->org->id;
    if (arg->cmd->case_id [0]) {
        kim_case_t kcase;
        int rc = kim_lc_case_get (arg->store, arg->cmd->case_id, &kcase);
        if (rc && rc != -KIM_E_NOT_FOUND && rc != -KIM_E_IO)
            return rc;
        return kim_lc_index_case_scan (arg->store, party, arg->cmd->case_id,
                                       rc == 0? &kcase: NULL, s_query_one, arg);
    }
    uint8_t prefix [S_INDEX_KEY_MAX];
    size_t prefix_size = kim_lc_index_party_key (prefix, party, NULL, NULL);
    return kim_lc_index_scan (arg->store, prefix, prefix_size, NULL, s_query_one, arg);
}

static int
s_referral_query (kim_ctx_t *ctx, const kim_peer_t *peer, const kim_cmd_t *cmd,
                  kim_verdict_t *verdict)
{
    if (peer->org->role != KIM_ROLE_AGENCY)
        return s_refuse (verdict, KIM_E_FORBIDDEN, "cmd", "role %s takes part in no referral",
                         kim_role_name (peer->org->role));
    //  A batch of its own gives a consistent view through the store's
    //  transaction; it writes nothing.
    s_query_arg_t arg = { peer, cmd, NULL, { 0 }, 0, 0, false };
    kim_buf_init (&arg.body);
    int rc = kim_ctx_batch (ctx, s_query_read, &arg);
    if (kim_ctx_config (ctx)->verbose)
        zsys_debug ("lifecycle: REFERRAL_QUERY of %s read %" PRIu64 " referrals, answered %"
                    PRIu64, peer->org->id, arg.visited, arg.count);
    if (rc == 0 && arg.more)
        rc = kim_buf_append (&arg.body, "{\"more\":true}\n", 14);
    if (rc) {
        kim_buf_free (&arg.body);
        return s_refuse (verdict, rc < 0? -rc: rc, NULL, "referrals not read: %s", kim_strerror (rc));
    }
    kim_cmd_t *reply = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    if (!reply) {
        kim_buf_free (&arg.body);
        return s_refuse (verdict, KIM_E_BUSY, NULL, "out of memory");
    }
    kim_cmd_init (reply, KIM_CMD_REFERRAL_INFO);
    kim_str_copy (reply->query_id, sizeof reply->query_id, cmd->query_id);
    reply->count = arg.count;
    reply->body = arg.body.data? arg.body.data: (const uint8_t *) "";
    reply->body_size = arg.body.size;
    kim_ctx_send (ctx, peer->rid, peer->rid_size, reply);
    free (reply);
    kim_buf_free (&arg.body);
    return 0;
}

int
kim_lc_command (void *state, kim_ctx_t *ctx, const kim_peer_t *peer, const kim_cmd_t *cmd,
                kim_verdict_t *verdict)
{
    if (cmd->id == KIM_CMD_REFERRAL_QUERY)
        return s_referral_query (ctx, peer, cmd, verdict);
    if (cmd->id != KIM_CMD_SUBSCRIBE && cmd->id != KIM_CMD_UNSUBSCRIBE)
        return -KIM_E_UNKNOWN_CMD;
    if (peer->org->role != KIM_ROLE_AGENCY)
        return s_refuse (verdict, KIM_E_FORBIDDEN, "cmd", "role %s does not subscribe to "
                         "case events", kim_role_name (peer->org->role));
    s_sub_arg_t arg = { peer, cmd };
    int rc = kim_ctx_batch (ctx, s_sub_write, &arg);
    if (rc)
        return s_refuse (verdict, rc < 0? -rc: rc, NULL, "subscription not stored: %s",
                         kim_strerror (rc));
    kim_cmd_t reply;
    kim_cmd_init (&reply, KIM_CMD_RECEIPT);
    kim_str_copy (reply.msg_id, sizeof reply.msg_id, cmd->sub_id);
    reply.seq = kim_store_head (kim_ctx_store (ctx));
    kim_ctx_send (ctx, peer->rid, peer->rid_size, &reply);
    zsys_info ("lifecycle: %s %s %s", peer->org->id,
               cmd->id == KIM_CMD_SUBSCRIBE? "subscribed": "unsubscribed", cmd->sub_id);
    return 0;
}

//  --------------------------------------------------------------------------
//  For the consent module

int
kim_lifecycle_case_lead (kim_ctx_t *ctx, const char *case_id, char lead [KIM_ORG_MAX + 1])
{
    kim_store_t *store = kim_ctx_store (ctx);
    if (!kim_store_txn (store) || !case_id)
        return -KIM_E_ARGS;
    kim_case_t kcase;
    int rc = kim_lc_case_get (store, case_id, &kcase);
    if (rc == -KIM_E_NOT_FOUND)
        return -KIM_E_UNKNOWN_CASE;
    if (rc == 0)
        snprintf (lead, KIM_ORG_MAX + 1, "%s", kcase.lead);
    return rc;
}
