/* Hostile: tries to read host files. Reports what it managed to open. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

static const char *PATHS[] = {"/etc/passwd", "../../../../etc/passwd", "etc/passwd", "/", ".", "/proc/self/environ"};

int main(void) {
    int opened = 0, last_errno = 0;
    for (unsigned i = 0; i < sizeof PATHS / sizeof PATHS[0]; i++) {
        FILE *f = fopen(PATHS[i], "r");
        if (f) { opened++; fclose(f); } else { last_errno = errno; }
        int fd = open(PATHS[i], O_RDONLY);
        if (fd >= 0) { opened++; close(fd); } else { last_errno = errno; }
    }
    FILE *w = fopen("/tmp/antiphon-escape", "w");
    if (w) { opened++; fclose(w); }
    printf("{\"opened\":%d,\"errno\":%d}\n", opened, last_errno);
    return 0;
}
