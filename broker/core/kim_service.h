/*  kim_service.h — the broker as a systemd service (Type=notify).

    Tells the service manager when the broker serves (READY=1), that its
    loop is alive (WATCHDOG=1, from a timer in the server's own loop, so a
    stuck loop misses its pings and is restarted), and that it stops
    (STOPPING=1). Built on libsystemd's sd_notify when the build found
    libsystemd (KIM_HAVE_SYSTEMD); without it, or outside systemd (no
    $NOTIFY_SOCKET), every call does nothing.
*/
#ifndef KIM_SERVICE_H_INCLUDED
#define KIM_SERVICE_H_INCLUDED

#include "kim_server.h"

#ifdef __cplusplus
extern "C" {
#endif

//  Arms READY=1 for the moment the server's loop starts, and the watchdog
//  timer when systemd asked for one (WatchdogSec=). Call before
//  kim_server_run. Returns 0, or -1 if the timers could not be set.
int
    kim_service_attach (kim_server_t *server);

//  STOPPING=1 with the reason.
void
    kim_service_stopping (const char *why);

#ifdef __cplusplus
}
#endif

#endif
