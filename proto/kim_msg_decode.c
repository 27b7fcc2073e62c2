/*  kim_msg_decode.c — strict decoding of commands and message headers: a
    bounds-checked reader of MessagePack, driven by the field tables.

    Why a hand-written reader: msgpack-c's unpacker allocates count * sizeof
    (msgpack_object) for whatever count a map or array header claims, so five
    hostile bytes could demand gigabytes. Decoding here walks the bytes with a
    bounds-checked cursor instead, in two passes: the first checks the
    structure (every length within the input, depth, entry counts, no trailing
    bytes) and finds "cmd"; the second reads the fields straight into the
    fixed-size structs. Nothing is allocated per message.

    A value read is checked by kim_msg.c (kim_msgi_check_field), with the same
    code the encoder and kim_msg_validate use.
*/
#include <string.h>

#include "kim_msg_int.h"

//  --------------------------------------------------------------------------
//  Decoding: a bounds-checked cursor over MessagePack

typedef enum {
    S_T_NIL, S_T_BOOL, S_T_UINT, S_T_NINT, S_T_FLOAT, S_T_STR, S_T_BIN,
    S_T_ARRAY, S_T_MAP, S_T_EXT
} s_tag_t;

typedef struct {
    s_tag_t tag;
    uint64_t u;                 //  UINT value, BOOL value, ARRAY/MAP count
    const uint8_t *ptr;         //  STR/BIN/EXT bytes
    size_t len;
} s_obj_t;

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} s_cur_t;

static uint64_t
s_be (const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p [i];
    return v;
}

//  Reads the next object's header; for STR, BIN and EXT also its bytes.
//  Returns 0, or -1 when the input ends early or the byte is never used.
static int
s_next (s_cur_t *c, s_obj_t *o)
{
    if (c->p >= c->end)
        return -1;
    uint8_t b = *c->p++;
    size_t avail = (size_t) (c->end - c->p);
    int n = 0;                  //  bytes of the length or value that follow
    o->u = 0;
    o->ptr = NULL;
    o->len = 0;
    if (b <= 0x7f) {
        o->tag = S_T_UINT;
        o->u = b;
        return 0;
    }
    if (b >= 0xe0) {
        o->tag = S_T_NINT;
        return 0;
    }
    if (b <= 0x8f) {
        o->tag = S_T_MAP;
        o->u = b & 0x0f;
        return 0;
    }
    if (b <= 0x9f) {
        o->tag = S_T_ARRAY;
        o->u = b & 0x0f;
        return 0;
    }
    if (b <= 0xbf) {
        o->tag = S_T_STR;
        o->len = b & 0x1f;
        goto bytes;
    }
    switch (b) {
        case 0xc0: o->tag = S_T_NIL; return 0;
        case 0xc2: case 0xc3: o->tag = S_T_BOOL; o->u = b & 1; return 0;
        case 0xc4: o->tag = S_T_BIN; n = 1; goto length;
        case 0xc5: o->tag = S_T_BIN; n = 2; goto length;
        case 0xc6: o->tag = S_T_BIN; n = 4; goto length;
        case 0xc7: o->tag = S_T_EXT; n = 1; goto ext_length;
        case 0xc8: o->tag = S_T_EXT; n = 2; goto ext_length;
        case 0xc9: o->tag = S_T_EXT; n = 4; goto ext_length;
        case 0xca: o->tag = S_T_FLOAT; o->len = 4; goto bytes;
        case 0xcb: o->tag = S_T_FLOAT; o->len = 8; goto bytes;
        case 0xcc: case 0xcd: case 0xce: case 0xcf:
            n = 1 << (b - 0xcc);
            if (avail < (size_t) n)
                return -1;
            o->tag = S_T_UINT;
            o->u = s_be (c->p, n);
            c->p += n;
            return 0;
        case 0xd0: case 0xd1: case 0xd2: case 0xd3:
            n = 1 << (b - 0xd0);
            if (avail < (size_t) n)
                return -1;
            //  A signed encoding of a non-negative value is still a valid uint.
            o->tag = (c->p [0] & 0x80)? S_T_NINT: S_T_UINT;
            o->u = o->tag == S_T_UINT? s_be (c->p, n): 0;
            c->p += n;
            return 0;
        case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
            o->tag = S_T_EXT;
            o->len = ((size_t) 1 << (b - 0xd4)) + 1;
            goto bytes;
        case 0xd9: o->tag = S_T_STR; n = 1; goto length;
        case 0xda: o->tag = S_T_STR; n = 2; goto length;
        case 0xdb: o->tag = S_T_STR; n = 4; goto length;
        case 0xdc: case 0xdd: case 0xde: case 0xdf:
            n = (b & 1)? 4: 2;
            if (avail < (size_t) n)
                return -1;
            o->tag = b <= 0xdd? S_T_ARRAY: S_T_MAP;
            o->u = s_be (c->p, n);
            c->p += n;
            return 0;
        default:        //  0xc1, never used
            return -1;
    }
ext_length:
    if (avail < (size_t) n)
        return -1;
    o->len = (size_t) s_be (c->p, n) + 1;       //  + the ext type byte
    c->p += n;
    goto bytes;
length:
    if (avail < (size_t) n)
        return -1;
    o->len = (size_t) s_be (c->p, n);
    c->p += n;
bytes:
    if ((size_t) (c->end - c->p) < o->len)
        return -1;
    o->ptr = c->p;
    c->p += o->len;
    return 0;
}

