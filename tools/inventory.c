/* inventory: looks up a SKU in the items passed with the request.
 * In:  {"items": [{"sku": "A1", "name": "bolt", "qty": 40}], "sku": "A1"}
 * Out: {"found": true, "sku": "A1", "name": "bolt", "qty": 40}  or  {"found": false, "sku": "A1"}
 */
#include "include/antiphon_tool.h"

int main(void) {
    char *input = at_read_stdin(NULL);
    static char wanted[256], sku[256], name[1024];
    if (!input || !at_string(at_get(input, "sku"), wanted, sizeof wanted))
        return at_fail("expected {\"items\": [...], \"sku\": string}");
    const char *items = at_get(input, "items");
    if (!items || *items != '[') return at_fail("items must be an array");
    for (const char *item = at_first(items); item; item = at_next(item)) {
        double qty = 0;
        if (!at_string(at_get(item, "sku"), sku, sizeof sku) || strcmp(sku, wanted) != 0) continue;
        if (!at_string(at_get(item, "name"), name, sizeof name)) name[0] = '\0';
        at_number(at_get(item, "qty"), &qty);
        fputs("{\"found\":true,\"sku\":", stdout);
        at_put_string(sku);
        fputs(",\"name\":", stdout);
        at_put_string(name);
        printf(",\"qty\":%.17g}\n", qty);
        return 0;
    }
    fputs("{\"found\":false,\"sku\":", stdout);
    at_put_string(wanted);
    fputs("}\n", stdout);
    return 0;
}
