/*  kim_server_int.h — what the reactor (kim_server.c) and its write batch
    (kim_batch.c) share: the server's state and a few small helpers on it.
    The reactor calls the batch (kim_batch.c); the batch never calls the
    reactor: both send through kim_reply.c. Private to the broker's core;
    modules see kim_hook.h only.
*/
#ifndef KIM_SERVER_INT_H_INCLUDED
#define KIM_SERVER_INT_H_INCLUDED

#include <czmq.h>

#include "kim_hook.h"
#include "kim_metrics.h"
#include "kim_server.h"
#include "kim_store.h"
#include "kim_work.h"
#include "kim_zap.h"

#define KIM_RID_MAX         256     //  ROUTER routing ids are 5 bytes unless a peer sets one
#define KIM_DEDUP_EXPIRE_MS 10000   //  how often old msg_ids are forgotten
#define KIM_HOOKS_MAX       8
//  Item slots beyond batch_max: a frame read while the batch has room may
//  bring a whole SEND_BATCH, or an ACK_RANGE spanning a window of 4096.
#define KIM_ITEMS_SPARE     (KIM_BATCH_MAX + KIM_WINDOW_MAX / KIM_ACKS_MAX)

typedef struct _org_state_t org_state_t;
typedef struct _session_t session_t;

typedef struct {
    uint64_t seq;
    uint64_t sent_ms;
    bool copy;                      //  header only (KIM_MAILBOX_COPY)
} flight_t;

struct _org_state_t {
    const kim_org_t *org;
    session_t *receiver;            //  the session deliveries go to, or NULL
    uint64_t cursor;                //  highest seq handed to the receiver
    flight_t *flights;              //  in flight, ascending seq; window_max slots
    size_t flight_count;
    bool dirty;                     //  listed in the server's dirty list
    org_state_t *next_dirty;
    bool touched;                   //  the open batch added to its mailbox
    org_state_t *next_touched;
    bool held;                      //  mail committed, not yet durable
    org_state_t *next_held;
    bool removed;                   //  dropped from the registry by a reload
    size_t session_count;           //  its sessions now (STATUS, sessions_per_org)
    uint64_t revoked_logged_ms;     //  last log line of a refusal of its revoked key
    //  Rate limit: one token bucket for all of the organisation's
    //  connections, so that more sessions buy no more of the broker.
    double tokens;                  //  command units it may still spend now
    uint64_t refilled_ms;
};

struct _session_t {
    char key [2 * KIM_RID_MAX + 1]; //  hex of the routing id: the hash key
    uint8_t rid [KIM_RID_MAX];
    size_t rid_size;
    org_state_t *org;
    uint32_t window;
    uint64_t last_seen_ms;
    char agent [KIM_AGENT_MAX + 1];
    uint64_t opened;                //  HELLO order (server's count): the oldest goes
                                    //  first at the limit, also within one ms
    uint32_t version;               //  of the protocol, from WELCOME
};

//  A SEND or ACK waiting for the batch's commit.
typedef struct {
    kim_cmd_t cmd;
    uint8_t rid [KIM_RID_MAX];
    size_t rid_size;
    org_state_t *org;               //  the sending organisation
    zmq_msg_t payload;              //  frame 1 of a SEND, or a SEND_BATCH's whole frame
    bool has_payload;
    size_t payload_offset;          //  where the payload lies in `payload`
    size_t payload_size;
    //  An entry of a SEND_BATCH: answered in one RECEIPT_BATCH with the
    //  others, all of them contiguous in the batch.
    uint8_t batch_index;
    uint8_t batch_count;            //  0: not from a SEND_BATCH
    bool settled;                   //  refused when read: nothing to apply
    bool from_range;                //  an ACK_RANGE: seqs already acked pass quietly
    //  An ACK: 1 + the index of its first entry refused when read (in
    //  flight on another session; taken out of cmd.acks), 0 for none. Its
    //  one REJECT names that entry or an earlier one the apply refuses.
    uint32_t refused_at;
    uint64_t refused_seq;
    char ref [KIM_ID_MAX + 1];      //  the msg_id a refusal carries
    //  Outcome of the last apply (reset when a batch is replayed).
    int code;
    char path [KIM_PATH_MAX + 1];
    char text [KIM_TEXT_MAX + 1];
    uint64_t seq;
    bool dup;
    char rule [KIM_ID_MAX + 1];     //  the hook rule that refused it
    //  A PEER_FORWARD: a peer broker hands on a message of one of its own
    //  organisations (or its own notice), which is the sender here.
    bool forwarded;
    kim_org_t remote_sender;
    //  Work the helper thread does for the item from when it is read
    //  (kim_batch_prep_post): the payload's hash, and for an entry of a
    //  SEND_BATCH its decoding. prep_ticket 0: none asked for.
    uint64_t prep_ticket;
    bool hash_due;                  //  the helper makes `hash` from `hash_data`
    const uint8_t *hash_data;
    uint8_t hash [KIM_HASH_SIZE];
    bool decode_due;                //  `entry` is decoded into `cmd` by the helper
    kim_entry_t entry;
    int decode_rc;
    kim_decode_error_t decode_error;
} item_t;

