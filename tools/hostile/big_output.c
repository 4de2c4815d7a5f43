/* Hostile: writes far more output than any limit allows (a valid JSON string). */
#include <stdio.h>

int main(void) {
    fputs("{\"data\":\"", stdout);
    for (int i = 0; i < 4 * 1024 * 1024; i++) putchar('a');
    fputs("\"}\n", stdout);
    return 0;
}
