/*  kim_logfmt.h — a stream for zsys_set_logstream that writes each log
    line to stderr as one logfmt event (ts, level, prog, module, msg). */
#ifndef KIM_LOGFMT_H_INCLUDED
#define KIM_LOGFMT_H_INCLUDED

#include <stdio.h>

//  Returns a stream to give zsys_set_logstream, or NULL (out of memory).
//  `prog` must outlive the stream. fclose flushes a last partial line.
FILE *
    kim_logfmt_stream (const char *prog);

#endif
