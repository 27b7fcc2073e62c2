/*  kim_subject.c — the data subject's rights, served from the log.

    ACCESS_REPORT {subject}: which organisations received which categories
    of that subject's data, when, on which basis and under which rule
    (Art. 15 DSGVO, § 83 SGB X). The broker answers with a broker-made
    ACCESS_REPORT to the asker whose payload is a JSON report built from
    the log records the subject index points at: metadata only.

    ERASURE {subject}: purges the payloads of the asker's transfers about
    the subject (Art. 17 DSGVO, § 84 SGB X), tells every organisation that
    received one (Art. 19 DSGVO) with a broker-made ERASURE, and appends a
    KIM_RECORD_PURGE record. Log records keep their payload hashes, so the
    hash chain still verifies. When transfers went to offices of another
    district, the request itself goes into the link mailbox of each of
    their brokers, once (PROTOCOL.md 16.5): that broker purges its copies
    and tells its offices. A request a peer forwarded is not passed on.

    Who may ask: an organisation that sent data about the subject (it is
    the controller of those transfers), or the lead organisation of the
    case named in `case_id`. A report covers the asker's own transfers and,
    for a case lead, every transfer in that case; an erasure covers the
    asker's own transfers (in `case_id` when given).
*/
#include <czmq.h>
#include <sodium.h>

#include "kim_consent_int.h"
#include "kim_lifecycle.h"

#define S_CHUNK         1024    //  index entries read per cursor pass
#define S_PAGE          1000    //  transfers per ACCESS_REPORT page (about 300 KB)
#define S_PURGE_PART    4096    //  seqs per PURGE record (fits an auditor's RECORD frame)
#define S_TOLD_MAX      128     //  distinct recipients an erasure tells

//  One transfer as the report shows it, copied out of the log record.
typedef struct {
    uint64_t seq;
    uint64_t time;
    kim_type_t type;
    char sender [KIM_ORG_MAX + 1];
    char recipient [KIM_ORG_MAX + 1];
    char case_id [KIM_ID_MAX + 1];
    char purpose [KIM_CODE_MAX + 1];
    uint32_t categories;
    kim_basis_t basis;
    char consent_id [KIM_ID_MAX + 1];
    char citation [KIM_CITATION_MAX + 1];
    char rule [KIM_ID_MAX + 1];
    bool payload;
} s_entry_t;

//  Called for each transfer the asker may see: 0 to go on, 1 to stop, -code.
typedef int (s_each_fn) (void *arg, const s_entry_t *entry);

int
kim_subject_index (kim_ctx_t *ctx, const char *subject, uint64_t seq)
{
    kim_store_t *store = kim_ctx_store (ctx);
    uint8_t bytes [1 + KIM_SUBJECT_MAX + 1 + 8];
    size_t size = strlen (subject);
    bytes [0] = KIM_CONSENT_KEY_SUBJECT;
    memcpy (bytes + 1, subject, size + 1);
    for (int i = 0; i < 8; i++)
        bytes [2 + size + i] = (uint8_t) (seq >> (56 - 8 * i));
    MDB_val key = { size + 10, bytes }, value = { 0, NULL };
    int rc = kim_store_put (store, KIM_DB_CONSENT, &key, &value, 0);
    return rc? kim_store_error (store, rc, "consent: indexing a subject"): 0;
}