typedef struct {
    const uint8_t *key;         //  map key, or NULL for an array index
    size_t key_len;
    uint64_t index;
} s_comp_t;

typedef struct {
    s_cur_t c;
    kim_decode_error_t *err;
    //  Structure pass: where we are, for error paths
    int base_depth;             //  depth of the outermost map (command 1, header 2)
    bool find_cmd;
    s_comp_t comp [KIM_DEPTH_MAX + 2];
    const uint8_t *cmd_value;   //  the first top-level "cmd" value
    //  Field pass
    const uint8_t *reason;
    size_t reason_len;
    kim_dir_entry_t *dir_out;   //  DIRECTORY_REPLY entries go here, if not NULL
    size_t dir_max;
} s_dec_t;

static int
s_scan_fail (s_dec_t *d, int code, int upto)
{
    kim_decode_error_t *err = d->err;
    err->code = code;
    err->path [0] = 0;
    for (int level = d->base_depth; level <= upto; level++) {
        s_comp_t *comp = &d->comp [level];
        if (comp->key) {
            if (err->path [0])
                kim_msgi_path_add (err->path, ".", 1, false);
            kim_msgi_path_add (err->path, (const char *) comp->key, comp->key_len, true);
        }
        else
            kim_msgi_path_index (err->path, comp->index);
    }
    return -code;
}

static int s_scan_value (s_dec_t *d, s_obj_t *o, int depth);

static int
s_scan (s_dec_t *d, int depth)
{
    s_obj_t o;
    if (s_next (&d->c, &o))
        return s_scan_fail (d, KIM_E_MALFORMED, depth - 1);
    return s_scan_value (d, &o, depth);
}

//  Checks the contents of an object whose header was read. `depth` is the
//  depth the object has if it is a map or array; recursion stops at
//  KIM_DEPTH_MAX + 1, so hostile nesting cannot exhaust the stack.
static int
s_scan_value (s_dec_t *d, s_obj_t *o, int depth)
{
    //  One rule for every string in the frame, wherever it is: command
    //  names, types, codes, keys and x- values alike (rule 4).
    if (o->tag == S_T_STR && !kim_utf8_valid (o->ptr, o->len))
        return s_scan_fail (d, KIM_E_BAD_UTF8, depth - 1);
    if (o->tag != S_T_MAP && o->tag != S_T_ARRAY)
        return 0;
    if (depth > KIM_DEPTH_MAX)
        return s_scan_fail (d, KIM_E_TOO_DEEP, depth - 1);
    if (o->u > (o->tag == S_T_MAP? KIM_MAP_MAX: KIM_ARRAY_MAX))
        return s_scan_fail (d, KIM_E_TOO_MANY, depth - 1);
    s_comp_t *comp = &d->comp [depth];
    for (uint64_t i = 0; i < o->u; i++) {
        comp->key = NULL;
        comp->key_len = 0;
        comp->index = i;
        if (o->tag == S_T_MAP) {
            s_obj_t k;
            if (s_next (&d->c, &k))
                return s_scan_fail (d, KIM_E_MALFORMED, depth);
            if (k.tag == S_T_STR) {
                comp->key = k.ptr;
                comp->key_len = k.len;
                if (!kim_utf8_valid (k.ptr, k.len))
                    return s_scan_fail (d, KIM_E_BAD_UTF8, depth);
            }
            else {
                comp->key = (const uint8_t *) "?";
                comp->key_len = 1;
                if (s_scan_value (d, &k, depth + 1))
                    return -d->err->code;
            }
            if (d->find_cmd && depth == d->base_depth && !d->cmd_value
            &&  k.tag == S_T_STR && k.len == 3 && memcmp (k.ptr, "cmd", 3) == 0)
                d->cmd_value = d->c.p;
        }
        if (s_scan (d, depth + 1))
            return -d->err->code;
    }
    return 0;
}

//  Skips one object of a structure that passed the scan.
static int
s_skip (s_cur_t *c, int depth)
{
    s_obj_t o;
    if (s_next (c, &o) || depth > KIM_DEPTH_MAX + 1)
        return -1;
    if (o.tag == S_T_ARRAY || o.tag == S_T_MAP) {
        uint64_t n = o.tag == S_T_MAP? o.u * 2: o.u;
        for (uint64_t i = 0; i < n; i++)
            if (s_skip (c, depth + 1))
                return -1;
    }
    return 0;
}

