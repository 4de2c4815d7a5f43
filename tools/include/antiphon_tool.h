/* antiphon_tool.h: the few helpers a C tool needs (header-only, no dependencies).
 *
 * The tool ABI (see tools/README.md): the arguments arrive as one JSON value on
 * stdin; the tool writes one JSON value to stdout and exits 0, or writes
 * {"error": "..."} to stdout and exits non-zero.
 *
 * The JSON reader works in place on the input text: functions take a pointer to
 * the first character of a value and return pointers into the same buffer.
 * It is small on purpose; the host has already validated the arguments against
 * the tool's input schema, but every function still fails safely (NULL) on
 * malformed input.
 */
#ifndef ANTIPHON_TOOL_H
#define ANTIPHON_TOOL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AT_MAX_DEPTH 64

/* ---- input ---------------------------------------------------------------- */

/* Reads all of stdin into a NUL-terminated heap buffer. */
static inline char *at_read_stdin(size_t *len_out) {
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    if (!buf) return NULL;
    for (;;) {
        if (len + 1 >= cap) {
            char *bigger = realloc(buf, cap * 2);
            if (!bigger) { free(buf); return NULL; }
            buf = bigger;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - len - 1, stdin);
        if (n == 0) break;
        len += n;
    }
    buf[len] = '\0';
    if (len_out) *len_out = len;
    return buf;
}

static inline const char *at_ws(const char *p) {
    while (p && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

static inline const char *at_skip_depth(const char *p, int depth);

static inline const char *at_skip_string(const char *p) {
    if (!p || *p != '"') return NULL;
    for (p++; *p; p++) {
        if (*p == '\\') {
            if (!p[1]) return NULL;
            p++;
        } else if (*p == '"') {
            return p + 1;
        }
    }
    return NULL;
}

static inline const char *at_skip_container(const char *p, char close, int depth) {
    p = at_ws(p + 1);
    if (*p == close) return p + 1;
    for (;;) {
        if (close == '}') {
            p = at_skip_string(at_ws(p));
            p = at_ws(p);
            if (!p || *p != ':') return NULL;
            p = at_ws(p + 1);
        }
        p = at_ws(at_skip_depth(p, depth + 1));
        if (!p) return NULL;
        if (*p == ',') { p = at_ws(p + 1); continue; }
        if (*p == close) return p + 1;
        return NULL;
    }
}

static inline const char *at_skip_depth(const char *p, int depth) {
    p = at_ws(p);
    if (!p || depth > AT_MAX_DEPTH) return NULL;
    switch (*p) {
    case '"': return at_skip_string(p);
    case '{': return at_skip_container(p, '}', depth);
    case '[': return at_skip_container(p, ']', depth);
    case 't': return strncmp(p, "true", 4) == 0 ? p + 4 : NULL;
    case 'f': return strncmp(p, "false", 5) == 0 ? p + 5 : NULL;
    case 'n': return strncmp(p, "null", 4) == 0 ? p + 4 : NULL;
    default: {
        char *end;
        strtod(p, &end);
        return end == p ? NULL : end;
    }
    }
}

/* The end of the value starting at p, or NULL when it is malformed. */
static inline const char *at_skip(const char *p) { return at_skip_depth(p, 0); }

/* Compares a JSON string literal at p (no escapes considered) with key. */
static inline int at_key_is(const char *p, const char *key) {
    size_t n = strlen(key);
    return p[0] == '"' && strncmp(p + 1, key, n) == 0 && p[1 + n] == '"';
}

/* The value of member `key` in the object at p, or NULL. */
static inline const char *at_get(const char *p, const char *key) {
    p = at_ws(p);
    if (!p || *p != '{') return NULL;
    p = at_ws(p + 1);
    if (*p == '}') return NULL;
    for (;;) {
        const char *k = p;
        p = at_ws(at_skip_string(k));
        if (!p || *p != ':') return NULL;
        p = at_ws(p + 1);
        if (at_key_is(k, key)) return p;
        p = at_ws(at_skip(p));
        if (!p || *p != ',') return NULL;
        p = at_ws(p + 1);
    }
}

/* Array iteration: at_first(p) gives the first element of the array at p (or
 * NULL when empty); at_next(e) gives the element after e (or NULL at the end). */
static inline const char *at_first(const char *p) {
    p = at_ws(p);
    if (!p || *p != '[') return NULL;
    p = at_ws(p + 1);
    return *p == ']' ? NULL : p;
}

static inline const char *at_next(const char *e) {
    const char *p = at_ws(at_skip(e));
    if (!p || *p != ',') return NULL;
    return at_ws(p + 1);
}

static inline int at_number(const char *p, double *out) {
    char *end;
    p = at_ws(p);
    if (!p || !(*p == '-' || (*p >= '0' && *p <= '9'))) return 0;
    *out = strtod(p, &end);
    return end != p;
}

static inline void at_utf8(char **o, char *end, unsigned cp) {
    unsigned char b[4];
    int n;
    if (cp < 0x80) { b[0] = (unsigned char)cp; n = 1; }
    else if (cp < 0x800) { b[0] = 0xC0 | (cp >> 6); b[1] = 0x80 | (cp & 0x3F); n = 2; }
    else if (cp < 0x10000) { b[0] = 0xE0 | (cp >> 12); b[1] = 0x80 | ((cp >> 6) & 0x3F); b[2] = 0x80 | (cp & 0x3F); n = 3; }
    else { b[0] = 0xF0 | (cp >> 18); b[1] = 0x80 | ((cp >> 12) & 0x3F); b[2] = 0x80 | ((cp >> 6) & 0x3F); b[3] = 0x80 | (cp & 0x3F); n = 4; }
    for (int i = 0; i < n && *o < end; i++) *(*o)++ = (char)b[i];
}

static inline int at_hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

/* Decodes the JSON string at p into out (NUL-terminated, cut at cap - 1
 * bytes). Returns 1 on success, 0 when p is not a well-formed string. */
static inline int at_string(const char *p, char *out, size_t cap) {
    p = at_ws(p);
    if (!p || *p != '"' || cap == 0) return 0;
    char *o = out, *end = out + cap - 1;
    for (p++; *p && *p != '"'; p++) {
        if (*p != '\\') {
            if (o < end) *o++ = *p;
            continue;
        }
        p++;
        switch (*p) {
        case '"': case '\\': case '/': if (o < end) *o++ = *p; break;
        case 'b': if (o < end) *o++ = '\b'; break;
        case 'f': if (o < end) *o++ = '\f'; break;
        case 'n': if (o < end) *o++ = '\n'; break;
        case 'r': if (o < end) *o++ = '\r'; break;
        case 't': if (o < end) *o++ = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (!at_hex4(p + 1, &cp)) return 0;
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && p[1] == '\\' && p[2] == 'u' && at_hex4(p + 3, &lo)
                && lo >= 0xDC00 && lo < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            }
            at_utf8(&o, end, cp);
            break;
        }
        default: return 0;
        }
    }
    if (*p != '"') return 0;
    *o = '\0';
    return 1;
}

