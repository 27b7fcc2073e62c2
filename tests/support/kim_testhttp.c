/*  kim_testhttp.c — plain HTTP requests and Prometheus samples (see
    kim_testhttp.h).
*/
#include <czmq.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kim_testhttp.h"

int
kim_testhttp_exchange (int port, const char *request, size_t size, int wait_ms, char **answer)
{
    *answer = NULL;
    int fd = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons ((uint16_t) port) };
    addr.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    if (connect (fd, (struct sockaddr *) &addr, sizeof addr) != 0) {
        close (fd);
        return -1;
    }
    size_t sent = 0;
    while (sent < size) {
        ssize_t rc = send (fd, request + sent, size - sent, MSG_NOSIGNAL);
        if (rc <= 0)
            break;              //  the server may answer early and close
        sent += (size_t) rc;
    }
    shutdown (fd, SHUT_WR);
    size_t capacity = 1 << 16, used = 0;
    char *data = (char *) malloc (capacity);
    int64_t deadline = zclock_mono () + wait_ms;
    while (data && zclock_mono () < deadline) {
        struct pollfd item = { fd, POLLIN, 0 };
        if (poll (&item, 1, 200) <= 0)
            continue;
        if (used + 4096 > capacity) {
            char *grown = (char *) realloc (data, capacity * 2);
            if (!grown)
                break;
            data = grown;
            capacity *= 2;
        }
        ssize_t rc = recv (fd, data + used, capacity - used - 1, 0);
        if (rc <= 0)
            break;
        used += (size_t) rc;
    }
    close (fd);
    if (!data)
        return -1;
    data [used] = 0;
    int status = -1;
    if (sscanf (data, "HTTP/1.%*d %d", &status) != 1)
        status = -1;
    *answer = data;
    return status;
}

char *
kim_testhttp_request (int port, const char *method, const char *path)
{
    char request [256];
    int size = snprintf (request, sizeof request, "%s %s HTTP/1.0\r\nHost: localhost\r\n\r\n",
                         method, path);
    if (size < 0 || size >= (int) sizeof request)
        return NULL;
    char *answer;
    kim_testhttp_exchange (port, request, (size_t) size, 10000, &answer);
    return answer;
}

double
kim_testhttp_metric (const char *scrape, const char *series)
{
    size_t length = strlen (series);
    for (const char *line = scrape; line && *line; ) {
        if (strncmp (line, series, length) == 0 && line [length] == ' ')
            return atof (line + length + 1);
        line = strchr (line, '\n');
        if (line)
            line++;
    }
    return -1;
}