//  Walks the transfers about `subject` that `asker` may see, in log
//  order: its own (in `case_id` when given), and unless `own`, every
//  transfer of `lead_case` (when the asker leads that case). No cap: the
//  subject index is read in chunks of S_CHUNK keys, each pass reopening
//  its cursor after the last key, so that `fn` may write to the store.
//  Cost per transfer: one index key, one log record read and decoded,
//  one payload lookup. Returns how many `fn` saw, or -KIM_E_*.
static int64_t
s_each (kim_consent_mod_t *self, kim_ctx_t *ctx, const char *subject, const char *asker,
        const char *case_id, const char *lead_case, bool own, s_each_fn *fn, void *arg)
{
    kim_store_t *store = kim_ctx_store (ctx);
    uint8_t prefix [1 + KIM_SUBJECT_MAX + 1 + 8];
    size_t prefix_size = strlen (subject) + 2;
    prefix [0] = KIM_CONSENT_KEY_SUBJECT;
    memcpy (prefix + 1, subject, prefix_size - 1);
    uint64_t *seqs = (uint64_t *) malloc (S_CHUNK * sizeof (uint64_t));
    if (!seqs)
        return -KIM_E_NOMEM;
    int64_t seen = 0;
    uint64_t from = 0;              //  the next pass starts at this seq
    int rc = 0;
    bool more = true;
    while (rc == 0 && more) {
        size_t seq_count = 0;
        uint8_t start [sizeof prefix];
        memcpy (start, prefix, prefix_size);
        for (int i = 0; i < 8; i++)
            start [prefix_size + i] = (uint8_t) (from >> (56 - 8 * i));
        MDB_cursor *cursor;
        rc = mdb_cursor_open (kim_store_txn (store), kim_store_dbi (store, KIM_DB_CONSENT), &cursor);
        if (rc) {
            rc = kim_store_error (store, rc, "consent: reading the subject index");
            break;
        }
        MDB_val key = { prefix_size + 8, start }, value;
        for (rc = mdb_cursor_get (cursor, &key, &value, MDB_SET_RANGE);
             rc == 0 && seq_count < S_CHUNK;
             rc = mdb_cursor_get (cursor, &key, &value, MDB_NEXT)) {
            if (key.mv_size != prefix_size + 8 || memcmp (key.mv_data, prefix, prefix_size) != 0)
                break;
            const uint8_t *bytes = (const uint8_t *) key.mv_data + prefix_size;
            uint64_t seq = 0;
            for (int i = 0; i < 8; i++)
                seq = (seq << 8) | bytes [i];
            seqs [seq_count++] = seq;
        }
        mdb_cursor_close (cursor);
        more = seq_count == S_CHUNK;
        if (rc && rc != MDB_NOTFOUND && !more) {
            rc = kim_store_error (store, rc, "consent: reading the subject index");
            break;
        }
        rc = 0;
        if (seq_count)
            from = seqs [seq_count - 1] + 1;
        for (size_t i = 0; rc == 0 && i < seq_count; i++) {
            kim_record_t record;
            rc = kim_store_read (store, seqs [i], &record);
            if (rc == -KIM_E_NOT_FOUND || (rc == 0 && record.kind != KIM_RECORD_MESSAGE)) {
                rc = 0;
                continue;
            }
            if (rc)
                break;
            kim_msg_t *msg = self->scratch;
            kim_decode_error_t error;
            if (kim_msg_decode (msg, record.body, record.body_size, &error)) {
                zsys_error ("consent: log record %" PRIu64 " of subject %s does not decode: %s "
                            "at %s", seqs [i], subject, kim_strerror (error.code), error.path);
                continue;
            }
            bool mine = streq (msg->sender, asker) && (!case_id [0] || streq (msg->case_id, case_id));
            bool led = !own && lead_case [0] && streq (msg->case_id, lead_case);
            if (!mine && !led)
                continue;
            s_entry_t entry;
            entry.seq = record.seq;
            entry.time = record.time_ms;
            entry.type = msg->type;
            kim_str_copy (entry.sender, sizeof entry.sender, msg->sender);
            snprintf (entry.recipient, sizeof entry.recipient, "%s",
                      msg->type == KIM_TYPE_FORWARD? msg->org: msg->recipient);
            kim_str_copy (entry.case_id, sizeof entry.case_id, msg->case_id);
            kim_str_copy (entry.purpose, sizeof entry.purpose, msg->purpose);
            entry.categories = msg->categories;
            entry.basis = msg->basis;
            kim_str_copy (entry.consent_id, sizeof entry.consent_id, msg->consent_id);
            kim_str_copy (entry.citation, sizeof entry.citation, msg->citation);
            kim_str_copy (entry.rule, sizeof entry.rule, msg->rule);
            //  Whether it is stored is enough: no decryption per transfer
            if ((rc = kim_store_payload_exists (store, seqs [i])) < 0)
                break;
            entry.payload = rc == 1;
            rc = 0;
            seen++;
            rc = fn (arg, &entry);
            if (rc == 1)
                more = false;
        }
        rc = rc == 1? 0: rc;
    }
    free (seqs);
    return rc? rc: seen;
}