//  First pass over a whole frame: the structure only.
static int
s_scan_frame (s_dec_t *d, const uint8_t *data, size_t size, int base_depth, bool find_cmd)
{
    d->c.p = data;
    d->c.end = data + size;
    d->base_depth = base_depth;
    d->find_cmd = find_cmd;
    d->cmd_value = NULL;
    d->reason = NULL;
    d->reason_len = 0;
    s_obj_t o;
    if (s_next (&d->c, &o) || o.tag != S_T_MAP)
        return kim_msgi_fail (d->err, KIM_E_MALFORMED, "", NULL, -1);
    if (s_scan_value (d, &o, base_depth))
        return -d->err->code;
    if (d->c.p != d->c.end)
        return kim_msgi_fail (d->err, KIM_E_MALFORMED, "", NULL, -1);
    d->c.p = data;              //  rewind for the field pass
    return 0;
}

static int
s_read_str (s_dec_t *d, s_obj_t *o, const char *prefix, const char *key, int64_t index)
{
    if (s_next (&d->c, o))
        return kim_msgi_fail (d->err, KIM_E_MALFORMED, prefix, key, index);
    if (o->tag != S_T_STR)
        return kim_msgi_fail (d->err, KIM_E_BAD_TYPE, prefix, key, index);
    return 0;
}

//  Reads a str into a char buffer. Type and length are checked here; the
//  format is checked on the copy (kim_msgi_check_field), as for encoding.
//  UTF-8 needs no second look: the structure pass (s_scan_frame), which
//  every decode runs first, refused any string that is not UTF-8 or holds
//  a NUL, which would silently cut the C string short.
static int
s_read_str_into (s_dec_t *d, char *buf, size_t size, const char *prefix, const char *key, int64_t index)
{
    s_obj_t o = { 0 };
    if (s_read_str (d, &o, prefix, key, index))
        return -d->err->code;
    if (o.len > size - 1)
        return kim_msgi_fail (d->err, KIM_E_TOO_LONG, prefix, key, index);
    if (o.len)
        memcpy (buf, o.ptr, o.len);
    buf [o.len] = 0;
    return 0;
}

static int
s_read_uint (s_dec_t *d, uint64_t *value, uint64_t max, const char *prefix, const char *key, int64_t index)
{
    s_obj_t o;
    if (s_next (&d->c, &o))
        return kim_msgi_fail (d->err, KIM_E_MALFORMED, prefix, key, index);
    if (o.tag == S_T_NINT)
        return kim_msgi_fail (d->err, KIM_E_BAD_VALUE, prefix, key, index);
    if (o.tag != S_T_UINT)
        return kim_msgi_fail (d->err, KIM_E_BAD_TYPE, prefix, key, index);
    if (o.u > max)
        return kim_msgi_fail (d->err, KIM_E_BAD_VALUE, prefix, key, index);
    *value = o.u;
    return 0;
}

static int
s_read_array (s_dec_t *d, s_obj_t *o, uint64_t max, const char *prefix, const char *key)
{
    if (s_next (&d->c, o))
        return kim_msgi_fail (d->err, KIM_E_MALFORMED, prefix, key, -1);
    if (o->tag != S_T_ARRAY)
        return kim_msgi_fail (d->err, KIM_E_BAD_TYPE, prefix, key, -1);
    if (o->u > max)
        return kim_msgi_fail (d->err, KIM_E_TOO_MANY, prefix, key, -1);
    return 0;
}

static int
s_field_find (const s_field_t *table, size_t count, const uint8_t *key, size_t len)
{
    for (size_t i = 0; i < count; i++)
        if (table [i].key_len == len && memcmp (table [i].key, key, len) == 0)
            return (int) i;
    return -1;
}

static int s_decode_map (s_dec_t *d, const s_field_t *table, size_t count, uint64_t allowed,
                         void *base, const char *prefix, uint64_t *seen_p);

