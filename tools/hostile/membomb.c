/* Hostile: allocates (and touches) memory until malloc fails, then traps. */
#include <stdlib.h>
#include <string.h>

char *volatile last;  /* the allocations escape, so the compiler cannot drop them */

int main(void) {
    for (;;) {
        char *p = malloc(1 << 20);
        if (!p) abort();
        memset(p, 1, 1 << 20);
        last = p;
    }
}