//  The case the asker leads, when it names one; "" otherwise.
static int
s_lead_case (kim_ctx_t *ctx, const kim_msg_t *msg, char lead_case [KIM_ID_MAX + 1])
{
    lead_case [0] = 0;
    if (!msg->case_id [0])
        return 0;
    char lead [KIM_ORG_MAX + 1] = "";
    int rc = kim_lifecycle_case_lead (ctx, msg->case_id, lead);
    if (rc == -KIM_E_UNKNOWN_CASE || rc == -KIM_E_NOT_FOUND)
        return 0;
    if (rc)
        return rc;
    if (streq (lead, msg->sender))
        snprintf (lead_case, KIM_ID_MAX + 1, "%s", msg->case_id);
    return 0;
}

static int
s_found (void *arg, const s_entry_t *entry)
{
    (void) arg;
    (void) entry;
    return 1;                       //  one transfer of the asker's is enough
}

int
kim_subject_check (kim_consent_mod_t *self, kim_ctx_t *ctx, kim_route_t *route,
                   kim_verdict_t *verdict)
{
    const kim_msg_t *msg = route->msg;
    char lead_case [KIM_ID_MAX + 1];
    int rc = s_lead_case (ctx, msg, lead_case);
    if (rc || lead_case [0])
        return rc;
    int64_t found = s_each (self, ctx, msg->subject, msg->sender, msg->case_id, "", true,
                            s_found, NULL);
    if (found < 0)
        return (int) found;
    if (found > 0)
        return 0;
    verdict->code = KIM_E_NOT_PARTY;
    snprintf (verdict->path, sizeof verdict->path, "hdr.subject");
    if (snprintf (verdict->text, sizeof verdict->text, "%s sent no data about subject %s%s%s; "
                  "only an organisation that sent data, or the lead of the case named in "
                  "case_id, may ask", msg->sender, msg->subject,
                  msg->case_id [0]? " in case ": "", msg->case_id) < 0)
        verdict->text [0] = 0;
    return -KIM_E_NOT_PARTY;
}

static const char *
s_basis_name (kim_basis_t basis)
{
    return basis == KIM_BASIS_STATUTE? "statute": basis == KIM_BASIS_CONSENT? "consent": "none";
}

//  Appends a broker-made message with a payload (kim_ctx_emit makes empty
//  ones): header with the payload's length and hash, the log record, the
//  payload beside it, and the recipient's mailbox.
static int
s_emit_payload (kim_consent_mod_t *self, kim_ctx_t *ctx, kim_msg_t *msg, const char *recipient,
                const uint8_t *payload, size_t size)
{
    kim_store_t *store = kim_ctx_store (ctx);
    snprintf (msg->msg_id, sizeof msg->msg_id, "broker-%" PRIu64, kim_store_head (store) + 1);
    kim_str_copy (msg->sender, sizeof msg->sender, kim_ctx_config (ctx)->name);
    kim_str_copy (msg->recipient, sizeof msg->recipient, recipient);
    msg->created_at = kim_ctx_now (ctx);
    msg->payload_len = (uint32_t) size;
    msg->has_payload_hash = true;
    crypto_generichash (msg->payload_hash, KIM_HASH_SIZE, payload, size, NULL, 0);
    kim_buf_reset (&self->hdr);
    uint64_t seq;
    int rc = kim_msg_encode (msg, &self->hdr);
    if (rc == 0)
        rc = kim_store_append (store, KIM_RECORD_MESSAGE, kim_ctx_now (ctx), self->hdr.data,
                               self->hdr.size, &seq);
    if (rc == 0)
        rc = kim_store_payload_put (store, seq, payload, size);
    if (rc == 0)
        rc = kim_ctx_deliver_payload (ctx, recipient, seq);
    return rc;
}

//  An access report is sent in pages of S_PAGE transfers, each a
//  broker-made ACCESS_REPORT; the last says "last": true and the total.
typedef struct {
    kim_consent_mod_t *self;
    kim_ctx_t *ctx;
    const kim_msg_t *msg;
    int64_t total;
    uint32_t page;                  //  pages sent
    uint32_t in_page;               //  transfers in the page being written
} s_report_t;

static int
s_page_open (s_report_t *report)
{
    kim_buf_t *json = &report->self->json;
    kim_buf_reset (json);
    report->in_page = 0;
    return kim_consent_json (json, "{\"subject\":\"%s\",\"requested_by\":\"%s\",\"case_id\":"
                             "\"%s\",\"generated_at\":%" PRIu64 ",\"page\":%u,\"transfers\":[",
                             report->msg->subject, report->msg->sender, report->msg->case_id,
                             kim_ctx_now (report->ctx), report->page + 1);
}

