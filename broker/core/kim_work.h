/*  kim_work.h — one helper thread that runs small, independent jobs for the
    broker's main thread: decoding the messages of a SEND_BATCH and hashing
    their payloads as they are read, sealing a payload as it is stored,
    hashing the log's records into their chain as they are appended.
    Every other step of a message has to happen on the main thread, in
    order, because it reads or writes the one LMDB write batch; these do
    not, and on a machine with a core to spare they then cost the main
    thread only the handing over.

    Jobs are posted by one thread, the owner (the broker's main thread),
    and start in the order they were posted, on the helper or, when the
    owner waits for a job the helper has not started, on the owner itself:
    a wait never sleeps on a job nobody runs, and with the helper busy or
    not scheduled a job costs what it would have cost inline. A job must
    touch only what its argument names and what the owner leaves alone
    until it has waited for that job.

    NULL is a valid kim_work_t everywhere: its jobs run at once, inline.
*/
#ifndef KIM_WORK_H_INCLUDED
#define KIM_WORK_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _kim_work_t kim_work_t;
typedef void (kim_work_fn) (void *arg);

//  Starts the helper thread with room for `slots` jobs posted and not yet
//  waited for (more wait for the oldest first). NULL when the thread cannot
//  be started (logged): callers then run their jobs inline.
kim_work_t *
    kim_work_new (size_t slots);

//  Runs what is posted, then stops and joins the helper.
void
    kim_work_destroy (kim_work_t **self_p);

//  Queues fn (arg) and returns its ticket (> 0), or runs it at once and
//  returns 0 when `self` is NULL. Owner thread only.
uint64_t
    kim_work_post (kim_work_t *self, kim_work_fn *fn, void *arg);

//  Returns once the job of `ticket` and every job posted before it have
//  run; what they wrote is then visible to the caller. Ticket 0 returns at
//  once. Owner thread only.
void
    kim_work_wait (kim_work_t *self, uint64_t ticket);

//  kim_work_wait for everything posted so far.
void
    kim_work_drain (kim_work_t *self);

void
    kim_work_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
