/*  kim_logfmt.c — the daemons' log lines as structured events.

    czmq's zsys writes "L: yy-mm-dd hh:mm:ss text" to a stream: a local
    time with a two-digit year and a level letter that journald and log
    shippers cannot read. Rather than change the hundreds of places that
    log, kim-broker and kim-agent give zsys a stream of their own
    (fopencookie) that turns each line into one logfmt event on stderr:

        ts=2026-12-06T03:57:10.123Z level=info prog=kim-broker module=server msg="..."

    `module` is the message's leading "word: " where it has one (the
    daemons' messages name their module that way). Under systemd
    (JOURNAL_STREAM names our stderr) each line also starts with the
    syslog priority "<N>", which journald turns into the entry's level.

    What is logged is decided where it is logged: log texts carry ids,
    codes and counts, never payloads, names or other personal data.
*/
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kim_logfmt.h"

#define S_LINE_MAX  4096        //  longer lines are cut, never split

typedef struct {
    const char *prog;
    bool journal;               //  stderr is a journald stream
    char line [S_LINE_MAX];
    size_t size;
} s_logfmt_t;

//  JOURNAL_STREAM is "DEVICE:INODE" of the stream systemd connected to our
//  stderr; it is only ours if fd 2 is still that stream.
static bool
s_journal_stream (void)
{
    const char *value = getenv ("JOURNAL_STREAM");
    unsigned long long device, inode;
    struct stat status;
    if (!value || sscanf (value, "%llu:%llu", &device, &inode) != 2 || fstat (2, &status))
        return false;
    return (unsigned long long) status.st_dev == device
        && (unsigned long long) status.st_ino == inode;
}

static void
s_emit (s_logfmt_t *self, const char *text, size_t size)
{
    //  zsys's prefix: a level letter, ": ", the log ident in parentheses
    //  where one is set, then a 17-character date and a space. A line
    //  without it (a stray write) is logged as it is.
    static const struct { char letter; const char *name; int priority; } levels [] = {
        { 'E', "error", 3 }, { 'W', "warning", 4 }, { 'N', "notice", 5 },
        { 'I', "info", 6 }, { 'D', "debug", 7 }
    };
    const char *level = "info";
    int priority = 6;
    size_t date = 3;
    if (size > 3 && text [3] == '(') {
        const char *close = memchr (text + 3, ')', size - 3);
        if (close && (size_t) (close - text) + 1 < size && close [1] == ' ')
            date = (size_t) (close - text) + 2;
    }
    if (size >= date + 18 && text [1] == ':' && text [2] == ' ' && text [date + 17] == ' ') {
        for (size_t i = 0; i < sizeof levels / sizeof levels [0]; i++)
            if (levels [i].letter == text [0]) {
                level = levels [i].name;
                priority = levels [i].priority;
            }
        text += date + 18;
        size -= date + 18;
    }
    //  "module: rest" where module is one lowercase word
    size_t word = 0;
    while (word < size && word < 32
       && ((text [word] >= 'a' && text [word] <= 'z') || text [word] == '_'
       ||  (text [word] >= '0' && text [word] <= '9')))
        word++;
    bool has_module = word > 0 && word + 1 < size && text [word] == ':' && text [word + 1] == ' ';

    char out [2 * S_LINE_MAX + 160];
    size_t n = 0;
    if (self->journal)
        n += (size_t) snprintf (out + n, sizeof out - n, "<%d>", priority);
    struct timespec now;
    clock_gettime (CLOCK_REALTIME, &now);
    struct tm utc;
    gmtime_r (&now.tv_sec, &utc);
    n += strftime (out + n, sizeof out - n, "ts=%Y-%m-%dT%H:%M:%S", &utc);
    n += (size_t) snprintf (out + n, sizeof out - n, ".%03ldZ level=%s prog=%s ",
                            now.tv_nsec / 1000000, level, self->prog);
    if (has_module) {
        n += (size_t) snprintf (out + n, sizeof out - n, "module=%.*s ", (int) word, text);
        text += word + 2;
        size -= word + 2;
    }
    memcpy (out + n, "msg=\"", 5);
    n += 5;
    for (size_t i = 0; i < size; i++) {
        unsigned char c = (unsigned char) text [i];
        if (c == '"' || c == '\\') {
            out [n++] = '\\';
            out [n++] = (char) c;
        }
        else
        if (c < 0x20 || c == 0x7f)
            out [n++] = ' ';            //  one event, one line
        else
            out [n++] = (char) c;
    }
    out [n++] = '"';
    out [n++] = '\n';
    //  One write per event, so lines from several threads never interleave.
    if (write (2, out, n) < 0) {
        //  Nowhere left to say it.
    }
}

static ssize_t
s_write (void *cookie, const char *data, size_t size)
{
    s_logfmt_t *self = (s_logfmt_t *) cookie;
    for (size_t i = 0; i < size; i++) {
        if (data [i] == '\n') {
            s_emit (self, self->line, self->size);
            self->size = 0;
        }
        else
        if (self->size < S_LINE_MAX)
            self->line [self->size++] = data [i];
    }
    return (ssize_t) size;
}

static int
s_close (void *cookie)
{
    s_logfmt_t *self = (s_logfmt_t *) cookie;
    if (self->size)
        s_emit (self, self->line, self->size);
    free (self);
    return 0;
}

FILE *
kim_logfmt_stream (const char *prog)
{
    s_logfmt_t *self = (s_logfmt_t *) calloc (1, sizeof (s_logfmt_t));
    if (!self)
        return NULL;
    self->prog = prog;
    self->journal = s_journal_stream ();
    cookie_io_functions_t functions = { .write = s_write, .close = s_close };
    FILE *stream = fopencookie (self, "w", functions);
    if (!stream) {
        free (self);
        return NULL;
    }
    //  Buffered by line: each zsys line reaches s_write whole, at once.
    setvbuf (stream, NULL, _IOLBF, 0);
    return stream;
}