static int
s_page_send (s_report_t *report, bool last)
{
    kim_buf_t *json = &report->self->json;
    int rc = last? kim_consent_json (json, "],\"last\":true,\"total\":%" PRId64 "}\n",
                                     report->total)
                 : kim_consent_json (json, "],\"last\":false}\n");
    if (rc)
        return rc;
    kim_msg_t page;
    kim_msg_init (&page);
    page.type = KIM_TYPE_ACCESS_REPORT;
    kim_str_copy (page.subject, sizeof page.subject, report->msg->subject);
    kim_str_copy (page.case_id, sizeof page.case_id, report->msg->case_id);
    rc = s_emit_payload (report->self, report->ctx, &page, report->msg->sender, json->data,
                         json->size);
    report->page++;
    return rc;
}

static int
s_report_entry (void *arg, const s_entry_t *entry)
{
    s_report_t *report = (s_report_t *) arg;
    kim_buf_t *json = &report->self->json;
    int rc = 0;
    if (report->in_page == S_PAGE)
        rc = s_page_send (report, false);
    if (rc == 0 && report->in_page == S_PAGE)
        rc = s_page_open (report);
    rc = rc? rc: kim_consent_json (json, "%s{\"seq\":%" PRIu64 ",\"time\":%" PRIu64 ",\"type\":"
                                   "\"%s\",\"from\":\"%s\",\"to\":\"%s\",\"case_id\":\"%s\","
                                   "\"purpose\":\"%s\",\"categories\":[",
                                   report->in_page? ",": "", entry->seq, entry->time,
                                   kim_type_name (entry->type), entry->sender, entry->recipient,
                                   entry->case_id, entry->purpose);
    bool first = true;
    for (uint32_t bit = 1; rc == 0 && bit <= KIM_CAT_LAST; bit <<= 1)
        if (entry->categories & bit) {
            rc = kim_consent_json (json, "%s\"%s\"", first? "": ",", kim_category_name (bit));
            first = false;
        }
    rc = rc? rc: kim_consent_json (json, "],\"basis\":\"%s\",", s_basis_name (entry->basis));
    if (rc == 0 && entry->basis == KIM_BASIS_CONSENT)
        rc = kim_consent_json (json, "\"consent_id\":\"%s\",", entry->consent_id);
    if (rc == 0 && entry->basis == KIM_BASIS_STATUTE) {
        rc = kim_consent_json (json, "\"citation\":");
        rc = rc? rc: kim_consent_json_str (json, entry->citation);
        rc = rc? rc: kim_consent_json (json, ",");
    }
    rc = rc? rc: kim_consent_json (json, "\"rule\":\"%s\",\"payload\":\"%s\"}", entry->rule,
                                   entry->payload? "kept": "erased");
    report->in_page++;
    report->total++;
    return rc;
}

static int
s_report (kim_consent_mod_t *self, kim_ctx_t *ctx, const kim_msg_t *msg, const char *lead_case)
{
    s_report_t report = { self, ctx, msg, 0, 0, 0 };
    int rc = s_page_open (&report);
    int64_t seen = rc? rc: s_each (self, ctx, msg->subject, msg->sender, msg->case_id, lead_case,
                                   false, s_report_entry, &report);
    rc = seen < 0? (int) seen: s_page_send (&report, true);
    if (rc == 0)
        zsys_info ("consent: access report on subject %s for %s: %" PRId64 " transfers in %u "
                   "pages", msg->subject, msg->sender, report.total, report.page);
    return rc;
}

//  An erasure purges as it walks; the PURGE record is written in parts of
//  S_PURGE_PART seqs ("part": 1, 2, ...; the last says "last": true).
//  Each organisation told gets its notice after the walk, naming the
//  transfers to it that the erasure covers, in parts of as many seqs.
typedef struct {
    char org [KIM_ORG_MAX + 1];
    char case_id [KIM_ID_MAX + 1];  //  the case of the first transfer to it
    uint64_t *seqs;
    size_t count;
    size_t size;
} s_told_t;

typedef struct {
    kim_consent_mod_t *self;
    kim_ctx_t *ctx;
    const kim_msg_t *msg;
    uint64_t request_seq;
    uint32_t part;
    size_t in_part;                 //  seqs in the part being written
    size_t purged;
    size_t told_count;
    s_told_t told [S_TOLD_MAX];
    bool told_full;                 //  S_TOLD_MAX reached (warned once)
    bool local;                     //  the asker is ours: far copies are asked for
    size_t peer_count;
    char peers [KIM_PEERS_MAX][KIM_ORG_MAX + 1];
} s_erase_t;

