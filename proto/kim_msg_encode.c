/*  kim_msg_encode.c — canonical encoding of commands and message headers,
    and the growable buffers that encoders write into.

    Every integer, string, binary, map and array gets the smallest
    MessagePack form that holds it (the forms msgpack-c's packer writes);
    with the fixed field order of the tables (kim_msg_int.h) and absent
    fields omitted, equal values encode to equal bytes. Values are checked
    first with the checks decoding uses (kim_msg.c), so what encodes,
    decodes.

    The packer writes straight into the buffer: the broker encodes two
    headers per message (the log record and the notice it answers with),
    and a write callback per token cost more than the bytes it wrote.
*/
#include <stdlib.h>
#include <string.h>

#include "kim_msg_int.h"

//  --------------------------------------------------------------------------
//  Buffers

void
kim_buf_init (kim_buf_t *self)
{
    self->data = NULL;
    self->size = 0;
    self->capacity = 0;
}

void
kim_buf_reset (kim_buf_t *self)
{
    self->size = 0;
}

void
kim_buf_free (kim_buf_t *self)
{
    free (self->data);
    kim_buf_init (self);
}

int
kim_buf_reserve (kim_buf_t *self, size_t extra)
{
    if (extra <= self->capacity - self->size)
        return 0;
    if (extra > SIZE_MAX / 2 - self->size)
        return -KIM_E_NOMEM;
    size_t capacity = self->capacity? self->capacity: 256;
    while (capacity - self->size < extra)
        capacity *= 2;
    uint8_t *data = realloc (self->data, capacity);
    if (!data)
        return -KIM_E_NOMEM;
    self->data = data;
    self->capacity = capacity;
    return 0;
}

int
kim_buf_append (kim_buf_t *self, const void *data, size_t size)
{
    if (size == 0)
        return 0;               //  memcpy from NULL is undefined even for 0 bytes
    int rc = kim_buf_reserve (self, size);
    if (rc)
        return rc;
    memcpy (self->data + self->size, data, size);
    self->size += size;
    return 0;
}

//  --------------------------------------------------------------------------
//  The packer: MessagePack tokens written into a buffer. A failed
//  reservation marks it failed; s_pack_finish then drops what it wrote.

typedef struct {
    kim_buf_t *out;
    bool failed;
} s_pack_t;

static void
s_pack_init (s_pack_t *self, kim_buf_t *out)
{
    self->out = out;
    self->failed = false;
}

//  Room for `size` more bytes, or NULL (and failed).
static uint8_t *
s_room (s_pack_t *self, size_t size)
{
    if (self->failed || kim_buf_reserve (self->out, size)) {
        self->failed = true;
        return NULL;
    }
    uint8_t *at = self->out->data + self->out->size;
    self->out->size += size;
    return at;
}

static void
s_pack_bytes (s_pack_t *self, const void *data, size_t size)
{
    uint8_t *at = size? s_room (self, size): NULL;
    if (at)
        memcpy (at, data, size);
}

//  A head byte `tag` followed by `value` in `width` bytes, big-endian.
static void
s_pack_head (s_pack_t *self, uint8_t tag, uint64_t value, size_t width)
{
    uint8_t *at = s_room (self, 1 + width);
    if (!at)
        return;
    *at++ = tag;
    for (size_t i = width; i > 0; i--)
        *at++ = (uint8_t) (value >> (8 * (i - 1)));
}

static void
s_pack_uint (s_pack_t *self, uint64_t value)
{
    if (value < 0x80)
        s_pack_head (self, (uint8_t) value, 0, 0);
    else
    if (value <= 0xff)
        s_pack_head (self, 0xcc, value, 1);
    else
    if (value <= 0xffff)
        s_pack_head (self, 0xcd, value, 2);
    else
    if (value <= 0xffffffff)
        s_pack_head (self, 0xce, value, 4);
    else
        s_pack_head (self, 0xcf, value, 8);
}

//  A map's or an array's head: `fix` | n below 16, else 16 or 32 bits.
static void
s_pack_count (s_pack_t *self, uint8_t fix, uint8_t tag16, size_t count)
{
    if (count < 16)
        s_pack_head (self, (uint8_t) (fix | count), 0, 0);
    else
    if (count <= 0xffff)
        s_pack_head (self, tag16, count, 2);
    else
        s_pack_head (self, (uint8_t) (tag16 + 1), count, 4);
}

static void
s_pack_map (s_pack_t *self, size_t count)
{
    s_pack_count (self, 0x80, 0xde, count);
}

static void
s_pack_array (s_pack_t *self, size_t count)
{
    s_pack_count (self, 0x90, 0xdc, count);
}

static void
s_pack_bool (s_pack_t *self, bool value)
{
    s_pack_head (self, value? 0xc3: 0xc2, 0, 0);
}

