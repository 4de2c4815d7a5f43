/* unit_convert: converts a value between units of length, mass or temperature.
 * In: {"value": 5, "from": "km", "to": "mi"}   Out: {"value": 3.1068559611866697, "unit": "mi", "quantity": "length"}
 */
#include "include/antiphon_tool.h"

typedef struct {
    const char *unit;
    const char *quantity;
    double scale;  /* to the base unit (m, kg); temperatures use offsets below */
} Unit;

static const Unit UNITS[] = {
    {"mm", "length", 0.001}, {"cm", "length", 0.01}, {"m", "length", 1.0}, {"km", "length", 1000.0},
    {"in", "length", 0.0254}, {"ft", "length", 0.3048}, {"yd", "length", 0.9144}, {"mi", "length", 1609.344},
    {"mg", "mass", 1e-6}, {"g", "mass", 0.001}, {"kg", "mass", 1.0}, {"t", "mass", 1000.0},
    {"oz", "mass", 0.028349523125}, {"lb", "mass", 0.45359237},
    {"C", "temperature", 1.0}, {"F", "temperature", 1.0}, {"K", "temperature", 1.0},
};

static const Unit *find(const char *name) {
    for (size_t i = 0; i < sizeof UNITS / sizeof UNITS[0]; i++)
        if (strcmp(UNITS[i].unit, name) == 0) return &UNITS[i];
    return NULL;
}

static double to_kelvin(double v, const char *unit) {
    if (unit[0] == 'C') return v + 273.15;
    if (unit[0] == 'F') return (v - 32.0) * 5.0 / 9.0 + 273.15;
    return v;
}

static double from_kelvin(double k, const char *unit) {
    if (unit[0] == 'C') return k - 273.15;
    if (unit[0] == 'F') return (k - 273.15) * 9.0 / 5.0 + 32.0;
    return k;
}

int main(void) {
    char *input = at_read_stdin(NULL);
    static char from_name[16], to_name[16];
    double value;
    if (!input || !at_number(at_get(input, "value"), &value)
        || !at_string(at_get(input, "from"), from_name, sizeof from_name)
        || !at_string(at_get(input, "to"), to_name, sizeof to_name))
        return at_fail("expected {\"value\": number, \"from\": unit, \"to\": unit}");
    const Unit *from = find(from_name), *to = find(to_name);
    if (!from) return at_fail("unknown unit in 'from'");
    if (!to) return at_fail("unknown unit in 'to'");
    if (strcmp(from->quantity, to->quantity) != 0) return at_fail("cannot convert between different quantities");
    double result;
    if (strcmp(from->quantity, "temperature") == 0) {
        double k = to_kelvin(value, from->unit);
        if (k < 0) return at_fail("temperature below absolute zero");
        result = from_kelvin(k, to->unit);
    } else {
        result = value * from->scale / to->scale;
    }
    printf("{\"value\":%.17g,\"unit\":", result);
    at_put_string(to->unit);
    fputs(",\"quantity\":", stdout);
    at_put_string(to->quantity);
    fputs("}\n", stdout);
    return 0;
}
