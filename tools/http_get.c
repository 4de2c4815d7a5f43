/* http_get: fetches a URL through the host's http_fetch capability.
 * In: {"url": "https://api.example.com/v1/status"}   Out: {"body": "..."}
 * The host allows only the URLs on the tenant's allow-list (see tools/README.md).
 */
#include "include/antiphon_tool.h"

#define BODY_MAX (64 * 1024)

int main(void) {
    char *input = at_read_stdin(NULL);
    static char url[2048];
    static char body[BODY_MAX + 1];
    if (!input || !at_string(at_get(input, "url"), url, sizeof url)) return at_fail("expected {\"url\": string}");
    int32_t n = at_http_fetch(url, (int32_t)strlen(url), body, BODY_MAX);
    if (n < 0) {
        static const char *reasons[] = {"", "denied", "network error", "response too large", "bad request", "HTTP error status"};
        char message[64];
        snprintf(message, sizeof message, "http_fetch failed: %s (%d)", -n < 6 ? reasons[-n] : "unknown", (int)n);
        return at_fail(message);
    }
    body[n] = '\0';
    fputs("{\"body\":", stdout);
    at_put_string(body);
    fputs("}\n", stdout);
    return 0;
}