/* ---- output --------------------------------------------------------------- */

/* Writes s as a JSON string literal. */
static inline void at_put_string(const char *s) {
    putchar('"');
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        switch (*c) {
        case '"': fputs("\\\"", stdout); break;
        case '\\': fputs("\\\\", stdout); break;
        case '\n': fputs("\\n", stdout); break;
        case '\r': fputs("\\r", stdout); break;
        case '\t': fputs("\\t", stdout); break;
        default:
            if (*c < 0x20) printf("\\u%04x", *c);
            else putchar(*c);
        }
    }
    putchar('"');
}

/* Reports a failure the ABI way: {"error": message} on stdout, exit status 1. */
static inline int at_fail(const char *message) {
    fputs("{\"error\":", stdout);
    at_put_string(message);
    fputs("}\n", stdout);
    return 1;
}

/* ---- host capabilities ---------------------------------------------------- */

/* http_fetch: GET `url`; the body is written to buf. Only tools whose manifest
 * lists the "http_fetch" capability may import it. Returns the body length, or
 * a negative AT_HTTP_* code. See tools/README.md. */
#define AT_HTTP_DENIED (-1)
#define AT_HTTP_NETWORK (-2)
#define AT_HTTP_TOO_LARGE (-3)
#define AT_HTTP_BAD_REQUEST (-4)
#define AT_HTTP_STATUS (-5)

__attribute__((import_module("antiphon"), import_name("http_fetch")))
int32_t at_http_fetch(const char *url, int32_t url_len, char *buf, int32_t buf_len);

#endif /* ANTIPHON_TOOL_H */