static int
s_decode_field (s_dec_t *d, const s_field_t *f, void *base, const char *prefix)
{
    uint8_t *v = (uint8_t *) base + f->offset;
    const char *key = f->key;
    s_obj_t o;
    uint64_t x;
    switch (f->kind) {
        case S_K_CMD:
            if (s_skip (&d->c, 0))
                return kim_msgi_fail (d->err, KIM_E_MALFORMED, prefix, key, -1);
            return 0;
        case S_K_ID: case S_K_ORG: case S_K_CODE: case S_K_TEXT: case S_K_KEY:
            if (s_read_str_into (d, (char *) v, f->size, prefix, key, -1))
                return -d->err->code;
            break;
        case S_K_DIR: {
            kim_cmd_t *cmd = base;
            const uint8_t *start = d->c.p;
            if (s_read_array (d, &o, KIM_DIRECTORY_MAX, prefix, key))
                return -d->err->code;
            if (d->dir_out && o.u > d->dir_max)
                return kim_msgi_fail (d->err, KIM_E_TOO_MANY, prefix, key, -1);
            for (uint64_t i = 0; i < o.u; i++) {
                kim_dir_entry_t scratch, *entry = d->dir_out? &d->dir_out [i]: &scratch;
                memset (entry, 0, sizeof *entry);
                char sub [KIM_PATH_MAX + 1];
                kim_msgi_dir_prefix (sub, prefix, key, (size_t) i);
                uint64_t seen;
                if (s_decode_map (d, kim_msgi_dir_fields, S_COUNT (kim_msgi_dir_fields), ~0ull, entry, sub, &seen))
                    return -d->err->code;
                if (S_DIR_REQUIRED & ~seen)
                    return kim_msgi_fail (d->err, KIM_E_MISSING_FIELD, sub,
                                          kim_msgi_dir_fields [kim_msgi_lowest_bit (S_DIR_REQUIRED & ~seen)].key, -1);
                //  The fields were checked one by one as they were read.
            }
            cmd->dir_count = (size_t) o.u;
            cmd->dir = d->dir_out;
            cmd->dir_raw = start;
            cmd->dir_raw_size = (size_t) (d->c.p - start);
            return 0;
        }
        case S_K_U32: case S_K_SCHEMA:
            if (s_read_uint (d, &x, UINT32_MAX, prefix, key, -1))
                return -d->err->code;
            *(uint32_t *) v = (uint32_t) x;
            break;
        case S_K_U64:
            if (s_read_uint (d, &x, UINT64_MAX, prefix, key, -1))
                return -d->err->code;
            *(uint64_t *) v = x;
            break;
        case S_K_ERRCODE:
            if (s_read_uint (d, &x, f->hi, prefix, key, -1))
                return -d->err->code;
            *(int *) v = (int) x;
            break;
        case S_K_BOOL:
            if (s_next (&d->c, &o))
                return kim_msgi_fail (d->err, KIM_E_MALFORMED, prefix, key, -1);
            if (o.tag != S_T_BOOL)
                return kim_msgi_fail (d->err, KIM_E_BAD_TYPE, prefix, key, -1);
            *(bool *) v = o.u != 0;
            break;
        case S_K_BIN: case S_K_BODY:
            if (s_next (&d->c, &o))
                return kim_msgi_fail (d->err, KIM_E_MALFORMED, prefix, key, -1);
            if (o.tag != S_T_BIN)
                return kim_msgi_fail (d->err, KIM_E_BAD_TYPE, prefix, key, -1);
            if (f->kind == S_K_BODY) {
                *(const uint8_t **) v = o.len? o.ptr: NULL;
                *(size_t *) ((uint8_t *) base + f->aux) = o.len;
                break;
            }
            if (o.len != f->size)
                return kim_msgi_fail (d->err, KIM_E_BAD_VALUE, prefix, key, -1);
            memcpy (v, o.ptr, o.len);
            if (f->aux != f->offset)
                *(bool *) ((uint8_t *) base + f->aux) = true;
            break;
        case S_K_TYPE: {
            if (s_read_str (d, &o, prefix, key, -1))
                return -d->err->code;
            kim_type_t type = kim_msgi_type_lookup (o.ptr, o.len);
            if (type == KIM_TYPE_NONE)
                return kim_msgi_fail (d->err, KIM_E_UNKNOWN_TYPE, prefix, key, -1);
            *(kim_type_t *) v = type;
            break;
        }
        case S_K_PRIORITY: case S_K_BASIS_KIND: {
            if (s_read_str (d, &o, prefix, key, -1))
                return -d->err->code;
            const char *const *names = f->kind == S_K_PRIORITY? kim_msgi_priority_names: kim_msgi_basis_names;
            int found = -1;
            for (int i = 0; i < 3; i++)
                if (names [i] && o.len == strlen (names [i]) && memcmp (o.ptr, names [i], o.len) == 0)
                    found = i;
            if (found < 0)
                return kim_msgi_fail (d->err, KIM_E_BAD_VALUE, prefix, key, -1);
            //  Both enums are plain ints numbered as their name tables.
            if (f->kind == S_K_PRIORITY)
                *(kim_priority_t *) v = (kim_priority_t) found;
            else
                *(kim_basis_t *) v = (kim_basis_t) found;
            return 0;
        }
        case S_K_BASIS: {
            char sub [KIM_PATH_MAX + 1];
            kim_msgi_join (sub, prefix, key);
            uint64_t seen;
            if (s_decode_map (d, kim_msgi_basis_fields, S_COUNT (kim_msgi_basis_fields), ~0ull, base, sub, &seen))
                return -d->err->code;
            if (!(seen & (1ull << S_B_KIND)))
                return kim_msgi_fail (d->err, KIM_E_MISSING_FIELD, sub, "kind", -1);
            return kim_msgi_check_basis (base, prefix, d->err);
        }
        case S_K_CATEGORIES: {
            if (s_read_array (d, &o, f->max, prefix, key))
                return -d->err->code;
            uint32_t bits = 0;
            for (uint64_t i = 0; i < o.u; i++) {
                s_obj_t name;
                if (s_read_str (d, &name, prefix, key, (int64_t) i))
                    return -d->err->code;
                uint32_t bit = kim_msgi_category_lookup (name.ptr, name.len);
                if (!bit || (bits & bit))
                    return kim_msgi_fail (d->err, KIM_E_BAD_VALUE, prefix, key, (int64_t) i);
                bits |= bit;
            }
            *(uint32_t *) v = bits;
            return 0;
        }
        case S_K_ID_LIST: case S_K_ORG_LIST: case S_K_CODE_LIST: {
            if (s_read_array (d, &o, f->max, prefix, key))
                return -d->err->code;
            size_t esize = f->size / f->max;
            for (uint64_t i = 0; i < o.u; i++)
                if (s_read_str_into (d, (char *) v + i * esize, esize, prefix, key, (int64_t) i))
                    return -d->err->code;
            *(size_t *) ((uint8_t *) base + f->aux) = (size_t) o.u;
            break;
        }
        case S_K_U32_LIST: case S_K_U64_LIST: {
            if (s_read_array (d, &o, f->max, prefix, key))
                return -d->err->code;
            uint64_t max = f->kind == S_K_U32_LIST? UINT32_MAX: UINT64_MAX;
            for (uint64_t i = 0; i < o.u; i++) {
                if (s_read_uint (d, &x, max, prefix, key, (int64_t) i))
                    return -d->err->code;
                if (f->kind == S_K_U32_LIST)
                    ((uint32_t *) v) [i] = (uint32_t) x;
                else
                    ((uint64_t *) v) [i] = x;
            }
            *(size_t *) ((uint8_t *) base + f->aux) = (size_t) o.u;
            break;
        }
        case S_K_TYPE_LIST: {
            if (s_read_array (d, &o, f->max, prefix, key))
                return -d->err->code;
            for (uint64_t i = 0; i < o.u; i++) {
                s_obj_t name;
                if (s_read_str (d, &name, prefix, key, (int64_t) i))
                    return -d->err->code;
                kim_type_t type = kim_msgi_type_lookup (name.ptr, name.len);
                if (type == KIM_TYPE_NONE)
                    return kim_msgi_fail (d->err, KIM_E_UNKNOWN_TYPE, prefix, key, (int64_t) i);
                ((kim_type_t *) v) [i] = type;
            }
            *(size_t *) ((uint8_t *) base + f->aux) = (size_t) o.u;
            break;
        }
        case S_K_REASON: {
            if (s_read_str (d, &o, prefix, key, -1))
                return -d->err->code;
            if (o.len > KIM_REASON_MAX)
                return kim_msgi_fail (d->err, KIM_E_TOO_LONG, prefix, key, -1);
            if (o.len == 0)
                return kim_msgi_fail (d->err, KIM_E_BAD_VALUE, prefix, key, -1);
            for (size_t i = 0; i < o.len; i++) {
                uint8_t c = o.ptr [i];
                if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'))
                    return kim_msgi_fail (d->err, KIM_E_BAD_VALUE, prefix, key, -1);
            }
            d->reason = o.ptr;
            d->reason_len = o.len;
            return 0;
        }
        case S_K_HDR: {
            char sub [KIM_PATH_MAX + 1];
            kim_msgi_join (sub, prefix, key);
            uint64_t seen;
            return s_decode_map (d, kim_msgi_hdr_fields, S_COUNT (kim_msgi_hdr_fields), ~0ull, v, sub, &seen);
        }
        case S_K_STATUS: {
            char sub [KIM_PATH_MAX + 1];
            kim_msgi_join (sub, prefix, key);
            uint64_t seen, all = (1ull << S_COUNT (kim_msgi_status_fields)) - 1;
            if (s_decode_map (d, kim_msgi_status_fields, S_COUNT (kim_msgi_status_fields), all, v, sub, &seen))
                return -d->err->code;
            if (seen != all)
                return kim_msgi_fail (d->err, KIM_E_MISSING_FIELD, sub,
                                      kim_msgi_status_fields [kim_msgi_lowest_bit (all & ~seen)].key, -1);
            return 0;
        }
        default:
            return kim_msgi_fail (d->err, KIM_E_INTERNAL, prefix, key, -1);
    }
    //  The key was present, so its value is checked even when it reads as
    //  "absent" (an empty id is a bad id, not a missing one).
    return kim_msgi_check_field (f, base, prefix, d->err);
}