struct _kim_ctx_t {
    kim_server_t *server;
    uint64_t now;
};

struct _kim_server_t {
    kim_config_t *config;
    kim_store_t *store;
    kim_work_t *work;               //  decodes, hashes, seals beside this thread, or NULL
    zcert_t *cert;
    zsock_t *router;
    zsock_t *zap;
    zloop_t *loop;
    zhashx_t *sessions;             //  routing id hex -> session_t (owned)
    zhashx_t *orgs;                 //  org id -> org_state_t (owned)
    item_t *items;                  //  batch_max slots
    size_t item_count;
    org_state_t *dirty;             //  orgs whose mailbox or window changed
    org_state_t *touched;           //  orgs the open batch wrote mail for
    //  What waits for the last commits to be durable (kim_batch_durable):
    //  answers (kim_reply.c) and organisations with new mail, as of the
    //  store's commit mark `held_mark`, kept since `held_ms`.
    kim_buf_t held;
    bool holding;                   //  answers go into `held`, not out
    org_state_t *held_orgs;
    size_t held_mark;
    uint64_t held_ms;
    int lazy_timer;                 //  a sync for held mail alone, or 0
    int ack_timer;                  //  commits ACKs that wait for company, or 0
    bool flush_acks;                //  a session ended: commit this turn's ACKs
    kim_zap_log_t zap_log;          //  refused connections not yet logged
    kim_hook_t hooks [KIM_HOOKS_MAX];
    size_t hook_count;
    kim_ctx_t ctx;
    int (*module_fn) (void *arg, kim_ctx_t *ctx);   //  the batch kim_ctx_batch runs
    void *module_arg;
    zlistx_t *retired;              //  configs replaced by reloads; modules may hold them
    int signal_fd;                  //  SIGHUP arrives here: reload the registry
    const char *clock_file;         //  KIM_CLOCK_FILE: tests move time forward
    int64_t clock_offset_ms;
    kim_buf_t buf;                  //  encoder scratch
    kim_buf_t hdr_buf;              //  canonical header scratch
    kim_cmd_t reply;                //  reply scratch
    kim_cmd_t receipt;              //  RECEIPT, prepared once
    kim_cmd_t batch_head;           //  head of the batch frame being read
    kim_buf_t batch_buf;            //  the RECEIPT_BATCH being written
    uint8_t empty_hash [KIM_HASH_SIZE];     //  of an empty payload: broker-made messages
    uint64_t started_ms;
    uint64_t sessions_opened;       //  HELLOs that opened a session, ever
    uint64_t last_dedup_expire_ms;
    uint64_t last_stats_ms;
    uint64_t drained_ms;            //  when the ROUTER socket was last read empty
    bool failed;
    //  Figures since start.
    uint64_t receipted, duplicates, rejected, delivered, redelivered, acked, batches;
    uint64_t refused [KIM_METRICS_CODES];   //  REJECTs by wire code (kim_metrics.c)
    kim_histogram_t commit_seconds;         //  commit (and data flush) of each batch
    kim_histogram_t sync_seconds;           //  syncs that made commits durable
    kim_histogram_t batch_commands;         //  commands per batch
};

//  --- shared helpers (inline: neither file calls the other for them) ------

//  The broker's clock (ms since the epoch; tests may move it, kim_server.c).
static inline uint64_t
kim_server_now (kim_server_t *self)
{
    return (uint64_t) ((int64_t) zclock_time () + self->clock_offset_ms);
}

