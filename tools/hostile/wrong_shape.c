/* Hostile: valid JSON that does not match the output schema. */
#include <stdio.h>

int main(void) {
    puts("{\"result\": \"forty-two\"}");
    return 0;
}
