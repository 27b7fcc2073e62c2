/*  kim_consent.c — lawful by default: every checked transfer (policy/checks:
    REFERRAL, FORWARD, HANDOVER_OFFER by default) is decided by the policy
    engine against the consent registry kept here; CONSENT_GRANT and
    CONSENT_REVOKE maintain that registry. kim_subject.c serves ACCESS_REPORT
    and ERASURE from the subject index this module writes.

    The decision is made in `check` and leaves a trace either way: a denial
    appends a KIM_RECORD_DECISION record (the message itself gets no MESSAGE
    record) and REJECTs naming the rule, the law and what is missing; an
    allowed transfer carries the deciding rule in its header's `rule` field,
    so the MESSAGE record and the delivery say why it passed. The hot path
    costs a hash lookup, the case's lead (one read; a FORWARD also reads
    its referral), a few comparisons per rule tried, and two small index
    writes; no allocation.

    A consent is bound to its subject, its case and the case's lead (the
    engine checks it, this module supplies the case and its lead); when it
    is revoked or runs out (the tick finds it through an expiry index),
    the life cycle suspends or lapses its referrals and withholds what was
    not yet delivered under it.
*/
#include <czmq.h>

#include "kim_consent.h"
#include "kim_consent_int.h"
#include "kim_lifecycle.h"

#define S_TEST_POLICY \
    "policy\n    checks = \"REFERRAL, FORWARD, HANDOVER_OFFER\"\nrules\n"

static bool
s_in_list (char (*list) [KIM_ORG_MAX + 1], size_t count, const char *org)
{
    for (size_t i = 0; i < count; i++)
        if (streq (list [i], org))
            return true;
    return false;
}

//  --------------------------------------------------------------------------
//  The consent registry

static size_t
s_consent_key (const char *id, uint8_t *key)
{
    size_t size = strlen (id);
    key [0] = KIM_CONSENT_KEY_CONSENT;
    memcpy (key + 1, id, size);
    return size + 1;
}

//  kim_policy_consent_fn over the store: `arg` is the kim_ctx_t.
static int
s_consent_get (void *arg, const char *id, kim_consent_t *consent)
{
    kim_store_t *store = kim_ctx_store ((kim_ctx_t *) arg);
    MDB_txn *txn = kim_store_txn (store);
    if (!txn || !id [0])
        return -KIM_E_NOT_FOUND;
    uint8_t bytes [KIM_ID_MAX + 2];
    MDB_val key = { s_consent_key (id, bytes), bytes }, value;
    int rc = mdb_get (txn, kim_store_dbi (store, KIM_DB_CONSENT), &key, &value);
    if (rc == MDB_NOTFOUND)
        return -KIM_E_NOT_FOUND;
    if (rc)
        return kim_store_error (store, rc, "consent: reading a consent");
    //  A record written before consents kept their giver ends where the
    //  giver begins; it reads as "not recorded".
    if (value.mv_size != sizeof (kim_consent_t)
    &&  value.mv_size != offsetof (kim_consent_t, giver)) {
        zsys_error ("consent: record of consent %s has %zu bytes, expected %zu: "
                    "store from another build?", id, value.mv_size, sizeof (kim_consent_t));
        return -KIM_E_INTERNAL;
    }
    memset (consent, 0, sizeof *consent);
    memcpy (consent, value.mv_data, value.mv_size);
    return 0;
}

static int
s_consent_put (kim_ctx_t *ctx, const kim_consent_t *consent)
{
    kim_store_t *store = kim_ctx_store (ctx);
    uint8_t bytes [KIM_ID_MAX + 2];
    MDB_val key = { s_consent_key (consent->id, bytes), bytes };
    MDB_val value = { sizeof *consent, (void *) consent };
    int rc = kim_store_put (store, KIM_DB_CONSENT, &key, &value, 0);
    return rc? kim_store_error (store, rc, "consent: storing a consent"): 0;
}

//  Notes that `org` received data under consent `id` (first seq kept).
static int
s_recipient_put (kim_ctx_t *ctx, const char *id, const char *org, uint64_t seq)
{
    kim_store_t *store = kim_ctx_store (ctx);
    uint8_t bytes [1 + KIM_ID_MAX + 1 + KIM_ORG_MAX];
    size_t id_size = strlen (id), org_size = strlen (org);
    bytes [0] = KIM_CONSENT_KEY_RECIPIENT;
    memcpy (bytes + 1, id, id_size + 1);
    memcpy (bytes + 2 + id_size, org, org_size);
    uint8_t seq_bytes [8];
    for (int i = 0; i < 8; i++)
        seq_bytes [i] = (uint8_t) (seq >> (56 - 8 * i));
    MDB_val key = { 2 + id_size + org_size, bytes }, value = { 8, seq_bytes };
    int rc = kim_store_put (store, KIM_DB_CONSENT, &key, &value, MDB_NOOVERWRITE);
    return rc && rc != MDB_KEYEXIST? kim_store_error (store, rc, "consent: noting a recipient"): 0;
}

//  The expiry index: consents ordered by valid_until, so that the tick
//  finds those that ran out without reading the registry.
static size_t
s_expiry_key (const kim_consent_t *consent, uint8_t *key)
{
    key [0] = KIM_CONSENT_KEY_EXPIRY;
    for (int i = 0; i < 8; i++)
        key [1 + i] = (uint8_t) (consent->valid_until >> (56 - 8 * i));
    size_t size = strlen (consent->id);
    memcpy (key + 9, consent->id, size);
    return 9 + size;
}