//  A str's or a bin's head: `tag8` with an 8-bit length, the next tag
//  with 16 bits, the one after with 32.
static void
s_pack_length (s_pack_t *self, uint8_t tag8, size_t size)
{
    if (size <= 0xff)
        s_pack_head (self, tag8, size, 1);
    else
    if (size <= 0xffff)
        s_pack_head (self, (uint8_t) (tag8 + 1), size, 2);
    else
        s_pack_head (self, (uint8_t) (tag8 + 2), size, 4);
}

static void
s_pack_bin (s_pack_t *self, const void *data, size_t size)
{
    s_pack_length (self, 0xc4, size);
    s_pack_bytes (self, data, size);
}

static void
s_pack_str (s_pack_t *self, const char *s, size_t len)
{
    //  Ids and codes are short: head and bytes in one reservation.
    if (len < 32) {
        uint8_t *at = s_room (self, 1 + len);
        if (at) {
            *at = (uint8_t) (0xa0 | len);
            memcpy (at + 1, s, len);
        }
        return;
    }
    s_pack_length (self, 0xd9, len);
    s_pack_bytes (self, s, len);
}

static void
s_pack_cstr (s_pack_t *self, const char *s)
{
    s_pack_str (self, s, strlen (s));
}

static void s_pack_msg (s_pack_t *self, const kim_msg_t *msg);

static void
s_pack_field (s_pack_t *self, const s_field_t *f, const void *base)
{
    const uint8_t *v = (const uint8_t *) base + f->offset;
    s_pack_str (self, f->key, f->key_len);
    switch (f->kind) {
        case S_K_CMD:
            s_pack_cstr (self, kim_cmd_name (*(const kim_cmd_id_t *) v));
            break;
        case S_K_ID: case S_K_ORG: case S_K_CODE: case S_K_TEXT: case S_K_KEY:
            s_pack_str (self, (const char *) v, strnlen ((const char *) v, f->size));
            break;
        case S_K_DIR: {
            const kim_cmd_t *cmd = base;
            if (!cmd->dir && cmd->dir_raw && cmd->dir_raw_size) {
                //  Re-encoding a decoded reply: the array was checked then.
                s_pack_bytes (self, cmd->dir_raw, cmd->dir_raw_size);
                break;
            }
            s_pack_array (self, cmd->dir_count);
            for (size_t i = 0; i < cmd->dir_count; i++) {
                //  The required fields, then the optional ones present.
                const kim_dir_entry_t *entry = &cmd->dir [i];
                size_t count = 0;
                for (size_t j = 0; j < S_COUNT (kim_msgi_dir_fields); j++)
                    if ((S_DIR_REQUIRED & (1ull << j))
                    ||  kim_msgi_present (&kim_msgi_dir_fields [j], entry))
                        count++;
                s_pack_map (self, count);
                for (size_t j = 0; j < S_COUNT (kim_msgi_dir_fields); j++)
                    if ((S_DIR_REQUIRED & (1ull << j))
                    ||  kim_msgi_present (&kim_msgi_dir_fields [j], entry))
                        s_pack_field (self, &kim_msgi_dir_fields [j], entry);
            }
            break;
        }
        case S_K_U32: case S_K_SCHEMA:
            s_pack_uint (self, *(const uint32_t *) v);
            break;
        case S_K_U64:
            s_pack_uint (self, *(const uint64_t *) v);
            break;
        case S_K_ERRCODE:
            s_pack_uint (self, (uint32_t) *(const int *) v);
            break;
        case S_K_REASON:
            s_pack_cstr (self, kim_errname (*(const int *) v));
            break;
        case S_K_BOOL:
            s_pack_bool (self, *(const bool *) v);
            break;
        case S_K_BIN:
            s_pack_bin (self, v, f->size);
            break;
        case S_K_BODY: {
            const kim_cmd_t *cmd = base;
            s_pack_bin (self, cmd->body, cmd->body_size);
            break;
        }
        case S_K_TYPE:
            s_pack_cstr (self, kim_type_name (*(const kim_type_t *) v));
            break;
        case S_K_PRIORITY:
            s_pack_cstr (self, kim_msgi_priority_names [*(const kim_priority_t *) v]);
            break;
        case S_K_BASIS: {
            const kim_msg_t *msg = base;
            s_pack_map (self, 1 + (msg->consent_id [0] != 0) + (msg->citation [0] != 0));
            for (size_t i = 0; i < S_COUNT (kim_msgi_basis_fields); i++)
                if (i == S_B_KIND || kim_msgi_present (&kim_msgi_basis_fields [i], msg)) {
                    if (i == S_B_KIND) {
                        s_pack_str (self, "kind", 4);
                        s_pack_cstr (self, kim_msgi_basis_names [msg->basis]);
                    }
                    else
                        s_pack_field (self, &kim_msgi_basis_fields [i], msg);
                }
            break;
        }
        case S_K_CATEGORIES: {
            uint32_t bits = *(const uint32_t *) v;
            s_pack_array (self, (size_t) __builtin_popcount (bits));
            for (uint32_t bit = 1; bit && bit <= bits; bit <<= 1)
                if (bits & bit)
                    s_pack_cstr (self, kim_category_name (bit));
            break;
        }
        case S_K_ID_LIST: case S_K_ORG_LIST: case S_K_CODE_LIST: {
            size_t count = *(const size_t *) ((const uint8_t *) base + f->aux);
            size_t esize = f->size / f->max;
            s_pack_array (self, count);
            for (size_t i = 0; i < count; i++) {
                const char *s = (const char *) v + i * esize;
                s_pack_str (self, s, strnlen (s, esize));
            }
            break;
        }
        case S_K_U32_LIST: case S_K_U64_LIST: {
            size_t count = *(const size_t *) ((const uint8_t *) base + f->aux);
            s_pack_array (self, count);
            for (size_t i = 0; i < count; i++)
                s_pack_uint (self, f->kind == S_K_U32_LIST? ((const uint32_t *) v) [i]
                                                          : ((const uint64_t *) v) [i]);
            break;
        }
        case S_K_TYPE_LIST: {
            size_t count = *(const size_t *) ((const uint8_t *) base + f->aux);
            s_pack_array (self, count);
            for (size_t i = 0; i < count; i++)
                s_pack_cstr (self, kim_type_name (((const kim_type_t *) v) [i]));
            break;
        }
        case S_K_HDR:
            s_pack_msg (self, (const kim_msg_t *) v);
            break;
        case S_K_STATUS:
            s_pack_map (self, S_COUNT (kim_msgi_status_fields));
            for (size_t i = 0; i < S_COUNT (kim_msgi_status_fields); i++)
                s_pack_field (self, &kim_msgi_status_fields [i], v);
            break;
        default:
            self->failed = true;
            break;
    }
}