//  Decodes one map of known fields. Keys may come in any order; `allowed`
//  says which table entries this map may hold, anything else is unknown
//  unless it starts with "x-" (ignored). *seen_p gets the fields present.
static int
s_decode_map (s_dec_t *d, const s_field_t *table, size_t count, uint64_t allowed,
              void *base, const char *prefix, uint64_t *seen_p)
{
    s_obj_t m;
    if (s_next (&d->c, &m))
        return kim_msgi_fail (d->err, KIM_E_MALFORMED, prefix, NULL, -1);
    if (m.tag != S_T_MAP)
        return kim_msgi_fail (d->err, KIM_E_BAD_TYPE, prefix, NULL, -1);
    //  Extension keys are remembered to refuse duplicates among them too.
    struct { const uint8_t *ptr; size_t len; } ext [KIM_MAP_MAX];
    size_t ext_count = 0;
    uint64_t seen = 0;
    for (uint64_t i = 0; i < m.u; i++) {
        s_obj_t k;
        if (s_next (&d->c, &k))
            return kim_msgi_fail (d->err, KIM_E_MALFORMED, prefix, NULL, -1);
        if (k.tag != S_T_STR)
            return kim_msgi_fail (d->err, KIM_E_BAD_TYPE, prefix, NULL, -1);
        int idx = s_field_find (table, count, k.ptr, k.len);
        if (idx < 0 || !(allowed & (1ull << idx))) {
            if (k.len < 2 || k.ptr [0] != 'x' || k.ptr [1] != '-')
                return kim_msgi_fail_raw (d->err, KIM_E_UNKNOWN_FIELD, prefix,
                                          (const char *) k.ptr, k.len, true, -1);
            if (!kim_utf8_valid (k.ptr, k.len))
                return kim_msgi_fail_raw (d->err, KIM_E_BAD_UTF8, prefix,
                                          (const char *) k.ptr, k.len, true, -1);
            for (size_t j = 0; j < ext_count; j++)
                if (ext [j].len == k.len && memcmp (ext [j].ptr, k.ptr, k.len) == 0)
                    return kim_msgi_fail_raw (d->err, KIM_E_DUPLICATE_FIELD, prefix,
                                              (const char *) k.ptr, k.len, true, -1);
            if (ext_count < KIM_MAP_MAX) {
                ext [ext_count].ptr = k.ptr;
                ext [ext_count].len = k.len;
                ext_count++;
            }
            if (s_skip (&d->c, 0))
                return kim_msgi_fail (d->err, KIM_E_MALFORMED, prefix, NULL, -1);
            continue;
        }
        if (seen & (1ull << idx))
            return kim_msgi_fail (d->err, KIM_E_DUPLICATE_FIELD, prefix, table [idx].key, -1);
        seen |= 1ull << idx;
        if (s_decode_field (d, &table [idx], base, prefix))
            return -d->err->code;
    }
    *seen_p = seen;
    return 0;
}

