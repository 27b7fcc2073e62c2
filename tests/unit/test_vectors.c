/*  test_vectors.c — the hex examples of proto/PROTOCOL.md are test vectors.

    Every fenced block ```hex must decode and re-encode to exactly the same
    bytes (a version 2 batch frame: its head and every entry, each re-encoded
    in place, the payloads copied); every block ```hex-invalid NAME must fail with exactly that code.
    Every command and every message type must appear in some valid example,
    and the spec's reason-code table must list every code that travels on
    the wire, with its name. So the spec and the codec cannot drift apart.

    Usage: test_vectors path/to/PROTOCOL.md
*/
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kim/kim_msg.h"

#define MAX_FRAME (KIM_FRAME_MAX + 1)

static int s_failures = 0;

static void
s_fail (int line, const char *fmt, const char *a, const char *b)
{
    fprintf (stderr, "PROTOCOL.md:%d: ", line);
    fprintf (stderr, fmt, a, b);
    fprintf (stderr, "\n");
    s_failures++;
}

//  Parses hex pairs separated by white space. Returns the size or -1.
static long
s_parse_hex (const char *text, uint8_t *out, size_t max)
{
    size_t size = 0;
    const char *p = text;
    while (*p) {
        if (isspace ((unsigned char) *p)) {
            p++;
            continue;
        }
        if (!isxdigit ((unsigned char) p [0]) || !isxdigit ((unsigned char) p [1]) || size == max)
            return -1;
        char pair [3] = { p [0], p [1], 0 };
        out [size++] = (uint8_t) strtoul (pair, NULL, 16);
        p += 2;
    }
    return (long) size;
}

//  Decodes a frame, a batch frame entry by entry, and re-encodes it into
//  `out`. Returns 0 or the first failure (-code); `err` says where.
static int
s_round_trip (kim_cmd_t *cmd, const uint8_t *frame, size_t size, kim_buf_t *out,
              kim_decode_error_t *err, bool *cmd_seen, bool *type_seen)
{
    kim_buf_reset (out);
    if (!kim_cmd_is_batch (kim_cmd_peek (frame, size))) {
        int rc = kim_cmd_decode (cmd, frame, size, err);
        if (rc)
            return rc;
        cmd_seen [cmd->id & 0xff] = true;
        if (cmd->id == KIM_CMD_SEND || cmd->id == KIM_CMD_DELIVER)
            type_seen [cmd->msg.type & 0xff] = true;
        return kim_cmd_encode (cmd, out);
    }
    kim_entry_t entries [KIM_BATCH_MAX];
    int rc = kim_batch_split (cmd, frame, size, entries, err);
    if (rc)
        return rc;
    kim_cmd_id_t batch = cmd->id;
    size_t count = cmd->count;
    cmd_seen [batch & 0xff] = true;
    if ((rc = kim_batch_begin (batch, out)))
        return rc;
    for (size_t i = 0; i < count; i++) {
        if ((rc = kim_batch_entry_decode (batch, &entries [i], cmd, err)))
            return rc;
        cmd_seen [cmd->id & 0xff] = true;
        if (cmd->id == KIM_CMD_SEND || cmd->id == KIM_CMD_DELIVER)
            type_seen [cmd->msg.type & 0xff] = true;
        if ((rc = kim_cmd_encode (cmd, out)))
            return rc;
        if (entries [i].payload
        &&  (rc = kim_batch_payload (entries [i].payload, entries [i].payload_size, out)))
            return rc;
    }
    return kim_batch_end (batch, count, 0, out);
}

static char *
s_read_file (const char *path)
{
    FILE *file = fopen (path, "rb");
    if (!file)
        return NULL;
    char *text = NULL;
    size_t size = 0, capacity = 0;
    for (;;) {
        if (capacity - size < 4096) {
            capacity = capacity? capacity * 2: 65536;
            char *grown = realloc (text, capacity + 1);
            if (!grown) {
                free (text);
                fclose (file);
                return NULL;
            }
            text = grown;
        }
        size_t got = fread (text + size, 1, capacity - size, file);
        if (got == 0)
            break;
        size += got;
    }
    fclose (file);
    text [size] = 0;
    return text;
}

