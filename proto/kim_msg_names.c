/*  kim_msg_names.c — the codec's vocabulary: the wire names of message
    types, commands, data categories, priorities and legal bases, both ways,
    and the text formats of ids, org ids, codes and UTF-8.

    It stands apart from the field tables because the broker, the client
    library and the kim tool use these on their own (kim_type_name,
    kim_id_valid, kim_str_copy), while the tables matter to the codec only.
    The names come from the X-macro lists in include/kim/kim_msg.h, so each
    type, command and category is named in one place.
*/
#include <string.h>

#include "kim_msg_int.h"

//  --------------------------------------------------------------------------
//  Names and formats

const char *
kim_type_name (kim_type_t type)
{
    switch (type) {
#define KIM_X_CASE(name, wire, num, flags) case KIM_TYPE_##name: return wire;
        KIM_TYPES (KIM_X_CASE)
#undef KIM_X_CASE
        default: return NULL;
    }
}

unsigned
kim_type_flags (kim_type_t type)
{
    switch (type) {
#define KIM_X_CASE(name, wire, num, flags) case KIM_TYPE_##name: return flags;
        KIM_TYPES (KIM_X_CASE)
#undef KIM_X_CASE
        default: return 0;
    }
}

kim_type_t
kim_msgi_type_lookup (const uint8_t *name, size_t len)
{
#define KIM_X_CMP(tname, wire, num, flags) \
    if (len == sizeof wire - 1 && memcmp (name, wire, len) == 0) return KIM_TYPE_##tname;
    KIM_TYPES (KIM_X_CMP)
#undef KIM_X_CMP
    return KIM_TYPE_NONE;
}

kim_type_t
kim_type_from_name (const char *name)
{
    return name? kim_msgi_type_lookup ((const uint8_t *) name, strlen (name)): KIM_TYPE_NONE;
}

const char *
kim_cmd_name (kim_cmd_id_t id)
{
    switch (id) {
#define KIM_X_CASE(name, wire, num, dir) case KIM_CMD_##name: return wire;
        KIM_CMDS (KIM_X_CASE)
#undef KIM_X_CASE
        default: return NULL;
    }
}

kim_cmd_id_t
kim_msgi_cmd_lookup (const uint8_t *name, size_t len)
{
#define KIM_X_CMP(cname, wire, num, dir) \
    if (len == sizeof wire - 1 && memcmp (name, wire, len) == 0) return KIM_CMD_##cname;
    KIM_CMDS (KIM_X_CMP)
#undef KIM_X_CMP
    return KIM_CMD_NONE;
}

const char *
kim_category_name (uint32_t bit)
{
    switch (bit) {
#define KIM_X_CASE(name, wire, cbit) case cbit: return wire;
        KIM_CATEGORIES (KIM_X_CASE)
#undef KIM_X_CASE
        default: return NULL;
    }
}

uint32_t
kim_msgi_category_lookup (const uint8_t *name, size_t len)
{
#define KIM_X_CMP(cname, wire, bit) \
    if (len == sizeof wire - 1 && memcmp (name, wire, len) == 0) return bit;
    KIM_CATEGORIES (KIM_X_CMP)
#undef KIM_X_CMP
    return 0;
}

const char *const kim_msgi_priority_names [3] = { "normal", "low", "high" };
const char *const kim_msgi_basis_names [3] = { NULL, "consent", "statute" };

bool
kim_str_copy (char *dest, size_t size, const char *src)
{
    if (size == 0)
        return false;
    size_t length = src? strnlen (src, size): 0;
    bool fits = length < size;
    if (!fits)
        length = size - 1;
    memcpy (dest, src? src: "", length);
    dest [length] = 0;
    return fits;
}

bool
kim_utf8_valid (const uint8_t *data, size_t size)
{
    if (!data)
        return size == 0;
    size_t i = 0;
    while (i < size) {
        //  Headers are mostly ASCII: eight bytes at a time while no byte
        //  has its high bit set and none is NUL.
        while (size - i >= 8) {
            uint64_t word;
            memcpy (&word, data + i, 8);
            uint64_t high = 0x8080808080808080ull;
            if ((word & high) || ((word - 0x0101010101010101ull) & ~word & high))
                break;
            i += 8;
        }
        if (i == size)
            break;
        uint8_t c = data [i];
        if (c < 0x80) {
            if (c == 0)
                return false;
            i++;
            continue;
        }
        //  Second-byte ranges exclude overlong forms (E0, F0), surrogates
        //  (ED) and code points above U+10FFFF (F4).
        size_t need;
        uint8_t lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf)
            need = 1;
        else
        if (c == 0xe0) {
            need = 2;
            lo = 0xa0;
        }
        else
        if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef)
            need = 2;
        else
        if (c == 0xed) {
            need = 2;
            hi = 0x9f;
        }
        else
        if (c == 0xf0) {
            need = 3;
            lo = 0x90;
        }
        else
        if (c >= 0xf1 && c <= 0xf3)
            need = 3;
        else
        if (c == 0xf4) {
            need = 3;
            hi = 0x8f;
        }
        else
            return false;
        if (size - i - 1 < need)
            return false;
        if (data [i + 1] < lo || data [i + 1] > hi)
            return false;
        for (size_t k = 2; k <= need; k++)
            if ((data [i + k] & 0xc0) != 0x80)
                return false;
        i += need + 1;
    }
    return true;
}

bool
kim_msgi_id_ok (const char *s, size_t len)
{
    if (len < 1 || len > KIM_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s [i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
        ||    c == '.' || c == '_' || c == ':' || c == '-'))
            return false;
    }
    return true;
}

bool
kim_msgi_org_ok (const char *s, size_t len)
{
    if (len < 3 || len > KIM_ORG_MAX)
        return false;
    size_t parts = 1, part_len = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s [i];
        if (c == '.') {
            if (part_len == 0)
                return false;
            parts++;
            part_len = 0;
        }
        else
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')
            part_len++;
        else
            return false;
    }
    return part_len > 0 && (parts == 2 || parts == 3);
}

bool
kim_msgi_code_ok (const char *s, size_t len)
{
    if (len < 1 || len > KIM_CODE_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s [i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return true;
}

bool
kim_id_valid (const char *id)
{
    return id && kim_msgi_id_ok (id, strnlen (id, KIM_ID_MAX + 1));
}

bool
kim_org_valid (const char *org)
{
    return org && kim_msgi_org_ok (org, strnlen (org, KIM_ORG_MAX + 1));
}

bool
kim_code_valid (const char *code)
{
    return code && kim_msgi_code_ok (code, strnlen (code, KIM_CODE_MAX + 1));
}
