/* Leak probe: a global counter. With a fresh instance per call it is 1 every time. */
#include <stdio.h>
#include <stdlib.h>

static int calls;
static char *kept;

int main(void) {
    calls++;
    if (!kept) kept = malloc(1 << 16);  /* would stay allocated if the instance were reused */
    printf("{\"calls\":%d}\n", calls);
    return 0;
}
