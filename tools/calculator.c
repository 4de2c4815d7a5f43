/* calculator: evaluates + - * / and parentheses on decimal numbers.
 * In: {"expression": "2 * (3 + 4.5)"}   Out: {"result": 15}
 */
#include <math.h>

#include "include/antiphon_tool.h"

typedef struct {
    const char *p;
    const char *error;
    int depth;
} Parser;

static double expr(Parser *ps);

static void skip_spaces(Parser *ps) {
    while (*ps->p == ' ' || *ps->p == '\t') ps->p++;
}

static double factor(Parser *ps) {
    skip_spaces(ps);
    if (++ps->depth > 64) {
        ps->error = "expression nests too deeply";
        return 0;
    }
    double value = 0;
    if (*ps->p == '-' || *ps->p == '+') {
        int negative = *ps->p == '-';
        ps->p++;
        value = factor(ps);
        if (negative) value = -value;
    } else if (*ps->p == '(') {
        ps->p++;
        value = expr(ps);
        skip_spaces(ps);
        if (*ps->p != ')') {
            if (!ps->error) ps->error = "missing ')'";
        } else {
            ps->p++;
        }
    } else if ((*ps->p >= '0' && *ps->p <= '9') || *ps->p == '.') {
        char *end;
        value = strtod(ps->p, &end);
        ps->p = end;
    } else if (!ps->error) {
        ps->error = *ps->p ? "unexpected character" : "unexpected end of expression";
    }
    ps->depth--;
    return value;
}

static double term(Parser *ps) {
    double value = factor(ps);
    for (;;) {
        skip_spaces(ps);
        char op = *ps->p;
        if (ps->error || (op != '*' && op != '/')) return value;
        ps->p++;
        double rhs = factor(ps);
        if (op == '*') {
            value *= rhs;
        } else if (rhs == 0) {
            if (!ps->error) ps->error = "division by zero";
            return 0;
        } else {
            value /= rhs;
        }
    }
}

static double expr(Parser *ps) {
    double value = term(ps);
    for (;;) {
        skip_spaces(ps);
        char op = *ps->p;
        if (ps->error || (op != '+' && op != '-')) return value;
        ps->p++;
        double rhs = term(ps);
        value = op == '+' ? value + rhs : value - rhs;
    }
}

int main(void) {
    char *input = at_read_stdin(NULL);
    static char expression[4096];
    if (!input || !at_string(at_get(input, "expression"), expression, sizeof expression))
        return at_fail("expected {\"expression\": string}");
    Parser ps = {expression, NULL, 0};
    double value = expr(&ps);
    skip_spaces(&ps);
    if (!ps.error && *ps.p) ps.error = "unexpected character";
    if (!ps.error && !isfinite(value)) ps.error = "result is not a finite number";
    if (ps.error) return at_fail(ps.error);
    printf("{\"result\":%.17g}\n", value);
    return 0;
}