//  Callers may pass no err; errors then go to a local dummy.
static void
s_begin (kim_decode_error_t **err_p, kim_decode_error_t *dummy)
{
    if (!*err_p)
        *err_p = dummy;
    (*err_p)->code = 0;
    (*err_p)->path [0] = 0;
}

static bool
s_str_is (const s_obj_t *o, const char *text)
{
    return o->tag == S_T_STR && o->len == strlen (text) && memcmp (o->ptr, text, o->len) == 0;
}

//  A command that failed to decode may still name itself: a client matches
//  the REJECT to its request by that id (a SEND's hdr.msg_id, a query's
//  query_id, a subscription's sub_id). This walks the top-level map (and
//  hdr) with the bounds-checked cursor and copies the id if it is a valid
//  id; anything unreadable simply ends the search.
bool
kim_cmd_ref (const uint8_t *data, size_t size, char ref [KIM_ID_MAX + 1])
{
    ref [0] = 0;
    if (!data || size > KIM_FRAME_MAX)
        return false;
    s_cur_t c = { data, data + size };
    s_obj_t m, k, v;
    s_obj_t cmd = { 0 }, query_id = { 0 }, sub_id = { 0 }, msg_id = { 0 };
    if (s_next (&c, &m) || m.tag != S_T_MAP)
        return false;
    for (uint64_t i = 0; i < m.u; i++) {
        if (s_next (&c, &k))
            break;
        const uint8_t *value = c.p;
        if (s_next (&c, &v))
            break;
        if (s_str_is (&k, "hdr") && v.tag == S_T_MAP) {
            s_cur_t h = c;
            for (uint64_t j = 0; j < v.u; j++) {
                s_obj_t hk, hv;
                if (s_next (&h, &hk))
                    break;
                const uint8_t *hvalue = h.p;
                if (s_next (&h, &hv))
                    break;
                if (s_str_is (&hk, "msg_id") && hv.tag == S_T_STR)
                    msg_id = hv;
                h.p = hvalue;
                if (s_skip (&h, 2))
                    break;
            }
        }
        else
        if (s_str_is (&k, "cmd"))
            cmd = v;
        else
        if (s_str_is (&k, "query_id"))
            query_id = v;
        else
        if (s_str_is (&k, "sub_id"))
            sub_id = v;
        c.p = value;
        if (s_skip (&c, 1))
            break;
    }
    const s_obj_t *id = s_str_is (&cmd, "SEND")? &msg_id
                      : s_str_is (&cmd, "QUERY") || s_str_is (&cmd, "REFERRAL_QUERY")? &query_id
                      : s_str_is (&cmd, "SUBSCRIBE") || s_str_is (&cmd, "UNSUBSCRIBE")? &sub_id
                      : NULL;
    if (id && id->tag == S_T_STR && id->len <= KIM_ID_MAX
    &&  kim_msgi_id_ok ((const char *) id->ptr, id->len)) {
        memcpy (ref, id->ptr, id->len);
        ref [id->len] = 0;
        return true;
    }
    return false;
}