static void
s_pack_msg_fields (s_pack_t *self, const kim_msg_t *msg, uint64_t mask)
{
    s_pack_map (self, (size_t) __builtin_popcountll (mask));
    for (size_t i = 0; i < S_COUNT (kim_msgi_hdr_fields); i++)
        if (mask & (1ull << i))
            s_pack_field (self, &kim_msgi_hdr_fields [i], msg);
}

static void
s_pack_msg (s_pack_t *self, const kim_msg_t *msg)
{
    s_pack_msg_fields (self, msg, kim_msgi_msg_presence (msg));
}

static int
s_pack_finish (s_pack_t *pack, size_t start)
{
    if (pack->failed) {
        pack->out->size = start;
        return -KIM_E_NOMEM;
    }
    if (pack->out->size - start > KIM_FRAME_MAX) {
        pack->out->size = start;
        return -KIM_E_TOO_LARGE;
    }
    return 0;
}

int
kim_msg_encode (const kim_msg_t *self, kim_buf_t *out)
{
    if (!self || !out)
        return -KIM_E_ARGS;
    //  One look at which fields are present serves the check and the packing
    uint64_t mask = kim_msgi_msg_presence (self);
    kim_decode_error_t err;
    if (kim_msgi_msg_check_fields (self, mask, "", &err))
        return -err.code;
    size_t start = out->size;
    s_pack_t pack;
    s_pack_init (&pack, out);
    s_pack_msg_fields (&pack, self, mask);
    return s_pack_finish (&pack, start);
}

//  The fields a command writes: the required ones, and the optional ones
//  that are present.
static uint64_t
s_cmd_mask (const kim_cmd_t *self, const s_cmd_rule_t *rule)
{
    uint64_t mask = rule->required;
    for (size_t i = 0; i < S_COUNT (kim_msgi_cmd_fields); i++)
        if ((rule->optional & (1ull << i)) && kim_msgi_present (&kim_msgi_cmd_fields [i], self))
            mask |= 1ull << i;
    return mask;
}

int
kim_cmd_encode (const kim_cmd_t *self, kim_buf_t *out)
{
    if (!self || !out)
        return -KIM_E_ARGS;
    const s_cmd_rule_t *rule = kim_msgi_cmd_rule (self->id);
    if (!rule)
        return -KIM_E_UNKNOWN_CMD;
    uint64_t mask = s_cmd_mask (self, rule);
    kim_decode_error_t err;
    for (size_t i = 1; i < S_COUNT (kim_msgi_cmd_fields); i++)
        if ((mask & (1ull << i)) && kim_msgi_check_field (&kim_msgi_cmd_fields [i], self, "", &err))
            return -err.code;
    if (kim_msgi_cmd_check_rules (self, &err))
        return -err.code;

    size_t start = out->size;
    s_pack_t pack;
    s_pack_init (&pack, out);
    s_pack_map (&pack, (size_t) __builtin_popcountll (mask));
    for (size_t i = 0; i < S_COUNT (kim_msgi_cmd_fields); i++)
        if (mask & (1ull << i))
            s_pack_field (&pack, &kim_msgi_cmd_fields [i], self);
    return s_pack_finish (&pack, start);
}

