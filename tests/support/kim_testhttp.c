/*  kim_testhttp.c — plain HTTP/1.0 requests and Prometheus samples (see
    kim_testhttp.h).
*/
#include <czmq.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kim_testhttp.h"

char *
kim_testhttp_request (int port, const char *method, const char *path)
{
    int fd = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons ((uint16_t) port) };
    inet_pton (AF_INET, "127.0.0.1", &addr.sin_addr);
    if (connect (fd, (struct sockaddr *) &addr, sizeof addr)) {
        close (fd);
        return NULL;
    }
    char request [256];
    int size = snprintf (request, sizeof request, "%s %s HTTP/1.0\r\nHost: localhost\r\n\r\n",
                         method, path);
    if (size < 0 || size >= (int) sizeof request || write (fd, request, (size_t) size) != size) {
        close (fd);
        return NULL;
    }
    size_t capacity = 1 << 16, used = 0;
    char *answer = (char *) malloc (capacity);
    int64_t deadline = zclock_mono () + 10000;
    while (answer && zclock_mono () < deadline) {
        struct pollfd item = { fd, POLLIN, 0 };
        if (poll (&item, 1, 1000) <= 0)
            continue;
        if (used + 1 == capacity) {
            char *bigger = (char *) realloc (answer, capacity * 2);
            if (!bigger) {
                free (answer);
                answer = NULL;
                break;
            }
            answer = bigger;
            capacity *= 2;
        }
        ssize_t got = read (fd, answer + used, capacity - used - 1);
        if (got <= 0)
            break;
        used += (size_t) got;
    }
    close (fd);
    if (answer)
        answer [used] = 0;
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
