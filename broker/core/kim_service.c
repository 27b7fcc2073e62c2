/*  kim_service.c — the broker as a systemd service (Type=notify).

    Exists so that systemd knows the truth about the broker: "started" means
    bound and serving (not merely forked), and "alive" means the event loop
    still turns. Both notifications are sent from timers in the server's own
    zloop, never from another thread: a thread pinging the watchdog would
    keep a hung broker looking healthy.
*/
#include <czmq.h>
#include <inttypes.h>

#include "kim_server_int.h"
#include "kim_service.h"

#ifdef KIM_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>

static int
s_ready (zloop_t *loop, int timer_id, void *arg)
{
    kim_server_t *server = (kim_server_t *) arg;
    sd_notifyf (0, "READY=1\nSTATUS=serving; log head %" PRIu64 "\nMAINPID=%lu",
                kim_store_head (server->store), (unsigned long) getpid ());
    return 0;
}

static int
s_watchdog (zloop_t *loop, int timer_id, void *arg)
{
    kim_server_t *server = (kim_server_t *) arg;
    sd_notifyf (0, "WATCHDOG=1\nSTATUS=serving; %" PRIu64 " receipted, %" PRIu64
                " delivered, %zu sessions", server->receipted, server->delivered,
                zhashx_size (server->sessions));
    return 0;
}

int
kim_service_attach (kim_server_t *server)
{
    if (!getenv ("NOTIFY_SOCKET"))
        return 0;               //  not started by systemd as Type=notify
    if (zloop_timer (server->loop, 1, 1, s_ready, server) == -1)
        return -1;
    uint64_t usec = 0;
    if (sd_watchdog_enabled (0, &usec) > 0 && usec > 0) {
        //  Half the interval, as sd_watchdog_enabled(3) advises
        size_t ms = (size_t) (usec / 2000);
        if (zloop_timer (server->loop, ms? ms: 1, 0, s_watchdog, server) == -1)
            return -1;
        zsys_info ("service: watchdog ping every %zu ms", ms? ms: 1);
    }
    return 0;
}

void
kim_service_stopping (const char *why)
{
    sd_notifyf (0, "STOPPING=1\nSTATUS=%s", why? why: "stopping");
}

#else

int
kim_service_attach (kim_server_t *server)
{
    if (getenv ("NOTIFY_SOCKET"))
        zsys_warning ("service: built without libsystemd: no READY=1 nor watchdog pings; "
                      "use Type=simple");
    return 0;
}

void
kim_service_stopping (const char *why)
{
}

#endif