static int
s_expiry_put (kim_ctx_t *ctx, const kim_consent_t *consent)
{
    kim_store_t *store = kim_ctx_store (ctx);
    uint8_t bytes [9 + KIM_ID_MAX];
    MDB_val key = { s_expiry_key (consent, bytes), bytes }, value = { 0, bytes };
    int rc = kim_store_put (store, KIM_DB_CONSENT, &key, &value, 0);
    return rc? kim_store_error (store, rc, "consent: indexing an expiry"): 0;
}

//  Who may grant and revoke: the lead organisation of the case. A consent
//  in a case the broker does not know yet opens that case (the life cycle
//  makes the granting organisation its lead).
static int
s_check_lead (kim_ctx_t *ctx, const char *case_id, const char *sender, const char *granted_by,
              kim_verdict_t *verdict)
{
    char lead [KIM_ORG_MAX + 1] = "";
    int rc = case_id [0]? kim_lifecycle_case_lead (ctx, case_id, lead): -KIM_E_UNKNOWN_CASE;
    if (rc == -KIM_E_UNKNOWN_CASE || rc == -KIM_E_NOT_FOUND) {
        if (!granted_by || streq (granted_by, sender))
            return 0;
        kim_str_copy (lead, sizeof lead, granted_by);
    }
    else
    if (rc)
        return rc;
    if (streq (lead, sender))
        return 0;
    //  Not naming the lead: the asker may take no part in the case.
    verdict->code = KIM_E_NOT_LEAD;
    snprintf (verdict->path, sizeof verdict->path, "hdr.case_id");
    snprintf (verdict->text, sizeof verdict->text, "%s is not the lead organisation of case %s; "
              "only the lead grants and revokes its consents", sender, case_id);
    return -KIM_E_NOT_LEAD;
}

//  Who may hear about a registered consent in a refusal: the organisation
//  that granted it, those it names, and the lead of its case. Everyone else
//  gets what an unknown consent id gets. 1, 0 or -KIM_E_*.
static int
s_knows_consent (kim_ctx_t *ctx, const kim_consent_t *consent, const char *org)
{
    if (streq (consent->granted_by, org))
        return 1;
    for (size_t i = 0; i < consent->recipient_count && i < KIM_LIST_MAX; i++)
        if (streq (consent->recipients [i], org))
            return 1;
    char lead [KIM_ORG_MAX + 1] = "";
    int rc = consent->case_id [0]? kim_lifecycle_case_lead (ctx, consent->case_id, lead): 0;
    if (rc == -KIM_E_UNKNOWN_CASE || rc == -KIM_E_NOT_FOUND)
        rc = 0;
    return rc? rc: streq (lead, org);
}

static int
s_refuse (kim_verdict_t *verdict, int code, const char *path, const char *format, ...)
{
    verdict->code = code;
    kim_str_copy (verdict->path, sizeof verdict->path, path);
    va_list args;
    va_start (args, format);
    vsnprintf (verdict->text, sizeof verdict->text, format, args);
    va_end (args);
    return -code;
}

static int
s_grant_check (kim_ctx_t *ctx, kim_route_t *route, kim_verdict_t *verdict)
{
    const kim_msg_t *msg = route->msg;
    kim_consent_t consent;
    int rc = s_consent_get (ctx, msg->grant_id, &consent);
    if (rc == 0)
        return s_refuse (verdict, KIM_E_BAD_VALUE, "hdr.consent", "consent %s is registered "
                         "already; a changed scope is a new consent with a new id", msg->grant_id);
    if (rc != -KIM_E_NOT_FOUND)
        return rc;
    if (msg->giver [0] && !streq (msg->giver, "subject") && !streq (msg->giver, "guardian")
    &&  !streq (msg->giver, "entruster"))
        return s_refuse (verdict, KIM_E_BAD_VALUE, "hdr.giver", "giver '%s' is none of %s",
                         msg->giver, KIM_CONSENT_GIVERS);
    if (msg->valid_until <= kim_ctx_now (ctx))
        return s_refuse (verdict, KIM_E_BAD_VALUE, "hdr.valid_until",
                         "valid_until lies in the past: consent %s would never be valid",
                         msg->grant_id);
    //  An office's consent names organisations this broker knows: registered
    //  here, or homed at a linked broker by its directory. The grant goes to
    //  the brokers of its recipients of other districts as it is logged
    //  (PROTOCOL.md 16.5); for one not known yet it would never go, and the
    //  transfers under it would be refused there. A consent a peer forwards
    //  may name offices of a third district: it is not checked here.
    if (kim_ctx_org (ctx, msg->sender))
        for (size_t i = 0; i < msg->recipient_count; i++) {
            kim_org_t remote;
            char home [KIM_ORG_MAX + 1];
            if (kim_ctx_org (ctx, msg->recipients [i])
            ||  kim_ctx_remote (ctx, msg->recipients [i], &remote, home))
                continue;
            char path [48];
            snprintf (path, sizeof path, "hdr.recipients[%zu]", i);
            return s_refuse (verdict, KIM_E_UNKNOWN_RECIPIENT, path, "%s is registered neither "
                             "here nor, by their directories, at a linked broker (an office of "
                             "another district is known once its broker's directory arrived)",
                             msg->recipients [i]);
        }
    return s_check_lead (ctx, msg->case_id, msg->sender, NULL, verdict);
}

