/*  kim_consent_json.c — the small JSON writer that the consent module's
    decision records and the subject module's reports share (the broker has
    no JSON library). Both kim_consent.c and kim_subject.c call down into
    it, so neither calls the other for it.
*/
#include <czmq.h>

#include "kim_consent_int.h"

int
kim_consent_json (kim_buf_t *buf, const char *format, ...)
{
    char text [1024];
    va_list args;
    va_start (args, format);
    int size = vsnprintf (text, sizeof text, format, args);
    va_end (args);
    if (size < 0 || (size_t) size >= sizeof text)
        return -KIM_E_INTERNAL;
    return kim_buf_append (buf, text, (size_t) size);
}

int
kim_consent_json_str (kim_buf_t *buf, const char *text)
{
    int rc = kim_buf_append (buf, "\"", 1);
    for (const char *c = text; rc == 0 && *c; c++) {
        unsigned char byte = (unsigned char) *c;
        if (byte == '"' || byte == '\\') {
            char escaped [2] = { '\\', (char) byte };
            rc = kim_buf_append (buf, escaped, 2);
        }
        else
        if (byte < 0x20) {
            char escaped [8];
            snprintf (escaped, sizeof escaped, "\\u%04x", byte);
            rc = kim_buf_append (buf, escaped, 6);
        }
        else
            rc = kim_buf_append (buf, c, 1);
    }
    return rc? rc: kim_buf_append (buf, "\"", 1);
}
