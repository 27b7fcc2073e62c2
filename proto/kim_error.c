/*  kim_error.c — strings for the one error table in kim_error.h. */
#include <string.h>

#include "kim/kim_error.h"

static int
s_abs (int code)
{
    return code < 0? -code: code;
}

const char *
kim_strerror (int code)
{
    switch (s_abs (code)) {
#define KIM_X_CASE(name, num, text) case num: return text;
        KIM_ERRORS (KIM_X_CASE)
#undef KIM_X_CASE
        default: return "unknown error";
    }
}

const char *
kim_errname (int code)
{
    switch (s_abs (code)) {
#define KIM_X_CASE(name, num, text) case num: return #name;
        KIM_ERRORS (KIM_X_CASE)
#undef KIM_X_CASE
        default: return "UNKNOWN";
    }
}

int
kim_errcode (const char *name)
{
#define KIM_X_CMP(ename, num, text) if (name && strcmp (name, #ename) == 0) return num;
    KIM_ERRORS (KIM_X_CMP)
#undef KIM_X_CMP
    return -1;
}