int
main (int argc, char *argv [])
{
    if (argc != 2) {
        fprintf (stderr, "usage: test_vectors PROTOCOL.md\n");
        return 2;
    }
    char *text = s_read_file (argv [1]);
    if (!text) {
        fprintf (stderr, "test_vectors: cannot read %s\n", argv [1]);
        return 2;
    }
    uint8_t *frame = malloc (MAX_FRAME);
    kim_cmd_t *cmd = malloc (sizeof *cmd);
    kim_buf_t buf;
    kim_buf_init (&buf);
    if (!frame || !cmd)
        return 2;

    bool cmd_seen [256] = { false };
    bool type_seen [256] = { false };
    bool code_listed [1000] = { false };
    int valid = 0, invalid = 0, rows = 0;

    //  Walk the lines; collect fenced blocks and table rows.
    char *line = text;
    int lineno = 1;
    char *prev = NULL;          //  the previous non-empty line
    while (*line) {
        char *end = strchr (line, '\n');
        if (end)
            *end = 0;
        int start_line = lineno;

        if (strncmp (line, "```hex", 6) == 0) {
            char info [128];
            snprintf (info, sizeof info, "%s", line + 3);
            //  Gather the block's text up to the closing fence.
            size_t hex_size = 0, hex_cap = 4096;
            char *hex = malloc (hex_cap);
            hex [0] = 0;
            bool closed = false;
            while (end) {
                line = end + 1;
                lineno++;
                end = strchr (line, '\n');
                if (end)
                    *end = 0;
                if (strncmp (line, "```", 3) == 0) {
                    closed = true;
                    break;
                }
                size_t len = strlen (line);
                if (hex_size + len + 2 > hex_cap) {
                    hex_cap = 2 * (hex_cap + len);
                    hex = realloc (hex, hex_cap);
                }
                memcpy (hex + hex_size, line, len);
                hex_size += len;
                hex [hex_size++] = ' ';
                hex [hex_size] = 0;
            }
            if (!closed)
                s_fail (start_line, "unterminated %s block%s", info, "");
            long size = s_parse_hex (hex, frame, MAX_FRAME);
            free (hex);
            kim_decode_error_t err;
            if (size < 0)
                s_fail (start_line, "block %s holds something other than hex pairs%s", info, "");
            else
            if (strcmp (info, "hex") == 0) {
                valid++;
                if (!prev || strncmp (prev, "Example: ", 9) != 0)
                    s_fail (start_line, "hex block without an 'Example: <name>' line before it%s%s", "", "");
                int rc = s_round_trip (cmd, frame, (size_t) size, &buf, &err, cmd_seen, type_seen);
                if (rc)
                    s_fail (start_line, "example does not decode and re-encode: %s at '%s'",
                            kim_errname (rc), err.path);
                else
                if (buf.size != (size_t) size || memcmp (buf.data, frame, buf.size) != 0)
                    s_fail (start_line, "example is not canonical: re-encoding differs%s%s", "", "");
            }
            else
            if (strncmp (info, "hex-invalid ", 12) == 0) {
                invalid++;
                const char *name = info + 12;
                int expected = kim_errcode (name);
                if (expected <= 0)
                    s_fail (start_line, "unknown error name '%s'%s", name, "");
                else {
                    bool ignored [256];
                    int rc = s_round_trip (cmd, frame, (size_t) size, &buf, &err, ignored, ignored);
                    if (rc != -expected)
                        s_fail (start_line, "expected %s, decoder says %s", name,
                                rc? kim_errname (rc): "OK");
                }
            }
            else
                s_fail (start_line, "unknown block kind '%s'%s", info, "");
        }
        else
        if (line [0] == '|') {
            //  A reason-code row: | 100 | MALFORMED | ... |
            char *p = line + 1;
            while (*p == ' ')
                p++;
            if (isdigit ((unsigned char) *p)) {
                int code = (int) strtol (p, &p, 10);
                while (*p == ' ')
                    p++;
                if (*p == '|') {
                    p++;
                    while (*p == ' ')
                        p++;
                    char name [64];
                    size_t n = 0;
                    while ((isupper ((unsigned char) *p) || isdigit ((unsigned char) *p) || *p == '_')
                    &&     n < sizeof name - 1)
                        name [n++] = *p++;
                    name [n] = 0;
                    if (n) {
                        rows++;
                        if (code < 0 || code >= 900 || kim_errcode (name) != code)
                            s_fail (start_line, "reason-code row '%s' does not match kim_error.h%s",
                                    name, "");
                        else
                            code_listed [code] = true;
                    }
                }
            }
        }
        if (line [0])
            prev = line;
        if (!end)
            break;
        line = end + 1;
        lineno++;
    }

    //  Coverage
#define KIM_X_CHECK(name, wire, num, dir) \
    if (!cmd_seen [num]) s_fail (0, "no valid example of command %s%s", wire, "");
    KIM_CMDS (KIM_X_CHECK)
#undef KIM_X_CHECK
#define KIM_X_CHECK(name, wire, num, flags) \
    if (!type_seen [num]) s_fail (0, "no valid example of message type %s%s", wire, "");
    KIM_TYPES (KIM_X_CHECK)
#undef KIM_X_CHECK
#define KIM_X_CHECK(name, num, msg) \
    if (num < 900 && !code_listed [num]) s_fail (0, "reason-code table lacks %s %s", #num, #name);
    KIM_ERRORS (KIM_X_CHECK)
#undef KIM_X_CHECK
    if (invalid < 10)
        s_fail (0, "only %s negative examples, want at least 10%s", invalid == 0? "0": "a few", "");

    printf ("test_vectors: %d valid, %d invalid examples, %d reason codes: %s\n",
            valid, invalid, rows, s_failures? "FAILED": "OK");
    kim_buf_free (&buf);
    free (cmd);
    free (frame);
    free (text);
    return s_failures? 1: 0;
}
