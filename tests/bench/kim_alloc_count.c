/*  kim_alloc_count.c — counts a process's heap allocations, for the
    benchmark's claim that the broker allocates nothing per message.

    Preloaded into the broker (LD_PRELOAD, see tests/bench/README.md), it
    counts every malloc, calloc and realloc of every thread (libzmq's
    frames included) and appends the three counts to the file named by
    KIM_ALLOC_COUNT_OUT (default /tmp/kim-alloc-count) when the process
    exits. Two runs of different lengths give the count per message as
    their difference: start-up and shutdown cancel out. Not for a
    sanitizer build, whose allocator is its own.
*/
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

//  glibc's own entry points: no dlsym, which itself allocates
extern void *__libc_malloc (size_t size);
extern void *__libc_calloc (size_t count, size_t size);
extern void *__libc_realloc (void *ptr, size_t size);

static atomic_ulong s_mallocs, s_callocs, s_reallocs;

void *
malloc (size_t size)
{
    atomic_fetch_add_explicit (&s_mallocs, 1, memory_order_relaxed);
    return __libc_malloc (size);
}

void *
calloc (size_t count, size_t size)
{
    atomic_fetch_add_explicit (&s_callocs, 1, memory_order_relaxed);
    return __libc_calloc (count, size);
}

void *
realloc (void *ptr, size_t size)
{
    atomic_fetch_add_explicit (&s_reallocs, 1, memory_order_relaxed);
    return __libc_realloc (ptr, size);
}

__attribute__ ((destructor)) static void
s_report (void)
{
    const char *path = getenv ("KIM_ALLOC_COUNT_OUT");
    FILE *file = fopen (path? path: "/tmp/kim-alloc-count", "a");
    if (!file)
        return;
    fprintf (file, "malloc %lu calloc %lu realloc %lu\n", (unsigned long) s_mallocs,
             (unsigned long) s_callocs, (unsigned long) s_reallocs);
    fclose (file);
}