int
kim_consent_recipients (kim_ctx_t *ctx, const char *id,
                        char recipients [KIM_LIST_MAX][KIM_ORG_MAX + 1])
{
    kim_consent_t consent;
    int rc = s_consent_get (ctx, id, &consent);
    if (rc)
        return rc;
    size_t count = consent.recipient_count < KIM_LIST_MAX? consent.recipient_count: KIM_LIST_MAX;
    memcpy (recipients, consent.recipients, count * sizeof recipients [0]);
    return (int) count;
}

static int
s_grant_applied (kim_ctx_t *ctx, kim_route_t *route)
{
    const kim_msg_t *msg = route->msg;
    kim_consent_t consent;
    memset (&consent, 0, sizeof consent);
    kim_str_copy (consent.id, sizeof consent.id, msg->grant_id);
    kim_str_copy (consent.subject, sizeof consent.subject, msg->subject);
    kim_str_copy (consent.case_id, sizeof consent.case_id, msg->case_id);
    kim_str_copy (consent.granted_by, sizeof consent.granted_by, msg->sender);
    consent.recipient_count = msg->recipient_count;
    memcpy (consent.recipients, msg->recipients, sizeof consent.recipients);
    consent.purpose_count = msg->purpose_count;
    memcpy (consent.purposes, msg->purposes, sizeof consent.purposes);
    consent.categories = msg->categories;
    consent.explicit_art9 = msg->explicit_art9;
    consent.valid_until = msg->valid_until;
    kim_str_copy (consent.giver, sizeof consent.giver, msg->giver);
    zsys_info ("consent: %s granted by %s for case %s (%zu recipients, %zu purposes, until %"
               PRIu64 ")", consent.id, consent.granted_by, consent.case_id,
               consent.recipient_count, consent.purpose_count, consent.valid_until);
    int rc = s_consent_put (ctx, &consent);
    return rc? rc: s_expiry_put (ctx, &consent);
}

static int
s_revoke_check (kim_ctx_t *ctx, kim_route_t *route, kim_verdict_t *verdict)
{
    const kim_msg_t *msg = route->msg;
    const char *broker_set = msg->code [0]? "code": msg->referral_id [0]? "referral_id"
                           : msg->ref_msg_id [0]? "ref_msg_id": NULL;
    if (broker_set) {
        char path [KIM_PATH_MAX + 1];
        snprintf (path, sizeof path, "hdr.%s", broker_set);
        return s_refuse (verdict, KIM_E_BAD_VALUE, path, "%s is set by the broker on the "
                         "notices it makes", broker_set);
    }
    kim_consent_t consent;
    int rc = s_consent_get (ctx, msg->grant_id, &consent);
    int knows = rc == 0? s_knows_consent (ctx, &consent, msg->sender): 0;
    if (knows < 0)
        return knows;
    if (rc == -KIM_E_NOT_FOUND || (rc == 0 && !knows))
        return s_refuse (verdict, KIM_E_CONSENT_UNKNOWN, "hdr.consent",
                         "consent %s is not registered", msg->grant_id);
    if (rc)
        return rc;
    //  Only the lead, who may revoke, hears whether it was revoked already.
    if ((rc = s_check_lead (ctx, consent.case_id, msg->sender, consent.granted_by, verdict)))
        return rc;
    //  The log would otherwise file the revocation under another case
    if (msg->case_id [0] && !streq (msg->case_id, consent.case_id))
        return s_refuse (verdict, KIM_E_CONSENT_BOUND, "hdr.case_id",
                         "consent %s belongs to case %s, not %s", msg->grant_id,
                         consent.case_id, msg->case_id);
    if (consent.revoked_at)
        return s_refuse (verdict, KIM_E_CONSENT_REVOKED, "hdr.consent",
                         "consent %s was revoked already (at %" PRIu64 ")", msg->grant_id,
                         consent.revoked_at);
    return 0;
}

