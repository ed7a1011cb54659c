/*
 * echo.c - the classic textbook TCP echo client and server, traced by the tests.
 *
 *   echo server [ACCEPT_DELAY_MS]   listen on 127.0.0.1, port chosen by the kernel;
 *                                   print "port N" once listening; accept one
 *                                   connection (after the delay), echo until EOF, close
 *   echo client PORT MESSAGE        connect, write MESSAGE, shutdown(SHUT_WR),
 *                                   read until EOF and print it, close
 *   echo pair MESSAGE               fork: the child is the client, the parent the server
 *
 * Plain blocking socket(2)/bind/listen/accept/connect/read/write/close so that
 * strace shows exactly these calls.  Exit status 0 on success, 1 on any error.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static int listener(unsigned short *port)
{
    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        die("socket");
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        die("setsockopt");
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("bind");
    if (listen(fd, 8) < 0)
        die("listen");
    if (getsockname(fd, (struct sockaddr *)&addr, &len) < 0)
        die("getsockname");
    *port = ntohs(addr.sin_port);
    return fd;
}

static void echo_one(int lfd, long delay_ms)
{
    char buf[4096];
    ssize_t n;
    int cfd;
    if (delay_ms > 0) {
        struct timespec ts = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    cfd = accept(lfd, NULL, NULL);
    if (cfd < 0)
        die("accept");
    while ((n = read(cfd, buf, sizeof buf)) > 0) {
        ssize_t off = 0;
        while (off < n) {
            ssize_t w = write(cfd, buf + off, (size_t)(n - off));
            if (w < 0)
                die("write");
            off += w;
        }
    }
    if (n < 0)
        die("read");
    close(cfd);
}

static void client(unsigned short port, const char *msg)
{
    struct sockaddr_in addr;
    char buf[4096];
    size_t len = strlen(msg), off = 0;
    ssize_t n;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        die("socket");
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("connect");
    while (off < len) {
        ssize_t w = write(fd, msg + off, len - off);
        if (w < 0)
            die("write");
        off += (size_t)w;
    }
    if (shutdown(fd, SHUT_WR) < 0)
        die("shutdown");
    printf("echoed ");
    while ((n = read(fd, buf, sizeof buf)) > 0)
        fwrite(buf, 1, (size_t)n, stdout);
    if (n < 0)
        die("read");
    printf("\n");
    fflush(stdout);
    close(fd);
}

int main(int argc, char **argv)
{
    unsigned short port;
    if (argc >= 2 && strcmp(argv[1], "server") == 0) {
        long delay = argc >= 3 ? atol(argv[2]) : 0;
        int lfd = listener(&port);
        printf("port %u\n", port);
        fflush(stdout);
        echo_one(lfd, delay);
        close(lfd);
        return 0;
    }
    if (argc >= 4 && strcmp(argv[1], "client") == 0) {
        client((unsigned short)atoi(argv[2]), argv[3]);
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "pair") == 0) {
        int lfd = listener(&port), status;
        pid_t child = fork();
        if (child < 0)
            die("fork");
        if (child == 0) {
            close(lfd);
            client(port, argv[2]);
            return 0;
        }
        echo_one(lfd, 0);
        close(lfd);
        if (waitpid(child, &status, 0) < 0)
            die("waitpid");
        return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
    }
    fprintf(stderr, "usage: echo server [DELAY_MS] | client PORT MESSAGE | pair MESSAGE\n");
    return 1;
}
