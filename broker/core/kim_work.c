/*  kim_work.c — one helper thread for small jobs (see kim_work.h).

    Jobs lie in a ring of slots by ticket. The owner fills a slot, then
    publishes it by raising `posted` under the mutex; whoever takes a job
    (the helper, or the owner waiting for it) raises `claimed` under the
    mutex, runs the job outside it, and stores the ticket in the slot's
    `done` with release order, which the owner reads with acquire order:
    what a job wrote is visible once its `done` is seen. The owner alone
    waits, so the helper wakes it only when it said it sleeps.
*/
#include <czmq.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "kim_work.h"

//  A sleeping helper is woken once this many jobs wait: waking a thread
//  costs the waker a few microseconds (more in a virtual machine), as much
//  as a few jobs. Fewer run when the owner waits for them.
#define S_WAKE_AFTER    32

typedef struct {
    kim_work_fn *fn;
    void *arg;
    _Atomic uint64_t done;          //  the last ticket of this slot that has run
} s_job_t;

struct _kim_work_t {
    pthread_t thread;
    pthread_mutex_t mutex;
    pthread_cond_t wake;            //  the helper: a job was posted, or stop
    pthread_cond_t finished;        //  the owner: a job it waits for has run
    s_job_t *jobs;
    size_t slots;
    uint64_t posted;                //  tickets 1..posted are published (mutex)
    uint64_t claimed;               //  tickets 1..claimed are taken (mutex)
    bool stop;                      //  (mutex)
    bool helper_idle;               //  the helper sleeps on `wake` (mutex)
    bool owner_waits;               //  the owner sleeps on `finished` (mutex)
    uint64_t waited;                //  owner: every ticket up to here has run
};

static s_job_t *
s_slot (kim_work_t *self, uint64_t ticket)
{
    return &self->jobs [ticket % self->slots];
}

//  Runs job `ticket`, claimed by the caller, and marks it done.
static void
s_run (kim_work_t *self, uint64_t ticket, kim_work_fn *fn, void *arg)
{
    fn (arg);
    atomic_store_explicit (&s_slot (self, ticket)->done, ticket, memory_order_release);
}

static void *
s_helper (void *arg)
{
    kim_work_t *self = (kim_work_t *) arg;
    pthread_setname_np (pthread_self (), "kim-work");
    pthread_mutex_lock (&self->mutex);
    while (true) {
        if (self->claimed == self->posted) {
            if (self->stop)
                break;
            self->helper_idle = true;
            pthread_cond_wait (&self->wake, &self->mutex);
            self->helper_idle = false;
            continue;
        }
        uint64_t ticket = ++self->claimed;
        kim_work_fn *fn = s_slot (self, ticket)->fn;
        void *job_arg = s_slot (self, ticket)->arg;
        pthread_mutex_unlock (&self->mutex);
        s_run (self, ticket, fn, job_arg);
        pthread_mutex_lock (&self->mutex);
        if (self->owner_waits)
            pthread_cond_signal (&self->finished);
    }
    pthread_mutex_unlock (&self->mutex);
    return NULL;
}

kim_work_t *
kim_work_new (size_t slots)
{
    kim_work_t *self = (kim_work_t *) calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->slots = slots? slots: 1;
    self->jobs = (s_job_t *) calloc (self->slots, sizeof *self->jobs);
    if (!self->jobs) {
        free (self);
        return NULL;
    }
    for (size_t i = 0; i < self->slots; i++)
        atomic_init (&self->jobs [i].done, 0);
    pthread_mutex_init (&self->mutex, NULL);
    pthread_cond_init (&self->wake, NULL);
    pthread_cond_init (&self->finished, NULL);
    //  The helper takes no signals: they stay with the main thread, whose
    //  loop acts on them.
    sigset_t all, old;
    sigfillset (&all);
    pthread_sigmask (SIG_SETMASK, &all, &old);
    int rc = pthread_create (&self->thread, NULL, s_helper, self);
    pthread_sigmask (SIG_SETMASK, &old, NULL);
    if (rc) {
        zsys_warning ("kim_work: cannot start the helper thread (%s); its jobs run inline",
                      strerror (rc));
        pthread_cond_destroy (&self->finished);
        pthread_cond_destroy (&self->wake);
        pthread_mutex_destroy (&self->mutex);
        free (self->jobs);
        free (self);
        return NULL;
    }
    return self;
}

void
kim_work_destroy (kim_work_t **self_p)
{
    assert (self_p);
    kim_work_t *self = *self_p;
    if (!self)
        return;
    pthread_mutex_lock (&self->mutex);
    self->stop = true;
    pthread_cond_signal (&self->wake);
    pthread_mutex_unlock (&self->mutex);
    pthread_join (self->thread, NULL);
    pthread_cond_destroy (&self->finished);
    pthread_cond_destroy (&self->wake);
    pthread_mutex_destroy (&self->mutex);
    free (self->jobs);
    free (self);
    *self_p = NULL;
}