//  A transfer to an office of another district: the request goes to its
//  broker's link mailbox, once per broker. Returns 0 or -KIM_E_*.
static int
s_erase_far (s_erase_t *erase, const char *recipient)
{
    kim_org_t remote;
    char home [KIM_ORG_MAX + 1];
    if (!erase->local || !kim_ctx_remote (erase->ctx, recipient, &remote, home))
        return 0;
    for (size_t p = 0; p < erase->peer_count; p++)
        if (streq (erase->peers [p], home))
            return 0;
    if (erase->peer_count == KIM_PEERS_MAX)
        return 0;
    char mailbox [KIM_LINK_MAILBOX_MAX + 1];
    snprintf (mailbox, sizeof mailbox, KIM_LINK_MAILBOX_PREFIX "%s", home);
    int rc = kim_store_mailbox_put_note (kim_ctx_store (erase->ctx), mailbox, erase->request_seq,
                                         "");
    if (rc == 0)
        snprintf (erase->peers [erase->peer_count++], KIM_ORG_MAX + 1, "%s", home);
    return rc;
}

static int
s_part_open (s_erase_t *erase)
{
    kim_buf_t *json = &erase->self->json;
    kim_buf_reset (json);
    erase->in_part = 0;
    return kim_consent_json (json, "{\"reason\":\"erasure\",\"subject\":\"%s\",\"requested_by\":"
                             "\"%s\",\"msg_id\":\"%s\",\"request_seq\":%" PRIu64 ",\"case_id\":"
                             "\"%s\",\"part\":%u,\"seqs\":[", erase->msg->subject,
                             erase->msg->sender, erase->msg->msg_id, erase->request_seq,
                             erase->msg->case_id, erase->part + 1);
}

static int
s_part_write (s_erase_t *erase, bool last)
{
    kim_consent_mod_t *self = erase->self;
    kim_buf_t *json = &self->json;
    int rc = kim_consent_json (json, "],\"told\":[");
    for (size_t t = 0; rc == 0 && last && t < erase->told_count; t++)
        rc = kim_consent_json (json, "%s\"%s\"", t? ",": "", erase->told [t].org);
    rc = rc? rc: kim_consent_json (json, "],\"last\":%s}", last? "true": "false");
    kim_buf_reset (&self->pack);
    rc = rc? rc: kim_json_to_msgpack ((const char *) json->data, json->size, &self->pack);
    rc = rc? rc: kim_ctx_record (erase->ctx, KIM_RECORD_PURGE, self->pack.data, self->pack.size,
                                 NULL);
    erase->part++;
    return rc;
}

//  The organisation told about transfer `entry`, found or added; NULL when
//  S_TOLD_MAX are told already (logged once).
static s_told_t *
s_told (s_erase_t *erase, const s_entry_t *entry)
{
    for (size_t t = 0; t < erase->told_count; t++)
        if (streq (erase->told [t].org, entry->recipient))
            return &erase->told [t];
    if (erase->told_count == S_TOLD_MAX) {
        if (!erase->told_full)
            zsys_warning ("consent: erasure of subject %s: more than %d recipients; only the "
                          "first are told", erase->msg->subject, S_TOLD_MAX);
        erase->told_full = true;
        return NULL;
    }
    s_told_t *told = &erase->told [erase->told_count++];
    kim_str_copy (told->org, sizeof told->org, entry->recipient);
    kim_str_copy (told->case_id, sizeof told->case_id, entry->case_id);
    return told;
}

static int
s_erase_entry (void *arg, const s_entry_t *entry)
{
    s_erase_t *erase = (s_erase_t *) arg;
    int rc = 0;
    if (entry->payload) {
        if (erase->in_part == S_PURGE_PART) {
            rc = s_part_write (erase, false);
            rc = rc? rc: s_part_open (erase);
        }
        rc = rc? rc: kim_store_payload_del (kim_ctx_store (erase->ctx), entry->seq);
        rc = rc? rc: kim_consent_json (&erase->self->json, "%s%" PRIu64, erase->in_part? ",": "",
                                       entry->seq);
        erase->in_part++;
        erase->purged++;
    }
    if (rc || streq (entry->recipient, erase->msg->sender))
        return rc;
    if (!kim_ctx_org (erase->ctx, entry->recipient))
        return s_erase_far (erase, entry->recipient);
    //  Every transfer to it that the erasure covers, whether its payload
    //  went now or before: the recipient's copy of each is what it decides on
    s_told_t *told = s_told (erase, entry);
    if (!told)
        return 0;
    if (told->count == told->size) {
        size_t size = told->size? told->size * 2: 16;
        uint64_t *seqs = (uint64_t *) realloc (told->seqs, size * sizeof (uint64_t));
        if (!seqs)
            return -KIM_E_NOMEM;
        told->seqs = seqs;
        told->size = size;
    }
    told->seqs [told->count++] = entry->seq;
    return 0;
}