static int
s_encode_logged (kim_cmd_id_t id, uint64_t seq, const uint8_t *hdr, size_t hdr_size,
                 kim_buf_t *out);

int
kim_cmd_encode_deliver (uint64_t seq, const uint8_t *hdr, size_t hdr_size, kim_buf_t *out)
{
    return s_encode_logged (KIM_CMD_DELIVER, seq, hdr, hdr_size, out);
}

int
kim_cmd_encode_forward (uint64_t seq, const uint8_t *hdr, size_t hdr_size, kim_buf_t *out)
{
    return s_encode_logged (KIM_CMD_PEER_FORWARD, seq, hdr, hdr_size, out);
}

//  DELIVER and PEER_FORWARD: {cmd, seq, hdr} with the header as the log holds it.
static int
s_encode_logged (kim_cmd_id_t id, uint64_t seq, const uint8_t *hdr, size_t hdr_size,
                 kim_buf_t *out)
{
    //  The header comes from our own log, canonical already; only its
    //  outer shape is checked here.
    if (!hdr || !out || hdr_size == 0 || hdr_size > KIM_FRAME_MAX
    ||  !((hdr [0] >= 0x80 && hdr [0] <= 0x8f) || hdr [0] == 0xde || hdr [0] == 0xdf))
        return -KIM_E_ARGS;
    size_t start = out->size;
    s_pack_t pack;
    s_pack_init (&pack, out);
    s_pack_map (&pack, 3);
    s_pack_str (&pack, "cmd", 3);
    s_pack_cstr (&pack, kim_cmd_name (id));
    s_pack_str (&pack, "seq", 3);
    s_pack_uint (&pack, seq);
    s_pack_str (&pack, "hdr", 3);
    s_pack_bytes (&pack, hdr, hdr_size);
    return s_pack_finish (&pack, start);
}

//  --------------------------------------------------------------------------
//  Version 2's batch frames

//  The head is {"cmd": <name>, "count": n}; with n at most KIM_BATCH_MAX
//  the count is a positive fixint, one byte and the head's last, so a
//  writer may fill it in when it knows how many entries it packed.
static size_t
s_batch_head_size (kim_cmd_id_t id)
{
    return 1 + 4 + 1 + strlen (kim_cmd_name (id)) + 6 + 1;
}

int
kim_batch_begin (kim_cmd_id_t id, kim_buf_t *out)
{
    if (!out || !kim_cmd_is_batch (id))
        return -KIM_E_ARGS;
    size_t start = out->size;
    s_pack_t pack;
    s_pack_init (&pack, out);
    s_pack_map (&pack, 2);
    s_pack_cstr (&pack, "cmd");
    s_pack_cstr (&pack, kim_cmd_name (id));
    s_pack_cstr (&pack, "count");
    s_pack_uint (&pack, 1);
    return s_pack_finish (&pack, start);
}

int
kim_batch_payload (const void *data, size_t size, kim_buf_t *out)
{
    if (!out || (size && !data) || size > KIM_PAYLOAD_MAX)
        return -KIM_E_ARGS;
    uint8_t head [5];
    size_t head_size;
    if (size <= 0xff) {
        head [0] = 0xc4;
        head [1] = (uint8_t) size;
        head_size = 2;
    }
    else
    if (size <= 0xffff) {
        head [0] = 0xc5;
        head [1] = (uint8_t) (size >> 8);
        head [2] = (uint8_t) size;
        head_size = 3;
    }
    else {
        head [0] = 0xc6;
        head [1] = (uint8_t) (size >> 24);
        head [2] = (uint8_t) (size >> 16);
        head [3] = (uint8_t) (size >> 8);
        head [4] = (uint8_t) size;
        head_size = 5;
    }
    if (kim_buf_reserve (out, head_size + size))
        return -KIM_E_NOMEM;
    kim_buf_append (out, head, head_size);
    if (size)
        kim_buf_append (out, data, size);
    return 0;
}

int
kim_batch_end (kim_cmd_id_t id, size_t count, size_t start, kim_buf_t *out)
{
    if (!out || !kim_cmd_is_batch (id) || count == 0 || count > KIM_BATCH_MAX
    ||  start + s_batch_head_size (id) > out->size)
        return -KIM_E_ARGS;
    out->data [start + s_batch_head_size (id) - 1] = (uint8_t) count;
    return 0;
}