uint64_t
kim_work_post (kim_work_t *self, kim_work_fn *fn, void *arg)
{
    if (!self) {
        fn (arg);
        return 0;
    }
    uint64_t ticket = self->posted + 1;     //  only the owner writes `posted`
    //  The slot's last job must be over before the slot is filled again
    if (ticket > self->slots)
        kim_work_wait (self, ticket - self->slots);
    s_job_t *slot = s_slot (self, ticket);
    slot->fn = fn;
    slot->arg = arg;
    pthread_mutex_lock (&self->mutex);
    self->posted = ticket;
    if (self->helper_idle && self->posted - self->claimed >= S_WAKE_AFTER)
        pthread_cond_signal (&self->wake);
    pthread_mutex_unlock (&self->mutex);
    return ticket;
}

void
kim_work_wait (kim_work_t *self, uint64_t ticket)
{
    if (!self || ticket <= self->waited)
        return;
    assert (ticket <= self->posted);
    uint64_t next = self->waited + 1;
    bool locked = false;
    while (next <= ticket) {
        s_job_t *slot = s_slot (self, next);
        if (atomic_load_explicit (&slot->done, memory_order_acquire) >= next) {
            next++;
            continue;
        }
        if (!locked) {
            pthread_mutex_lock (&self->mutex);
            locked = true;
        }
        if (self->claimed < next) {
            //  Not started: run it here rather than wait for the helper
            uint64_t own = ++self->claimed;
            kim_work_fn *fn = s_slot (self, own)->fn;
            void *arg = s_slot (self, own)->arg;
            pthread_mutex_unlock (&self->mutex);
            locked = false;
            s_run (self, own, fn, arg);
        }
        else
        if (atomic_load_explicit (&slot->done, memory_order_acquire) < next) {
            //  The helper runs it now
            self->owner_waits = true;
            pthread_cond_wait (&self->finished, &self->mutex);
            self->owner_waits = false;
        }
    }
    if (locked)
        pthread_mutex_unlock (&self->mutex);
    self->waited = ticket;
}

void
kim_work_drain (kim_work_t *self)
{
    if (self)
        kim_work_wait (self, self->posted);
}

//  --------------------------------------------------------------------------
//  Self-test

typedef struct {
    uint64_t value;
    uint64_t result;
    _Atomic uint64_t *runs;
} s_test_job_t;

static void
s_test_square (void *arg)
{
    s_test_job_t *job = (s_test_job_t *) arg;
    job->result = job->value * job->value;
    atomic_fetch_add (job->runs, 1);
}

//  Posts `count` jobs through `work` with room for `slots`, waiting for
//  every `every`-th as it goes: each job runs once, and its result is seen
//  after its wait.
static void
s_test_round (kim_work_t *work, size_t count, size_t every)
{
    s_test_job_t *jobs = (s_test_job_t *) calloc (count, sizeof *jobs);
    uint64_t *tickets = (uint64_t *) calloc (count, sizeof *tickets);
    assert (jobs && tickets);
    _Atomic uint64_t runs;
    atomic_init (&runs, 0);
    for (size_t i = 0; i < count; i++) {
        jobs [i].value = i + 3;
        jobs [i].runs = &runs;
        tickets [i] = kim_work_post (work, s_test_square, &jobs [i]);
        assert (work? tickets [i] > 0: tickets [i] == 0);
        if (every && i % every == every - 1) {
            kim_work_wait (work, tickets [i]);
            for (size_t j = 0; j <= i; j++)
                assert (jobs [j].result == (j + 3) * (j + 3));
        }
    }
    kim_work_drain (work);
    assert (atomic_load (&runs) == count);
    for (size_t i = 0; i < count; i++)
        assert (jobs [i].result == (i + 3) * (i + 3));
    //  Waiting again, or for an old ticket, returns at once
    kim_work_wait (work, tickets [0]);
    kim_work_wait (work, 0);
    free (tickets);
    free (jobs);
}

void
kim_work_test (bool verbose)
{
    (void) verbose;
    //  Inline: no helper
    s_test_round (NULL, 10, 3);

    //  More jobs than slots: posting waits for the oldest (and may run it)
    kim_work_t *work = kim_work_new (4);
    assert (work);
    s_test_round (work, 1000, 0);
    s_test_round (work, 1000, 7);
    s_test_round (work, 1000, 1);
    //  A wait right after each post runs most jobs inline or catches the
    //  helper at them; either way each ran once
    s_test_round (work, 200, 1);
    kim_work_destroy (&work);
    assert (work == NULL);

    //  Destroy runs what is still posted
    work = kim_work_new (64);
    assert (work);
    s_test_job_t jobs [32];
    _Atomic uint64_t runs;
    atomic_init (&runs, 0);
    for (size_t i = 0; i < 32; i++) {
        jobs [i] = (s_test_job_t) { .value = i, .runs = &runs };
        kim_work_post (work, s_test_square, &jobs [i]);
    }
    kim_work_destroy (&work);
    assert (atomic_load (&runs) == 32);
    for (size_t i = 0; i < 32; i++)
        assert (jobs [i].result == i * i);
}
