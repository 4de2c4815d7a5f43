/* Echoes its input back as {"input": <arguments>}: the cheapest possible round trip. */
#include "../include/antiphon_tool.h"

int main(void) {
    size_t len;
    char *input = at_read_stdin(&len);
    if (!input) return at_fail("no input");
    fputs("{\"input\":", stdout);
    fwrite(input, 1, len, stdout);
    fputs("}\n", stdout);
    return 0;
}
