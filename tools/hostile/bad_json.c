/* Hostile: exits 0 with output that is not JSON. */
#include <stdio.h>

int main(void) {
    puts("{\"result\": 42, oops");
    return 0;
}
