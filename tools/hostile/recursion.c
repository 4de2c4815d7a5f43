/* Hostile: unbounded recursion; must end in a stack-overflow trap. */
#include <stdio.h>

volatile unsigned long stop_at;  /* stays 0: the recursion never ends */

__attribute__((noinline)) static unsigned long down(unsigned long n) {
    if (stop_at && n >= stop_at) return n;
    unsigned long r = down(n + 1);
    return r ^ (r >> 3) ^ n;  /* work after the call: no tail call, no accumulator loop */
}

int main(void) {
    printf("{\"n\":%lu}\n", down(0));
    return 0;
}