//  The organisation's mailbox or window changed: deliver after this turn.
static inline void
kim_server_mark_dirty (kim_server_t *self, org_state_t *state)
{
    if (!state->dirty) {
        state->dirty = true;
        state->next_dirty = self->dirty;
        self->dirty = state;
    }
}

//  A new organisation state starts with a full bucket.
static inline void
kim_server_org_state_init (kim_server_t *self, org_state_t *state, const kim_org_t *org)
{
    state->org = org;
    state->tokens = (double) self->config->rate_burst;
    state->refilled_ms = (uint64_t) zclock_mono ();
}

//  Index of the first flight at or above `seq`.
static inline size_t
kim_server_flight_lower (const org_state_t *state, uint64_t seq)
{
    size_t low = 0, high = state->flight_count;
    while (low < high) {
        size_t mid = (low + high) / 2;
        if (state->flights [mid].seq < seq)
            low = mid + 1;
        else
            high = mid;
    }
    return low;
}

//  Index of `seq` among the flights, or -1.
static inline ssize_t
kim_server_flight_find (const org_state_t *state, uint64_t seq)
{
    size_t low = kim_server_flight_lower (state, seq);
    return low < state->flight_count && state->flights [low].seq == seq? (ssize_t) low: -1;
}

//  Forgets the deliveries of `seqs` in flight to the organisation. One
//  pass over the flights for the whole list: acks come oldest first, and
//  taking them out one by one would shift the window once per ack.
static inline void
kim_server_flights_remove (org_state_t *state, const uint64_t *seqs, size_t count)
{
    size_t gone = 0;
    for (size_t i = 0; i < count; i++) {
        ssize_t index = kim_server_flight_find (state, seqs [i]);
        if (index >= 0 && state->flights [index].sent_ms != UINT64_MAX) {
            state->flights [index].sent_ms = UINT64_MAX;        //  marked
            gone++;
        }
    }
    if (gone == 0)
        return;
    size_t kept = 0;
    for (size_t i = 0; i < state->flight_count; i++)
        if (state->flights [i].sent_ms != UINT64_MAX)
            state->flights [kept++] = state->flights [i];
    state->flight_count = kept;
}

//  --- kim_server_reload.c ---------------------------------------------------

//  Re-reads the registry from the config file. Returns 0 and a summary, or
//  -1 with the error; a file that fails changes nothing.
int
    kim_server_reload (kim_server_t *self, char *summary, size_t summary_size);
//  RELOAD from an operator's session: RELOADED with the summary, or REJECT
//  RELOAD_FAILED naming the file and the key.
void
    kim_server_reload_command (kim_server_t *self, const uint8_t *rid, size_t rid_size,
                               const char *by);

//  --- kim_batch.c -----------------------------------------------------------

//  Runs `apply` in a write batch, replayed while the map grows. Returns 0
//  or -KIM_E_*.
int
    kim_batch_run (kim_server_t *self, int (*apply) (kim_server_t *self));
//  Sends what waited for durable commits, syncing first unless `later`
//  (then only what a later commit made durable already goes out).
void
    kim_batch_durable (kim_server_t *self, bool later);
//  Whether answers wait (as opposed to mail alone, which may wait longer).
bool
    kim_batch_answers_held (kim_server_t *self);
//  Commits the SENDs and ACKs read so far as one batch, then answers them.
//  A batch of ACKs alone waits for the next one unless `flush`: returns
//  true when it waits.
bool
    kim_batch_commit (kim_server_t *self, bool flush);
//  Asks the helper thread for what a queued item needs before it is
//  applied and can be made apart from the batch: the hash of a large
//  payload and, with item->decode_due, the decoding of item->entry into
//  item->cmd. Sets item->prep_ticket (0: nothing asked for).
void
    kim_batch_prep_post (kim_server_t *self, item_t *item);
//  What the broker refuses in a decoded SEND (or SEND_BATCH entry) from
//  `sender` before it stores anything (section 8.3): a role that may not
//  send, a payload above max_payload, a created_at outside the window, an
//  OUTCOME with a payload. Returns the code, or 0, with path and text.
int
    kim_batch_send_check (kim_server_t *self, const org_state_t *sender, const kim_cmd_t *cmd,
                          size_t payload_size, const char **path, char *text,
                          size_t text_size);
//  The hooks' timers (deadlines, retention) and msg_id expiry: an apply for
//  kim_batch_run.
int
    kim_batch_apply_ticks (kim_server_t *self);

#endif