int
kim_msg_decode (kim_msg_t *self, const uint8_t *data, size_t size, kim_decode_error_t *err)
{
    kim_decode_error_t dummy;
    s_begin (&err, &dummy);
    if (!self)
        return kim_msgi_fail (err, KIM_E_ARGS, "", NULL, -1);
    kim_msg_init (self);
    if (!data || size == 0)
        return kim_msgi_fail (err, KIM_E_MALFORMED, "", NULL, -1);
    if (size > KIM_FRAME_MAX)
        return kim_msgi_fail (err, KIM_E_TOO_LARGE, "", NULL, -1);
    s_dec_t d;
    d.err = err;
    //  A header alone is as deep as it is inside a command, so the limits
    //  are the same whichever way it is read.
    if (s_scan_frame (&d, data, size, 2, false))
        return -err->code;
    uint64_t seen;
    if (s_decode_map (&d, kim_msgi_hdr_fields, S_COUNT (kim_msgi_hdr_fields), ~0ull, self, "", &seen))
        return -err->code;
    return 0;
}

static int
s_cmd_decode (kim_cmd_t *self, const uint8_t *data, size_t size, kim_dir_entry_t *entries,
              size_t max, kim_decode_error_t *err);

int
kim_cmd_decode (kim_cmd_t *self, const uint8_t *data, size_t size, kim_decode_error_t *err)
{
    return s_cmd_decode (self, data, size, NULL, 0, err);
}

int
kim_cmd_decode_directory (kim_cmd_t *self, const uint8_t *data, size_t size,
                          kim_dir_entry_t *entries, size_t max, kim_decode_error_t *err)
{
    kim_decode_error_t dummy;
    if (!entries) {
        s_begin (&err, &dummy);
        return kim_msgi_fail (err, KIM_E_ARGS, "", NULL, -1);
    }
    return s_cmd_decode (self, data, size, entries, max, err);
}

static int
s_cmd_decode (kim_cmd_t *self, const uint8_t *data, size_t size, kim_dir_entry_t *entries,
              size_t max, kim_decode_error_t *err)
{
    kim_decode_error_t dummy;
    s_begin (&err, &dummy);
    if (!self)
        return kim_msgi_fail (err, KIM_E_ARGS, "", NULL, -1);
    kim_cmd_init (self, KIM_CMD_NONE);
    if (!data || size == 0)
        return kim_msgi_fail (err, KIM_E_MALFORMED, "", NULL, -1);
    if (size > KIM_FRAME_MAX)
        return kim_msgi_fail (err, KIM_E_TOO_LARGE, "", NULL, -1);
    s_dec_t d;
    d.err = err;
    if (s_scan_frame (&d, data, size, 1, true))
        return -err->code;
    d.dir_out = entries;
    d.dir_max = max;

    //  The command decides which keys are known, so it is read first.
    if (!d.cmd_value)
        return kim_msgi_fail (err, KIM_E_MISSING_FIELD, "", "cmd", -1);
    s_cur_t c = { d.cmd_value, data + size };
    s_obj_t o;
    if (s_next (&c, &o) || o.tag != S_T_STR)
        return kim_msgi_fail (err, KIM_E_BAD_TYPE, "", "cmd", -1);
    kim_cmd_id_t id = kim_msgi_cmd_lookup (o.ptr, o.len);
    const s_cmd_rule_t *rule = kim_msgi_cmd_rule (id);
    if (!rule)
        return kim_msgi_fail (err, KIM_E_UNKNOWN_CMD, "", "cmd", -1);
    self->id = id;

    uint64_t seen;
    if (s_decode_map (&d, kim_msgi_cmd_fields, S_COUNT (kim_msgi_cmd_fields), rule->required | rule->optional,
                      self, "", &seen))
        return -err->code;
    uint64_t missing = rule->required & ~seen;
    if (missing)
        return kim_msgi_fail (err, KIM_E_MISSING_FIELD, "",
                              kim_msgi_cmd_fields [kim_msgi_lowest_bit (missing)].key, -1);
    //  The reason must name the code, unless the code is newer than this
    //  build (then any well-formed name passes).
    if (id == KIM_CMD_REJECT && strcmp (kim_errname (self->code), "UNKNOWN") != 0) {
        const char *name = kim_errname (self->code);
        if (d.reason_len != strlen (name) || memcmp (d.reason, name, d.reason_len) != 0)
            return kim_msgi_fail (err, KIM_E_BAD_VALUE, "", "reason", -1);
    }
    return kim_msgi_cmd_check_rules (self, err);
}

//  --------------------------------------------------------------------------
//  Version 2's batch frames: a head map and its entries in one frame

bool
kim_cmd_is_batch (kim_cmd_id_t id)
{
    return id == KIM_CMD_SEND_BATCH || id == KIM_CMD_RECEIPT_BATCH || id == KIM_CMD_DELIVER_BATCH;
}

bool
kim_cmd_is_peer (kim_cmd_id_t id)
{
    return id == KIM_CMD_PEER_DIRECTORY || id == KIM_CMD_PEER_FORWARD
        || id == KIM_CMD_PEER_ACK || id == KIM_CMD_PEER_REFUSED;
}