//  Tells every organisation that received data under `consent` (but
//  `skip`) that it ended, with `code` "revoked" or "expired": a
//  broker-made CONSENT_REVOKE. Then, for an expiry, the case's lead, so
//  that it knows to renew. Returns how many were told, or -KIM_E_*.
static int
s_tell_recipients (kim_ctx_t *ctx, const kim_consent_t *consent, const char *skip,
                   const char *code)
{
    //  Collect the recipients first: emitting writes to the store.
    kim_store_t *store = kim_ctx_store (ctx);
    char orgs [64][KIM_ORG_MAX + 1];
    size_t count = 0;
    uint8_t prefix [KIM_ID_MAX + 2];
    size_t prefix_size = strlen (consent->id) + 2;
    prefix [0] = KIM_CONSENT_KEY_RECIPIENT;
    memcpy (prefix + 1, consent->id, prefix_size - 1);
    MDB_cursor *cursor;
    int rc = mdb_cursor_open (kim_store_txn (store), kim_store_dbi (store, KIM_DB_CONSENT), &cursor);
    if (rc)
        return kim_store_error (store, rc, "consent: listing recipients");
    MDB_val key = { prefix_size, prefix }, value;
    for (rc = mdb_cursor_get (cursor, &key, &value, MDB_SET_RANGE);
         rc == 0 && count < sizeof orgs / sizeof orgs [0];
         rc = mdb_cursor_get (cursor, &key, &value, MDB_NEXT)) {
        if (key.mv_size <= prefix_size || memcmp (key.mv_data, prefix, prefix_size) != 0
        ||  key.mv_size - prefix_size > KIM_ORG_MAX)
            break;
        snprintf (orgs [count++], KIM_ORG_MAX + 1, "%.*s", (int) (key.mv_size - prefix_size),
                  (const char *) key.mv_data + prefix_size);
    }
    mdb_cursor_close (cursor);
    if (rc && rc != MDB_NOTFOUND && count < sizeof orgs / sizeof orgs [0])
        return kim_store_error (store, rc, "consent: listing recipients");
    if (count == sizeof orgs / sizeof orgs [0])
        zsys_warning ("consent: %s: more than %zu recipients; only the first are told",
                      consent->id, count);
    //  An expiry has no sender: the lead hears of it like a recipient.
    char lead [KIM_ORG_MAX + 1] = "";
    if (streq (code, "expired")) {
        rc = kim_lifecycle_case_lead (ctx, consent->case_id, lead);
        if (rc && rc != -KIM_E_UNKNOWN_CASE)
            return rc;
    }
    rc = 0;
    int told = 0;
    for (size_t i = 0; rc == 0 && i <= count; i++) {
        const char *org = i < count? orgs [i]: lead;
        if (!org [0] || streq (org, skip) || !kim_ctx_org (ctx, org)
        ||  (i == count && s_in_list (orgs, count, lead)))
            continue;
        kim_msg_t notice;
        kim_msg_init (&notice);
        notice.type = KIM_TYPE_CONSENT_REVOKE;
        kim_str_copy (notice.grant_id, sizeof notice.grant_id, consent->id);
        kim_str_copy (notice.case_id, sizeof notice.case_id, consent->case_id);
        kim_str_copy (notice.code, sizeof notice.code, code);
        rc = kim_ctx_emit (ctx, &notice, org, NULL);
        told++;
    }
    return rc? rc: told;
}

//  Revocation: blocks new transfers at once (the registry says revoked),
//  suspends open referrals relying on it and withholds what they had not
//  delivered yet (life cycle), and tells every organisation that received
//  data under it.
static int
s_revoke_applied (kim_ctx_t *ctx, kim_route_t *route)
{
    const kim_msg_t *msg = route->msg;
    kim_consent_t consent;
    int rc = s_consent_get (ctx, msg->grant_id, &consent);
    if (rc)
        return rc;
    consent.revoked_at = kim_ctx_now (ctx);
    if ((rc = s_consent_put (ctx, &consent)))
        return rc;
    size_t withheld = 0;
    int suspended = kim_lifecycle_suspend_consent (ctx, consent.id, false, route->seq,
                                                   &withheld);
    if (suspended < 0)
        return suspended;
    int told = s_tell_recipients (ctx, &consent, msg->sender, "revoked");
    if (told < 0)
        return told;
    zsys_info ("consent: %s revoked by %s: %d referrals suspended, %zu messages withheld, "
               "%d earlier recipients told", consent.id, msg->sender, suspended, withheld, told);
    return 0;
}

//  Expiry: a consent past its valid_until ends as a revoked one does, but
//  its referrals become LAPSED (renew the consent) rather than SUSPENDED
//  (the person said no). The registry is unchanged: CONSENT_EXPIRED is
//  judged against valid_until at every check.
static int
s_lapse (kim_ctx_t *ctx, const kim_consent_t *consent)
{
    //  No message ends it: the notices that it expired are logged first,
    //  and the referrals' state records name the last of them as the cause.
    int told = s_tell_recipients (ctx, consent, "", "expired");
    if (told < 0)
        return told;
    size_t withheld = 0;
    int suspended = kim_lifecycle_suspend_consent (ctx, consent->id, true,
                                                   kim_store_head (kim_ctx_store (ctx)),
                                                   &withheld);
    if (suspended < 0)
        return suspended;
    zsys_info ("consent: %s expired: %d referrals lapsed, %zu messages withheld, %d told",
               consent->id, suspended, withheld, told);
    return 0;
}

#define S_LAPSE_BATCH 16        //  consents lapsed per tick, so a tick stays short
#define S_META_EXPIRY "Mexpiry_index"

