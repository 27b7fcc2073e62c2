/*  kim_mp_json.h — MessagePack to JSON, private to the protocol library
    (kim_mp_json.c). kim_json.c and kim_log_json.c wrap it with their own
    buffers, limits and error handling.
*/
#ifndef KIM_MP_JSON_H_INCLUDED
#define KIM_MP_JSON_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const uint8_t *p;           //  next input byte
    const uint8_t *end;         //  end of the input
    char *out;                  //  write position, in room reserved beforehand
    const uint8_t *start;       //  first input byte: strings may load from here on
    int depth_max;              //  values deeper than this are refused
    bool short_escapes;         //  \b \f \n \r \t; else every control character as \u00XX
} kim_mp_json_t;

//  Output room to reserve for `size` input bytes: six per byte (a control
//  character as \u00XX, or a one-byte value as "null,"), plus the eight a
//  string's tail store writes at once and the caller's outer punctuation.
#define KIM_MP_JSON_ROOM(size)  (6 * (size_t) (size) + 24)

//  Writes one value at self->p as JSON, the value being at nesting `depth`.
//  Maps need string keys; floats and extension types are refused. Returns
//  0, or -1 on input it cannot write (self->out then holds a partial value).
int
    kim_mp_json_value (kim_mp_json_t *self, int depth);

//  Writes a number, or bytes as a quoted lowercase hex string.
void
    kim_mp_json_unsigned (kim_mp_json_t *self, uint64_t n);
void
    kim_mp_json_hex (kim_mp_json_t *self, const uint8_t *data, size_t size);

#endif
