/* Hostile: tries the network through what WASI preview 1 offers (no socket()
 * or connect() exist): accept/recv/send on every plausible descriptor. */
#include <errno.h>
#include <stdio.h>
#include <sys/socket.h>
#include <wasi/api.h>

int main(void) {
    int successes = 0;
    for (int fd = 0; fd < 32; fd++) {
        __wasi_fd_t accepted;
        if (__wasi_sock_accept((__wasi_fd_t)fd, 0, &accepted) == 0) successes++;
        char byte = 'x';
        if (fd > 2 && send(fd, &byte, 1, 0) >= 0) successes++;
    }
    printf("{\"opened\":%d,\"errno\":%d}\n", successes, errno);
    return 0;
}