//  A store from before the expiry index has consents without an 'E'
//  entry: they would be refused when expired but never lapse. Once per
//  store, index every unrevoked consent (those already past their time
//  lapse at the next tick), then mark the store as indexed.
static int
s_expiry_migrate (kim_ctx_t *ctx)
{
    kim_store_t *store = kim_ctx_store (ctx);
    MDB_txn *txn = kim_store_txn (store);
    MDB_dbi dbi = kim_store_dbi (store, KIM_DB_CONSENT);
    MDB_val meta = { strlen (S_META_EXPIRY), (void *) S_META_EXPIRY }, value;
    int rc = mdb_get (txn, dbi, &meta, &value);
    if (rc == 0)
        return 0;
    if (rc != MDB_NOTFOUND)
        return kim_store_error (store, rc, "consent: reading the expiry index mark");
    zlistx_t *ids = zlistx_new ();
    if (!ids)
        return -KIM_E_NOMEM;
    zlistx_set_destructor (ids, (zlistx_destructor_fn *) zstr_free);
    MDB_cursor *cursor;
    rc = mdb_cursor_open (txn, dbi, &cursor);
    if (rc) {
        zlistx_destroy (&ids);
        return kim_store_error (store, rc, "consent: listing consents");
    }
    uint8_t first = KIM_CONSENT_KEY_CONSENT;
    MDB_val key = { 1, &first };
    for (rc = mdb_cursor_get (cursor, &key, &value, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get (cursor, &key, &value, MDB_NEXT)) {
        const char *bytes = (const char *) key.mv_data;
        if (bytes [0] != KIM_CONSENT_KEY_CONSENT)
            break;
        if (key.mv_size > 1 && key.mv_size <= KIM_ID_MAX + 1
        &&  !zlistx_add_end (ids, zsys_sprintf ("%.*s", (int) key.mv_size - 1, bytes + 1)))
            break;
    }
    mdb_cursor_close (cursor);
    rc = rc && rc != MDB_NOTFOUND? kim_store_error (store, rc, "consent: listing consents"): 0;
    size_t indexed = 0;
    for (char *id = (char *) zlistx_first (ids); rc == 0 && id; id = (char *) zlistx_next (ids)) {
        kim_consent_t consent;
        rc = s_consent_get (ctx, id, &consent);
        if (rc == 0 && !consent.revoked_at) {
            rc = s_expiry_put (ctx, &consent);
            indexed++;
        }
        else
        if (rc == -KIM_E_INTERNAL)
            rc = 0;             //  a record of another build: logged, left alone
    }
    zlistx_destroy (&ids);
    if (rc == 0) {
        MDB_val empty = { 0, (void *) S_META_EXPIRY };
        rc = kim_store_put (store, KIM_DB_CONSENT, &meta, &empty, 0);
        rc = rc? kim_store_error (store, rc, "consent: marking the expiry index"): 0;
    }
    if (rc == 0 && indexed)
        zsys_info ("consent: indexed %zu registered consents by expiry", indexed);
    return rc;
}

//  Finds consents whose valid_until has passed on the broker's clock (the
//  expiry index is ordered by time: only due entries are read).
static int
s_tick (void *state, kim_ctx_t *ctx)
{
    (void) state;
    kim_store_t *store = kim_ctx_store (ctx);
    MDB_txn *txn = kim_store_txn (store);
    if (!txn)
        return 0;
    int rc = s_expiry_migrate (ctx);
    if (rc)
        return rc;
    uint64_t now = kim_ctx_now (ctx);
    uint8_t due [S_LAPSE_BATCH][9 + KIM_ID_MAX];
    size_t due_size [S_LAPSE_BATCH], count = 0;
    MDB_cursor *cursor;
    rc = mdb_cursor_open (txn, kim_store_dbi (store, KIM_DB_CONSENT), &cursor);
    if (rc)
        return kim_store_error (store, rc, "consent: reading the expiry index");
    uint8_t first = KIM_CONSENT_KEY_EXPIRY;
    MDB_val key = { 1, &first }, value;
    for (rc = mdb_cursor_get (cursor, &key, &value, MDB_SET_RANGE);
         rc == 0 && count < S_LAPSE_BATCH;
         rc = mdb_cursor_get (cursor, &key, &value, MDB_NEXT)) {
        const uint8_t *bytes = (const uint8_t *) key.mv_data;
        if (key.mv_size < 10 || key.mv_size > 9 + KIM_ID_MAX || bytes [0] != KIM_CONSENT_KEY_EXPIRY)
            break;
        uint64_t until = 0;
        for (int i = 0; i < 8; i++)
            until = (until << 8) | bytes [1 + i];
        if (until > now)
            break;
        memcpy (due [count], bytes, key.mv_size);
        due_size [count++] = key.mv_size;
    }
    mdb_cursor_close (cursor);
    if (rc && rc != MDB_NOTFOUND && count < S_LAPSE_BATCH)
        return kim_store_error (store, rc, "consent: reading the expiry index");
    rc = 0;
    for (size_t i = 0; rc == 0 && i < count; i++) {
        MDB_val k = { due_size [i], due [i] };
        rc = kim_store_del (store, KIM_DB_CONSENT, &k, NULL);
        if (rc && rc != MDB_NOTFOUND)
            return kim_store_error (store, rc, "consent: removing an expiry");
        char id [KIM_ID_MAX + 1];
        snprintf (id, sizeof id, "%.*s", (int) (due_size [i] - 9), (const char *) due [i] + 9);
        kim_consent_t consent;
        rc = s_consent_get (ctx, id, &consent);
        if (rc == -KIM_E_NOT_FOUND)
            rc = 0;
        else
        if (rc == 0 && !consent.revoked_at)
            rc = s_lapse (ctx, &consent);
    }
    return rc;
}

//  --------------------------------------------------------------------------
//  Checking transfers

//  Appends the DECISION record of a denial: the header's metadata, the
//  rule, the decision and the reason (MessagePack, like every record body).
static int
s_decision_record (kim_consent_mod_t *self, kim_ctx_t *ctx, const kim_msg_t *msg,
                   const char *recipient, const kim_policy_decision_t *decision)
{
    kim_buf_t *json = &self->json;
    kim_buf_reset (json);
    int rc = kim_consent_json (json, "{\"decision\":\"deny\",\"code\":\"%s\",\"rule\":",
                               kim_errname (decision->code));
    rc = rc? rc: kim_consent_json_str (json, decision->rule);
    rc = rc? rc: kim_consent_json (json, ",\"law\":");
    rc = rc? rc: kim_consent_json_str (json, decision->law);
    rc = rc? rc: kim_consent_json (json, ",\"reason\":");
    rc = rc? rc: kim_consent_json_str (json, decision->text);
    rc = rc? rc: kim_consent_json (json, ",\"msg_id\":\"%s\",\"type\":\"%s\",\"sender\":\"%s\","
                                   "\"recipient\":\"%s\",\"referral_id\":\"%s\",\"case_id\":\"%s\","
                                   "\"subject\":\"%s\",\"purpose\":\"%s\",\"categories\":[",
                                   msg->msg_id, kim_type_name (msg->type), msg->sender, recipient,
                                   msg->referral_id, msg->case_id, msg->subject, msg->purpose);
    bool first = true;
    for (uint32_t bit = 1; rc == 0 && bit <= KIM_CAT_LAST; bit <<= 1)
        if (msg->categories & bit) {
            rc = kim_consent_json (json, "%s\"%s\"", first? "": ",", kim_category_name (bit));
            first = false;
        }
    rc = rc? rc: kim_consent_json (json, "],\"basis\":\"%s\"",
                                   msg->basis == KIM_BASIS_STATUTE? "statute"
                                   : msg->basis == KIM_BASIS_CONSENT? "consent": "none");
    if (rc == 0 && msg->basis == KIM_BASIS_STATUTE) {
        rc = kim_consent_json (json, ",\"citation\":");
        rc = rc? rc: kim_consent_json_str (json, msg->citation);
    }
    if (rc == 0 && msg->basis == KIM_BASIS_CONSENT)
        rc = kim_consent_json (json, ",\"consent_id\":\"%s\"", msg->consent_id);
    rc = rc? rc: kim_consent_json (json, "}");
    kim_buf_reset (&self->pack);
    rc = rc? rc: kim_json_to_msgpack ((const char *) json->data, json->size, &self->pack);
    return rc? rc: kim_ctx_record (ctx, KIM_RECORD_DECISION, self->pack.data, self->pack.size, NULL);
}

//  Where the data go: FORWARD passes the referral on to `org`.
static const char *
s_data_recipient (const kim_route_t *route)
{
    return route->msg->type == KIM_TYPE_FORWARD? route->msg->org
         : route->recipient? route->recipient->id: "";
}

//  The consent lookup for a transfer. To a sender that does not know the
//  consent (s_knows_consent) it is not registered, so naming another's
//  consent id teaches nothing of its scope or state. To those who know it
//  the engine then checks its binding (subject, case, the case's lead:
//  facts.case_id and case_lead), so knowing a consent is not yet leave to
//  cite it.
typedef struct {
    kim_ctx_t *ctx;
    const char *sender;
} s_lookup_t;

static int
s_consent_get_for (void *arg, const char *id, kim_consent_t *consent)
{
    s_lookup_t *lookup = (s_lookup_t *) arg;
    int rc = s_consent_get (lookup->ctx, id, consent);
    int knows = rc == 0? s_knows_consent (lookup->ctx, consent, lookup->sender): 0;
    if (rc || knows < 0)
        return rc? rc: knows;
    return knows? 0: -KIM_E_NOT_FOUND;
}

static int
s_transfer_check (kim_consent_mod_t *self, kim_ctx_t *ctx, kim_route_t *route,
                  kim_verdict_t *verdict)
{
    kim_msg_t *msg = route->msg;
    const char *recipient_id = s_data_recipient (route);
    //  The route's recipient may live at another district's broker
    //  (kim_link.c): the registry here does not list it.
    const kim_org_t *recipient = route->recipient && streq (route->recipient->id, recipient_id)
        ? route->recipient: kim_ctx_org (ctx, recipient_id);
    //  A FORWARD to an office of another district (the life cycle checked
    //  that it is within reach): its directory entry is what is known of it.
    kim_org_t remote;
    char home [KIM_ORG_MAX + 1];
    if (!recipient && kim_ctx_remote (ctx, recipient_id, &remote, home))
        recipient = &remote;
    if (!recipient)
        return s_refuse (verdict, KIM_E_UNKNOWN_RECIPIENT,
                         msg->type == KIM_TYPE_FORWARD? "hdr.org": "hdr.recipient",
                         "%s is not a registered organisation", recipient_id);
    //  The binding of a consent the transfer may cite: the case the data
    //  move in (a FORWARD's is its referral's) and who leads it now.
    char case_id [KIM_ID_MAX + 1], lead [KIM_ORG_MAX + 1] = "";
    kim_str_copy (case_id, sizeof case_id, msg->case_id);
    int rc = 0;
    if (msg->type == KIM_TYPE_FORWARD)
        rc = kim_lifecycle_referral_case (ctx, msg->referral_id, case_id, NULL);
    if (rc == 0 || rc == -KIM_E_UNKNOWN_REFERRAL)
        rc = case_id [0]? kim_lifecycle_case_lead (ctx, case_id, lead): 0;
    if (rc && rc != -KIM_E_UNKNOWN_CASE && rc != -KIM_E_UNKNOWN_REFERRAL)
        return rc;
    kim_policy_facts_t facts = {
        .msg = msg,
        .sender_type = route->sender->type,
        .sender_public = route->sender->public_body,
        .recipient = recipient->id,
        .recipient_type = recipient->type,
        .now = kim_ctx_now (ctx),
        .case_id = case_id,
        .case_lead = lead,
    };
    kim_policy_decision_t decision;
    s_lookup_t lookup = { ctx, route->sender->id };
    rc = kim_policy_decide (self->policy, &facts, s_consent_get_for, &lookup, &decision,
                                NULL);
    if (rc)
        return rc;
    if (decision.code == 0) {
        //  A test policy's unchecked rule decided nothing: it claims no rule.
        if (!decision.unchecked)
            kim_str_copy (msg->rule, sizeof msg->rule, decision.rule);
        self->allowed = true;
        return 0;
    }
    rc = s_decision_record (self, ctx, msg, recipient->id, &decision);
    if (rc)
        return rc;
    zsys_info ("consent: %s %s from %s to %s refused: %s", kim_type_name (msg->type),
               msg->msg_id, msg->sender, recipient->id, decision.text);
    //  The party refused: a FORWARD's is the organisation it names
    const char *party = msg->type == KIM_TYPE_FORWARD? "hdr.org": "hdr.recipient";
    const char *path = decision.code == KIM_E_POLICY_DENY? party
                     : decision.code == KIM_E_NO_BASIS? "hdr.legal_basis"
                     : "hdr.legal_basis.consent_id";
    kim_str_copy (verdict->rule, sizeof verdict->rule, decision.rule);
    return s_refuse (verdict, decision.code, path, "%s", decision.text);
}

//  --------------------------------------------------------------------------
//  The hook

static int
s_check_type (kim_consent_mod_t *self, kim_ctx_t *ctx, kim_route_t *route, kim_verdict_t *verdict);

//  Failures that are no verdict (store errors) doom the batch: say where.
static int
s_check (void *state, kim_ctx_t *ctx, kim_route_t *route, kim_verdict_t *verdict)
{
    int rc = s_check_type ((kim_consent_mod_t *) state, ctx, route, verdict);
    if (rc && !verdict->code)
        zsys_error ("consent: checking %s %s from %s failed: %s",
                    kim_type_name (route->msg->type), route->msg->msg_id, route->msg->sender,
                    kim_strerror (rc));
    return rc;
}

static int
s_check_type (kim_consent_mod_t *self, kim_ctx_t *ctx, kim_route_t *route, kim_verdict_t *verdict)
{
    kim_msg_t *msg = route->msg;
    //  `rule` is the broker's word: a client cannot claim one.
    msg->rule [0] = 0;
    self->allowed = false;
    if (kim_policy_checks (self->policy, msg->type))
        return s_transfer_check (self, ctx, route, verdict);
    switch (msg->type) {
        case KIM_TYPE_CONSENT_GRANT:
            return s_grant_check (ctx, route, verdict);
        case KIM_TYPE_CONSENT_REVOKE:
            return s_revoke_check (ctx, route, verdict);
        case KIM_TYPE_ACCESS_REPORT:
        case KIM_TYPE_ERASURE:
            return kim_subject_check (self, ctx, route, verdict);
        default:
            return 0;
    }
}

static int
s_applied_type (kim_consent_mod_t *self, kim_ctx_t *ctx, kim_route_t *route);

static int
s_applied (void *state, kim_ctx_t *ctx, kim_route_t *route)
{
    int rc = s_applied_type ((kim_consent_mod_t *) state, ctx, route);
    if (rc)
        zsys_error ("consent: recording %s %s (seq %" PRIu64 ") failed: %s",
                    kim_type_name (route->msg->type), route->msg->msg_id, route->seq,
                    kim_strerror (rc));
    return rc;
}

//  An answer inside a referral that carries a payload (an INFO_RESPONSE,
//  a STATUS with a report...) is data about the referral's subject too:
//  it goes into the subject index, so that access reports list it and its
//  sender's erasure purges it. The subject is the opening message's.
static int
s_index_answer (kim_consent_mod_t *self, kim_ctx_t *ctx, kim_route_t *route)
{
    const kim_msg_t *msg = route->msg;
    char case_id [KIM_ID_MAX + 1];
    uint64_t opened = 0;
    int rc = kim_lifecycle_referral_case (ctx, msg->referral_id, case_id, &opened);
    if (rc == -KIM_E_UNKNOWN_REFERRAL || (rc == 0 && !opened))
        return 0;
    kim_record_t record;
    rc = rc? rc: kim_store_read (kim_ctx_store (ctx), opened, &record);
    if (rc == -KIM_E_NOT_FOUND)
        return 0;
    if (rc)
        return rc;
    kim_decode_error_t error;
    if (record.kind != KIM_RECORD_MESSAGE
    ||  kim_msg_decode (self->scratch, record.body, record.body_size, &error)
    ||  !self->scratch->subject [0])
        return 0;
    char subject [KIM_SUBJECT_MAX + 1];
    kim_str_copy (subject, sizeof subject, self->scratch->subject);
    return kim_subject_index (ctx, subject, route->seq);
}

static int
s_applied_type (kim_consent_mod_t *self, kim_ctx_t *ctx, kim_route_t *route)
{
    const kim_msg_t *msg = route->msg;
    if (self->allowed) {
        //  An allowed, checked transfer (its `applied` follows its `check`
        //  with no other message's check between): remember who got what
        //  about whom.
        self->allowed = false;
        int rc = msg->subject [0]? kim_subject_index (ctx, msg->subject, route->seq): 0;
        if (rc == 0 && msg->basis == KIM_BASIS_CONSENT)
            rc = s_recipient_put (ctx, msg->consent_id, s_data_recipient (route), route->seq);
        return rc;
    }
    switch (msg->type) {
        case KIM_TYPE_CONSENT_GRANT:
            return s_grant_applied (ctx, route);
        case KIM_TYPE_CONSENT_REVOKE:
            return s_revoke_applied (ctx, route);
        case KIM_TYPE_ACCESS_REPORT:
        case KIM_TYPE_ERASURE:
            return kim_subject_applied (self, ctx, route);
        default:
            return route->payload_size && msg->referral_id [0]
                && (kim_type_flags (msg->type) & KIM_MSG_FROM_AGENCY)
                 ? s_index_answer (self, ctx, route): 0;
    }
}

static void
s_destroy (void **state_p)
{
    kim_consent_mod_t *self = (kim_consent_mod_t *) *state_p;
    if (self) {
        kim_policy_destroy (&self->policy);
        kim_buf_free (&self->json);
        kim_buf_free (&self->pack);
        kim_buf_free (&self->hdr);
        free (self->scratch);
        free (self);
        *state_p = NULL;
    }
}

int
kim_consent_check_config (const kim_config_t *config, char *error, size_t error_size)
{
    char path [PATH_MAX];
    kim_policy_t *policy = kim_consent_policy_open (config, path, sizeof path, error, error_size);
    int rc = policy? 0: -KIM_E_CONFIG;
    kim_policy_destroy (&policy);
    return rc;
}

kim_policy_t *
kim_consent_policy_open (const kim_config_t *config, char *path, size_t path_size,
                         char *error, size_t error_size)
{
    zconfig_t *tree = (zconfig_t *) kim_config_tree (config);
    zconfig_t *section = tree? zconfig_locate (tree, "policy"): NULL;
    for (zconfig_t *key = section? zconfig_child (section): NULL; key; key = zconfig_next (key))
        if (!streq (zconfig_name (key), "file")) {
            snprintf (error, error_size, "policy/%s: unknown key (expected file)", zconfig_name (key));
            return NULL;
        }
    const char *file = section? zconfig_get (section, "file", ""): "";
    //  A relative path is relative to the config file's folder, so a
    //  config and its policy travel together.
    const char *slash = strrchr (config->path, '/');
    if (*file && *file != '/' && slash)
        snprintf (path, path_size, "%.*s/%s", (int) (slash - config->path), config->path, file);
    else
        snprintf (path, path_size, "%s", file);
    char policy_error [KIM_POLICY_ERROR_MAX] = "";
    kim_policy_t *policy = *path
        ? kim_policy_load (path, policy_error, sizeof policy_error)
        : kim_policy_parse (S_TEST_POLICY, "built-in default deny",
                            policy_error, sizeof policy_error);
    if (!policy)
        snprintf (error, error_size, "policy/file: %s", policy_error);
    return policy;
}

int
kim_consent_new (const kim_module_env_t *env, kim_hook_t *hook, char *error, size_t error_size)
{
    kim_consent_mod_t *self = (kim_consent_mod_t *) calloc (1, sizeof (kim_consent_mod_t));
    if (self)
        self->scratch = (kim_msg_t *) calloc (1, sizeof (kim_msg_t));
    if (!self || !self->scratch) {
        free (self);
        snprintf (error, error_size, "out of memory");
        return -KIM_E_NOMEM;
    }
    kim_buf_init (&self->json);
    kim_buf_init (&self->pack);
    kim_buf_init (&self->hdr);
    char path [PATH_MAX];
    self->policy = kim_consent_policy_open (env->config, path, sizeof path, error, error_size);
    if (!self->policy) {
        void *state = self;
        s_destroy (&state);
        return -KIM_E_CONFIG;
    }
    if (!*path)
        zsys_warning ("consent: no policy/file configured: every REFERRAL, FORWARD and "
                      "HANDOVER_OFFER is denied (default deny); see deploy/policy.cfg");
    else
    if (kim_policy_unchecked (self->policy))
        zsys_warning ("consent: policy %s allows transfers WITHOUT checking their legal basis "
                      "(basis = unchecked): for test brokers only", path);
    else
        zsys_notice ("consent: policy %s: %zu rules, default deny", path,
                     kim_policy_rule_count (self->policy));
    *hook = (kim_hook_t) {
        .name = "consent",
        .check = s_check,
        .applied = s_applied,
        .tick = s_tick,
        .destroy = s_destroy,
        .state = self,
    };
    return 0;
}

void
kim_consent_test (bool verbose)
{
    //  JSON escaping is what the decision records rely on.
    kim_buf_t buf;
    kim_buf_init (&buf);
    assert (kim_consent_json_str (&buf, "a\"b\\c\n§") == 0);
    assert (buf.size == strlen ("\"a\\\"b\\\\c\\u000a§\"")
         && memcmp (buf.data, "\"a\\\"b\\\\c\\u000a§\"", buf.size) == 0);
    kim_buf_free (&buf);
    if (verbose)
        printf ("  consent: JSON escaping OK (the module is tested over a real broker in "
                "tests/integration/test_policy.c)\n");
}
