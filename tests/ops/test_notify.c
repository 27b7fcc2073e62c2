/*  test_notify.c — kim-broker as systemd starts it with Type=notify and
    WatchdogSec=: a real broker process, NOTIFY_SOCKET pointing at a datagram
    socket of this test. It must say READY=1 once it serves, ping WATCHDOG=1
    from its loop again and again, survive the unit's ExecReload (SIGHUP: the
    registry reload) and say STOPPING=1 on SIGTERM, exiting 0.
    Without libsystemd in the build (KIM_HAVE_SYSTEMD unset) it checks that
    the broker still runs and warns.
*/
#include <czmq.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kim_testbroker.h"

//  Waits up to `ms` for a datagram holding `want`; 1 if seen. Datagrams
//  without it are skipped (STATUS updates and the like).
static int
s_expect (int fd, const char *want, int ms, char *last, size_t last_size)
{
    int64_t deadline = zclock_mono () + ms;
    while (zclock_mono () < deadline) {
        struct pollfd item = { fd, POLLIN, 0 };
        if (poll (&item, 1, (int) (deadline - zclock_mono ())) <= 0)
            continue;
        ssize_t size = recv (fd, last, last_size - 1, 0);
        if (size <= 0)
            continue;
        last [size] = 0;
        if (strstr (last, want))
            return 1;
    }
    return 0;
}

static int
s_log_has (kim_testbroker_t *broker, const char *text)
{
    char path [PATH_MAX];
    snprintf (path, sizeof path, "%s/broker.log", kim_testbroker_dir (broker));
    FILE *file = fopen (path, "r");
    char line [2048];
    int found = 0;
    while (file && !found && fgets (line, sizeof line, file))
        found = strstr (line, text) != NULL;
    if (file)
        fclose (file);
    return found;
}

int
main (void)
{
    const char *orgs [] = { "jc.a", "soz.b", NULL };
    kim_testbroker_t *broker = kim_testbroker_new (orgs, NULL);
    KIM_CHECK (broker);
    char path [PATH_MAX];
    snprintf (path, sizeof path, "%s/notify.sock", kim_testbroker_dir (broker));
    int fd = socket (AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    KIM_CHECK (fd >= 0);
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    KIM_CHECK (strlen (path) < sizeof addr.sun_path);
    strcpy (addr.sun_path, path);
    KIM_CHECK (bind (fd, (struct sockaddr *) &addr, sizeof addr) == 0);
    setenv ("NOTIFY_SOCKET", path, 1);
    setenv ("WATCHDOG_USEC", "200000", 1);      //  a ping every 100 ms
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    unsetenv ("NOTIFY_SOCKET");
    unsetenv ("WATCHDOG_USEC");

#ifdef KIM_HAVE_SYSTEMD
    char last [1024] = "";
    KIM_CHECK (s_expect (fd, "READY=1", 30000, last, sizeof last));
    KIM_CHECK (strstr (last, "STATUS=serving"));
    //  The loop pings again and again, also while it serves a client
    for (int ping = 0; ping < 3; ping++)
        KIM_CHECK (s_expect (fd, "WATCHDOG=1", 30000, last, sizeof last));
    kim_client_t *client = kim_testbroker_client (broker, "jc.a", 16, false);
    KIM_CHECK (client);
    kim_msg_t msg;
    kim_test_referral (&msg, "soz.b", "R-1");
    uint64_t seq = 0;
    KIM_CHECK (kim_client_send (client, &msg, NULL, 0, &seq, NULL, 10000) == 0 && seq > 0);
    KIM_CHECK (s_expect (fd, "WATCHDOG=1", 30000, last, sizeof last));
    KIM_CHECK (strstr (last, "1 receipted"));
    kim_client_destroy (&client);
    //  ExecReload: SIGHUP reloads the registry; the broker goes on pinging
    KIM_CHECK (kill (kim_testbroker_pid (broker), SIGHUP) == 0);
    KIM_CHECK (s_expect (fd, "WATCHDOG=1", 30000, last, sizeof last));
    for (int attempt = 0; attempt < 400 && !s_log_has (broker, "reload of "); attempt++)
        zclock_sleep (25);
    KIM_CHECK (s_log_has (broker, "reload of "));
    KIM_CHECK (s_log_has (broker, "module=service msg=\"watchdog ping every 100 ms"));
    //  SIGTERM: a clean exit, and STOPPING=1 (still in our socket's queue)
    int status = kim_testbroker_stop (broker, SIGTERM);
    KIM_CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0);
    KIM_CHECK (s_expect (fd, "STOPPING=1", 5000, last, sizeof last));
    printf ("test_notify: READY, watchdog pings, reload and STOPPING seen\n");
#else
    (void) s_expect;
    KIM_CHECK (s_log_has (broker, "built without libsystemd"));
    int status = kim_testbroker_stop (broker, SIGTERM);
    KIM_CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0);
    printf ("test_notify: built without libsystemd; the broker warns and serves\n");
#endif
    close (fd);
    kim_testbroker_destroy (&broker);
    return 0;
}
