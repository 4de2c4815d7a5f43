/* Hostile: imports a socket function the host does not provide. Linking must
 * fail when the tool is loaded, not at call time. */
#include <stdint.h>
#include <stdio.h>

__attribute__((import_module("wasi_snapshot_preview1"), import_name("sock_open")))
int32_t sock_open(int32_t family, int32_t type, int32_t *fd);

int main(void) {
    int32_t fd = -1;
    int32_t err = sock_open(1, 1, &fd);
    printf("{\"err\":%d,\"fd\":%d}\n", (int)err, (int)fd);
    return 0;
}