kim_cmd_id_t
kim_cmd_peek (const uint8_t *data, size_t size)
{
    if (!data)
        return KIM_CMD_NONE;
    s_cur_t c = { data, data + size };
    s_obj_t m, k, v;
    if (s_next (&c, &m) || m.tag != S_T_MAP || m.u > KIM_MAP_MAX)
        return KIM_CMD_NONE;
    for (uint64_t i = 0; i < m.u; i++) {
        if (s_next (&c, &k))
            break;
        const uint8_t *value = c.p;
        if (s_next (&c, &v))
            break;
        if (s_str_is (&k, "cmd"))
            return v.tag == S_T_STR? kim_msgi_cmd_lookup (v.ptr, v.len): KIM_CMD_NONE;
        c.p = value;
        if (s_skip (&c, 1))
            break;
    }
    return KIM_CMD_NONE;
}

//  The extent of one map at the cursor, checked only for its bounds (the
//  entry's own decode checks the rest). Work is bounded by the input: each
//  object read consumes at least one byte.
static int
s_map_extent (s_cur_t *c, const uint8_t **start, size_t *size)
{
    *start = c->p;
    s_cur_t peek = *c;
    s_obj_t o;
    if (s_next (&peek, &o))
        return -KIM_E_MALFORMED;
    if (o.tag != S_T_MAP)
        return -KIM_E_BAD_TYPE;
    if (s_skip (c, 1))
        return -KIM_E_MALFORMED;
    *size = (size_t) (c->p - *start);
    return *size > KIM_FRAME_MAX? -KIM_E_TOO_LARGE: 0;
}

int
kim_batch_split (kim_cmd_t *head, const uint8_t *data, size_t size,
                 kim_entry_t entries [KIM_BATCH_MAX], kim_decode_error_t *err)
{
    kim_decode_error_t dummy;
    s_begin (&err, &dummy);
    if (!head || !entries)
        return kim_msgi_fail (err, KIM_E_ARGS, "", NULL, -1);
    kim_cmd_init (head, KIM_CMD_NONE);
    if (!data || size == 0)
        return kim_msgi_fail (err, KIM_E_MALFORMED, "", NULL, -1);
    if (size > (size_t) KIM_PAYLOAD_MAX + KIM_FRAME_MAX)
        return kim_msgi_fail (err, KIM_E_TOO_LARGE, "", NULL, -1);
    s_cur_t c = { data, data + size };
    const uint8_t *start;
    size_t head_size;
    int rc = s_map_extent (&c, &start, &head_size);
    if (rc)
        return kim_msgi_fail (err, rc == -KIM_E_TOO_LARGE? KIM_E_TOO_LARGE: KIM_E_MALFORMED,
                              "", NULL, -1);
    rc = kim_cmd_decode (head, data, head_size, err);
    if (rc)
        return rc;
    if (!kim_cmd_is_batch (head->id))
        return kim_msgi_fail (err, KIM_E_MALFORMED, "", NULL, -1);
    bool payloads = head->id != KIM_CMD_RECEIPT_BATCH;
    for (size_t i = 0; i < head->count; i++) {
        kim_entry_t *entry = &entries [i];
        if (c.p == c.end)
            return kim_msgi_fail (err, KIM_E_MALFORMED, "", "entries", (int64_t) i);
        rc = s_map_extent (&c, &entry->cmd, &entry->cmd_size);
        if (rc)
            return kim_msgi_fail (err, -rc, "", "entries", (int64_t) i);
        entry->payload = NULL;
        entry->payload_size = 0;
        if (payloads) {
            s_obj_t o;
            if (s_next (&c, &o))
                return kim_msgi_fail (err, KIM_E_MALFORMED, "", "entries", (int64_t) i);
            if (o.tag != S_T_BIN)
                return kim_msgi_fail (err, KIM_E_BAD_TYPE, "", "entries", (int64_t) i);
            entry->payload = o.ptr;
            entry->payload_size = o.len;
        }
    }
    if (c.p != c.end)
        return kim_msgi_fail (err, KIM_E_MALFORMED, "", "entries", (int64_t) head->count);
    return 0;
}

int
kim_batch_entry_decode (kim_cmd_id_t batch, const kim_entry_t *entry, kim_cmd_t *cmd,
                        kim_decode_error_t *err)
{
    kim_decode_error_t dummy;
    s_begin (&err, &dummy);
    if (!entry || !cmd)
        return kim_msgi_fail (err, KIM_E_ARGS, "", NULL, -1);
    int rc = kim_cmd_decode (cmd, entry->cmd, entry->cmd_size, err);
    if (rc)
        return rc;
    bool fits = batch == KIM_CMD_SEND_BATCH? cmd->id == KIM_CMD_SEND
              : batch == KIM_CMD_DELIVER_BATCH? cmd->id == KIM_CMD_DELIVER
              : batch == KIM_CMD_RECEIPT_BATCH? cmd->id == KIM_CMD_RECEIPT || cmd->id == KIM_CMD_REJECT
              : false;
    if (!fits)
        return kim_msgi_fail (err, KIM_E_BAD_VALUE, "", "cmd", -1);
    return 0;
}
