/* Hostile: spins forever. The host must stop it by fuel or by wall clock. */
#include <stdio.h>

volatile unsigned long counter;

int main(void) {
    for (;;) counter++;
    puts("{}");
    return 0;
}
