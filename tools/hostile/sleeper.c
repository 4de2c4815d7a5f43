/* Hostile: sleeps in the host (WASI poll_oneoff), where epoch interruption
 * cannot reach it. The host must still stop it at the wall-clock limit. */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    for (;;) sleep(3600);
    puts("{}");
    return 0;
}