//  The broker-made ERASUREs to one organisation: its payload names the
//  request and the seqs of the transfers to it (PROTOCOL.md 9.3).
static int
s_notify (s_erase_t *erase, const s_told_t *told, kim_buf_t *json)
{
    int rc = 0;
    uint32_t parts = (uint32_t) ((told->count + S_PURGE_PART - 1) / S_PURGE_PART);
    for (uint32_t part = 0; rc == 0 && part < parts; part++) {
        kim_buf_reset (json);
        rc = kim_consent_json (json, "{\"subject\":\"%s\",\"requested_by\":\"%s\","
                               "\"request_seq\":%" PRIu64 ",\"case_id\":\"%s\",\"part\":%u,"
                               "\"seqs\":[", erase->msg->subject, erase->msg->sender,
                               erase->request_seq, erase->msg->case_id, part + 1);
        size_t end = (size_t) (part + 1) * S_PURGE_PART;
        for (size_t i = (size_t) part * S_PURGE_PART; rc == 0 && i < told->count && i < end; i++)
            rc = kim_consent_json (json, "%s%" PRIu64, i % S_PURGE_PART? ",": "", told->seqs [i]);
        rc = rc? rc: kim_consent_json (json, "],\"last\":%s}\n", part + 1 == parts? "true": "false");
        kim_msg_t notice;
        kim_msg_init (&notice);
        notice.type = KIM_TYPE_ERASURE;
        kim_str_copy (notice.subject, sizeof notice.subject, erase->msg->subject);
        kim_str_copy (notice.case_id, sizeof notice.case_id, told->case_id);
        rc = rc? rc: s_emit_payload (erase->self, erase->ctx, &notice, told->org, json->data,
                                     json->size);
    }
    return rc;
}

static int
s_erase (kim_consent_mod_t *self, kim_ctx_t *ctx, const kim_msg_t *msg, uint64_t request_seq)
{
    s_erase_t *erase = (s_erase_t *) calloc (1, sizeof (s_erase_t));
    if (!erase)
        return -KIM_E_NOMEM;
    *erase = (s_erase_t) { .self = self, .ctx = ctx, .msg = msg, .request_seq = request_seq,
                           .local = kim_ctx_org (ctx, msg->sender) != NULL };
    int rc = s_part_open (erase);
    int64_t seen = rc? rc: s_each (self, ctx, msg->subject, msg->sender, msg->case_id, "", true,
                                   s_erase_entry, erase);
    rc = seen < 0? (int) seen: 0;
    //  The notices have a buffer of their own: the PURGE part is open in
    //  self->json
    kim_buf_t json;
    kim_buf_init (&json);
    for (size_t t = 0; rc == 0 && t < erase->told_count; t++)
        rc = s_notify (erase, &erase->told [t], &json);
    kim_buf_free (&json);
    rc = rc? rc: s_part_write (erase, true);
    if (rc == 0)
        zsys_info ("consent: erasure of subject %s for %s: %zu payloads purged, %zu recipients "
                   "told, %zu linked brokers asked", msg->subject, msg->sender, erase->purged,
                   erase->told_count, erase->peer_count);
    for (size_t t = 0; t < erase->told_count; t++)
        free (erase->told [t].seqs);
    free (erase);
    return rc;
}

int
kim_subject_applied (kim_consent_mod_t *self, kim_ctx_t *ctx, kim_route_t *route)
{
    //  `msg` points at the batch's item, not into the store, so emitting
    //  below cannot move it.
    const kim_msg_t *msg = route->msg;
    char lead_case [KIM_ID_MAX + 1];
    int rc = s_lead_case (ctx, msg, lead_case);
    if (rc)
        return rc;
    return msg->type == KIM_TYPE_ERASURE? s_erase (self, ctx, msg, route->seq)
                                        : s_report (self, ctx, msg, lead_case);
}
