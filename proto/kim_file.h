/*  kim_file.h — a small text file read whole: a configuration, a policy.

    The daemons and the tool read their text files through here rather than
    by czmq's zconfig_load, which leaks its zfile_t when the text does not
    parse (czmq 4.2), and so that every such file is bounded in size and
    refused when it holds a NUL byte, which no text kim reads may hold. */
#ifndef KIM_FILE_H_INCLUDED
#define KIM_FILE_H_INCLUDED

#include <stddef.h>

//  Returns the file's bytes with a NUL after them (the caller frees), or
//  NULL with *why an errno value: that of opening or reading, EFBIG when
//  the file is larger than max_size, EILSEQ when it holds a NUL byte.
char *
    kim_file_text (const char *path, size_t max_size, size_t *size, int *why);

#endif
