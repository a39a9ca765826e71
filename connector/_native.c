/* Frames of documented-shape observations -> the fixed schema's column buffers, in one pass.
 *
 * Why hand-written: no library on the package index turns JSON into Arrow while keeping each
 * property value's verbatim JSON text (pyarrow.json fails when a value changes type, DuckDB
 * re-serializes values, polars unquotes them), and building those columns from Python objects
 * was over half of the converter's CPU. This is not a general JSON parser: it accepts only what
 * it can hold exactly and says so, per observation and per frame:
 *
 *  - an observation it cannot hold exactly (an escape in a field it would have to unescape, an
 *    integer or out-of-range coordinate, an unknown, missing, repeated or explicitly-null field,
 *    a timestamp not shaped YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z on a real day, a repeated
 *    propertyType) is left out of the columns and reported as "odd" with its byte span, for the
 *    general (reference) path;
 *  - a frame that is not valid JSON, or whose envelope is unusual, is reported as "bailed" and
 *    nothing of it is kept: the Python paths decide it, exactly as before.
 *
 * Everything it accepts it validates: JSON grammar, UTF-8, string control characters. Every
 * read is bounds-checked against the end of the input (a crash here would be a poison cut).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 1024 /* deeper values bail the frame to the Python paths (~100 KiB of stack) */
#define MAX_PROPERTIES 64 /* longer lists go to the general path (pairwise repeat check) */
#define MAX_NUMBER 512 /* longer spellings of a coordinate go to the general path */

enum { OK = 0, ODD = 1, BAD = 2, NOMEM = 3 };

/* A column buffer: the bytearray it is handed to Python as, so no column is copied at the end
 * (a bytes copy of every buffer, with its fresh pages, was ~5-10% of a scan), and its fill. */
typedef struct {
    PyObject *obj;
    char *p;
    size_t len, cap;
    size_t first; /* capacity of the first allocation */
} Buf;

/* Buffers, in the order they are returned to Python. */
enum {
    SRC_OFF, SRC_DATA, COL_OFF, COL_DATA, SPEC_OFF, SPEC_DATA, TRACK_OFF, TRACK_DATA,
    TS_US, NAME_OFF, NAME_DATA, NAME_STATE,
    LON, LAT, ELEV, ELEV_STATE,
    ST_LIST, ST_STATE, ST_KEY_OFF, ST_KEY_DATA, ST_VAL_OFF, ST_VAL_DATA,
    LV_LIST, LV_STATE, LV_KEY_OFF, LV_KEY_DATA, LV_VAL_OFF, LV_VAL_DATA,
    STYLE_OFF, STYLE_DATA, STYLE_STATE,
    EXTRA_OFF, EXTRA_DATA, EXTRA_STATE,
    NBUF
};

typedef struct {
    Buf b[NBUF];
    int64_t rows;
    /* Of the observation being read, what its `extra` keeps: a timestamp spelled otherwise
     * than format_us writes it (its text, in the frame), an explicit null name. */
    const unsigned char *stamp;
    size_t stamp_n;
    int null_name;
    unsigned char stamp_text[32]; /* a timestamp spelled with escapes, decoded */
} Out;

typedef struct {
    const unsigned char *p, *end;
} Cur;

static int grow(Buf *b, size_t extra) {
    size_t cap = b->cap ? b->cap : b->first;
    while (cap < b->len + extra) {
        if (cap > ((size_t)1 << 40)) return NOMEM;
        cap *= 2;
    }
    if (b->obj == NULL) {
        b->obj = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)cap);
        if (b->obj == NULL) return NOMEM;
    } else if (PyByteArray_Resize(b->obj, (Py_ssize_t)cap) < 0) {
        return NOMEM;
    }
    b->p = PyByteArray_AS_STRING(b->obj);
    b->cap = cap;
    return OK;
}

static inline int reserve(Buf *b, size_t extra) {
    return b->len + extra <= b->cap ? OK : grow(b, extra);
}

static inline int put(Buf *b, const void *src, size_t n) {
    if (n == 0) return OK; /* memcpy to a buffer not yet allocated is undefined even for 0 */
    if (reserve(b, n) != OK) return NOMEM;
    memcpy(b->p + b->len, src, n);
    b->len += n;
    return OK;
}

static int put_i32(Buf *b, int64_t v) {
    if (v > INT32_MAX) return BAD; /* Arrow's 32-bit offsets: the Python paths take it */
    int32_t x = (int32_t)v;
    return put(b, &x, sizeof x);
}

static int put_u8(Buf *b, unsigned char v) { return put(b, &v, 1); }

static inline void ws(Cur *c) {
    /* Compact JSON has none: one compare says so (every whitespace byte is <= ' '). */
    if (c->p < c->end && *c->p > ' ') return;
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static inline int peek(Cur *c) { return c->p < c->end ? *c->p : -1; }

static inline int expect(Cur *c, unsigned char ch) {
    ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return OK;
    }
    return BAD;
}

/* One UTF-8 sequence starting at a byte >= 0x80 (RFC 3629: no overlongs, no surrogates). */
static int utf8(Cur *c) {
    const unsigned char *p = c->p;
    size_t left = (size_t)(c->end - p);
    unsigned char b0 = p[0];
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        if (left < 2 || (p[1] & 0xC0) != 0x80) return BAD;
        c->p += 2;
        return OK;
    }
    if (b0 >= 0xE0 && b0 <= 0xEF) {
        if (left < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return BAD;
        if (b0 == 0xE0 && p[1] < 0xA0) return BAD;
        if (b0 == 0xED && p[1] > 0x9F) return BAD;
        c->p += 3;
        return OK;
    }
    if (b0 >= 0xF0 && b0 <= 0xF4) {
        if (left < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
            return BAD;
        if (b0 == 0xF0 && p[1] < 0x90) return BAD;
        if (b0 == 0xF4 && p[1] > 0x8F) return BAD;
        c->p += 4;
        return OK;
    }
    return BAD;
}

static int hex(int ch) {
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

static unsigned hex4(const unsigned char *p) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned ch = p[i];
        v = v * 16 + (ch <= '9' ? ch - '0' : (ch | 0x20) - 'a' + 10);
    }
    return v;
}

/* Four hex digits at p, all before end. */
static int hex4_at(const unsigned char *p, const unsigned char *end, unsigned *cp) {
    if (end - p < 4 || !hex(p[0]) || !hex(p[1]) || !hex(p[2]) || !hex(p[3])) return 0;
    *cp = hex4(p);
    return 1;
}

/* Bytes a string holds as they are: printable ASCII but '"' and '\\'. */
static unsigned char plain_byte[256];

static void init_plain_bytes(void) {
    for (int ch = 0x20; ch < 0x80; ch++) plain_byte[ch] = ch != '"' && ch != '\\';
}

/* A string at c->p == '"'. *plain says whether it holds no escape; [*s, *s + *n) is its text.
 * Text that will be kept is checked as UTF-8 (`keep`: invalid is ODD, the general path rejects
 * that observation); text only stepped over is not, as the Python decoders do not check it. */
static int string(Cur *c, const unsigned char **s, size_t *n, int *plain, int keep) {
    /* A local cursor, written back once: stepped through `c`, every byte was also a store (a
     * byte load may alias the cursor), 22% more instructions in this hottest function. */
    const unsigned char *p = c->p + 1, *end = c->end;
    *s = p;
    *plain = 1;
    for (;;) {
        while (p < end && plain_byte[*p]) p++;
        if (p >= end) return BAD;
        unsigned char ch = *p;
        if (ch == '"') {
            *n = (size_t)(p - *s);
            c->p = p + 1;
            return OK;
        }
        if (ch == '\\') {
            *plain = 0;
            if (end - p < 2) return BAD;
            unsigned char e = p[1];
            if (e == 'u') {
                /* Surrogates must pair, as the Python decoders insist: else the frame bails. */
                unsigned cp;
                if (!hex4_at(p + 2, end, &cp) || (cp >= 0xDC00 && cp <= 0xDFFF)) return BAD;
                p += 6;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (end - p < 2 || p[0] != '\\' || p[1] != 'u' || !hex4_at(p + 2, end, &cp) ||
                        cp < 0xDC00 || cp > 0xDFFF)
                        return BAD;
                    p += 6;
                }
            } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' ||
                       e == 'r' || e == 't') {
                p += 2;
            } else {
                return BAD;
            }
        } else if (ch < 0x20) {
            return BAD;
        } else if (ch >= 0x80 && keep) {
            c->p = p;
            if (utf8(c) != OK) return ODD;
            p = c->p;
        } else {
            p++;
        }
    }
}

/* A JSON number's span; *is_float when it has a fraction or an exponent. */
static int number(Cur *c, int *is_float) {
    const unsigned char *p = c->p, *e = c->end;
    *is_float = 0;
    if (p < e && *p == '-') p++;
    if (p >= e) return BAD;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < e && *p >= '0' && *p <= '9') p++;
    } else {
        return BAD;
    }
    if (p < e && *p == '.') {
        *is_float = 1;
        p++;
        if (p >= e || *p < '0' || *p > '9') return BAD;
        while (p < e && *p >= '0' && *p <= '9') p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        *is_float = 1;
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        if (p >= e || *p < '0' || *p > '9') return BAD;
        while (p < e && *p >= '0' && *p <= '9') p++;
    }
    c->p = p;
    return OK;
}

static int literal(Cur *c, const char *word, size_t n) {
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0) return BAD;
    c->p += n;
    return OK;
}

/* Any JSON value at c->p (after whitespace): validated and stepped over. */
static int skip(Cur *c, int depth, int keep) {
    const unsigned char *s;
    size_t n;
    int plain, is_float, r;
    ws(c);
    switch (peek(c)) {
    case '"':
        return string(c, &s, &n, &plain, keep);
    case 't':
        return literal(c, "true", 4);
    case 'f':
        return literal(c, "false", 5);
    case 'n':
        return literal(c, "null", 4);
    case '{':
    case '[': {
        int object = *c->p == '{';
        unsigned char close = object ? '}' : ']';
        if (depth >= MAX_DEPTH) return BAD;
        c->p++;
        ws(c);
        if (peek(c) == close) {
            c->p++;
            return OK;
        }
        for (;;) {
            if (object) {
                ws(c);
                if (peek(c) != '"') return BAD;
                if ((r = string(c, &s, &n, &plain, keep)) != OK) return r;
                if ((r = expect(c, ':')) != OK) return r;
            }
            if ((r = skip(c, depth + 1, keep)) != OK) return r;
            ws(c);
            if (peek(c) == ',') {
                c->p++;
                continue;
            }
            return expect(c, close);
        }
    }
    default:
        return number(c, &is_float);
    }
}

/* Clinger's fast path: a decimal whose digits fit 2^53 and whose power of ten is at most 22
 * is one exact integer times or divided by one exact power: a single, correctly rounded IEEE
 * operation. That is nearly every coordinate; the rest take the full conversion. */
static int exact_decimal(const unsigned char *p, const unsigned char *end, double *out) {
    static const double pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                   1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                   1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    uint64_t m = 0;
    int scale = 0, digits = 0, neg = 0;
    if (*p == '-') neg = 1, p++;
    for (; p < end && *p >= '0' && *p <= '9'; p++, digits++) m = m * 10 + (uint64_t)(*p - '0');
    if (p < end && *p == '.')
        for (p++; p < end && *p >= '0' && *p <= '9'; p++, digits++, scale--)
            m = m * 10 + (uint64_t)(*p - '0');
    if (p != end || digits > 15) return 0; /* an exponent, or digits beyond 15: full path */
    if (m > ((uint64_t)1 << 53) || scale < -22) return 0;
    double v = (double)m / pow10[-scale];
    *out = neg ? -v : v;
    return 1;
}

/* A coordinate: a JSON float that a double holds (integers are the general path's). */
static int coordinate(Cur *c, double *out) {
    const unsigned char *start;
    int is_float;
    char text[MAX_NUMBER];
    ws(c);
    start = c->p;
    if (number(c, &is_float) != OK) return ODD; /* stepped over (and judged) as a whole */
    size_t n = (size_t)(c->p - start);
    if (!is_float || n >= MAX_NUMBER) return ODD;
    if (exact_decimal(start, c->p, out)) return OK;
    memcpy(text, start, n);
    text[n] = '\0';
    char *end = NULL;
    /* Python's own correctly rounded, locale-independent conversion. */
    double v = PyOS_string_to_double(text, &end, NULL);
    if (end != text + n || (v == -1.0 && PyErr_Occurred())) {
        PyErr_Clear();
        return ODD;
    }
    if (v != v || v > 1.7976931348623157e308 || v < -1.7976931348623157e308) return ODD;
    *out = v;
    return OK;
}

static int digits(const unsigned char *p, int n, int *v) {
    *v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return 0;
        *v = *v * 10 + (p[i] - '0');
    }
    return 1;
}

/* Days from 1970-01-01 to a date of the proleptic Gregorian calendar (H. Hinnant's
 * days_from_civil: exact for every year, no table, no overflow for years 1-9999). */
static int64_t days_from_civil(int y, int m, int d) {
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const int64_t yoe = y - era * 400;
    const int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z on a day that exists, years 0001-9999, as microseconds since
 * the epoch (digits past the sixth dropped, as the general path's parse_z rounds down).
 * *canonical: format_us would write the same text (no fraction, or 1-6 digits not ending in
 * 0); other spellings keep their text in `extra`. Parsed here, where the shape is checked
 * anyway: as text cast by Arrow it cost ~0.2 us per observation more. */
static int timestamp_us(const unsigned char *s, size_t n, int64_t *us, int *canonical) {
    int y, mo, d, h, mi, se;
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (n < 20 || n > 30 || s[n - 1] != 'Z') return 0;
    if (!digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) || s[7] != '-' ||
        !digits(s + 8, 2, &d) || s[10] != 'T' || !digits(s + 11, 2, &h) || s[13] != ':' ||
        !digits(s + 14, 2, &mi) || s[16] != ':' || !digits(s + 17, 2, &se))
        return 0;
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || se > 59) return 0;
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (d > days[mo - 1] + (mo == 2 && leap)) return 0;
    int64_t whole = ((days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60 + se;
    int fraction = 0, k = (int)n - 21; /* fraction digits */
    *canonical = 1;
    if (n > 20) {
        if (s[19] != '.' || k < 1) return 0;
        int kept = k < 6 ? k : 6, rest;
        if (!digits(s + 20, kept, &fraction) || !digits(s + 20 + kept, k - kept, &rest)) return 0;
        for (int i = kept; i < 6; i++) fraction *= 10;
        *canonical = k <= 6 && s[n - 2] != '0';
    }
    *us = whole * 1000000 + fraction;
    return 1;
}

/* A key that must be plain text: a key spelled with escapes is the general path's to read. */
static int plain_string(Cur *c, const unsigned char **s, size_t *n) {
    int plain, r;
    ws(c);
    if (peek(c) != '"') return ODD;
    if ((r = string(c, s, n, &plain, 1)) != OK) return r;
    return plain ? OK : ODD;
}

/* The escapes of an already validated string body, decoded into b as UTF-8. A lone surrogate
 * has no UTF-8 spelling (string() lets none through; checked anyway): ODD. Decoded text is never longer than its escaped spelling. */
static int unescape(const unsigned char *p, const unsigned char *end, Buf *b) {
    if (reserve(b, (size_t)(end - p)) != OK) return NOMEM;
    unsigned char *out = (unsigned char *)b->p + b->len;
    while (p < end) {
        if (*p != '\\') {
            *out++ = *p++;
            continue;
        }
        unsigned char e = p[1];
        p += 2;
        if (e != 'u') {
            *out++ = e == 'b' ? '\b' : e == 'f' ? '\f' : e == 'n' ? '\n' : e == 'r' ? '\r'
                   : e == 't' ? '\t' : e;
            continue;
        }
        unsigned cp = hex4(p);
        p += 4;
        if (cp >= 0xDC00 && cp <= 0xDFFF) return ODD;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (end - p < 6 || p[0] != '\\' || p[1] != 'u') return ODD;
            unsigned low = hex4(p + 2);
            if (low < 0xDC00 || low > 0xDFFF) return ODD;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            p += 6;
        }
        if (cp < 0x80) {
            *out++ = (unsigned char)cp;
        } else if (cp < 0x800) {
            *out++ = (unsigned char)(0xC0 | cp >> 6);
            *out++ = (unsigned char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            *out++ = (unsigned char)(0xE0 | cp >> 12);
            *out++ = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
            *out++ = (unsigned char)(0x80 | (cp & 0x3F));
        } else {
            *out++ = (unsigned char)(0xF0 | cp >> 18);
            *out++ = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
            *out++ = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
            *out++ = (unsigned char)(0x80 | (cp & 0x3F));
        }
    }
    b->len = (size_t)((char *)out - b->p);
    return OK;
}

/* A string value, decoded into the data buffer b. */
static int text(Cur *c, Buf *b) {
    const unsigned char *s;
    size_t n;
    int plain, r;
    ws(c);
    if (peek(c) != '"') return ODD;
    if ((r = string(c, &s, &n, &plain, 1)) != OK) return r;
    return plain ? put(b, s, n) : unescape(s, s + n, b);
}

/* A key equal to the literal `name`: its length first, then a compare of constant size, which
 * the compiler expands inline (a memcmp call per candidate key was ~3% of a scan). */
#define key_is(s, n, name) ((n) == sizeof(name) - 1 && memcmp((s), (name), sizeof(name) - 1) == 0)

static int position(Cur *c, Out *o) {
    const unsigned char *s;
    size_t n;
    int r, seen = 0;
    double lon = 0, lat = 0, elev = 0;
    if ((r = expect(c, '{')) != OK) return ODD;
    ws(c);
    if (peek(c) == '}') return ODD;
    for (;;) {
        int bit;
        double *slot;
        if ((r = plain_string(c, &s, &n)) != OK) return r;
        if (key_is(s, n, "longitude")) bit = 1, slot = &lon;
        else if (key_is(s, n, "latitude")) bit = 2, slot = &lat;
        else if (key_is(s, n, "elevation")) bit = 4, slot = &elev;
        else return ODD;
        if (seen & bit) return ODD;
        seen |= bit;
        if ((r = expect(c, ':')) != OK) return r;
        if ((r = coordinate(c, slot)) != OK) return r;
        ws(c);
        if (peek(c) == ',') {
            c->p++;
            continue;
        }
        if ((r = expect(c, '}')) != OK) return r;
        break;
    }
    if ((seen & 3) != 3) return ODD;
    if ((r = put(&o->b[LON], &lon, 8)) || (r = put(&o->b[LAT], &lat, 8)) ||
        (r = put(&o->b[ELEV], &elev, 8)) || (r = put_u8(&o->b[ELEV_STATE], (seen & 4) != 0)))
        return r;
    return OK;
}

/* Whether the list's last key (decoded in the keys' buffers) repeats one of its `count` before. */
static int repeated(Buf *key_off, Buf *key_data, int count) {
    const int32_t *off = (const int32_t *)key_off->p;
    size_t last = key_off->len / 4 - 1; /* offsets[last] is the end of the newest key */
    int32_t start = off[last - 1], n = off[last] - start;
    for (int i = 1; i <= count; i++) {
        int32_t s = off[last - 1 - i], len = off[last - i] - s;
        if (len == n && (n == 0 || memcmp(key_data->p + s, key_data->p + start, (size_t)n) == 0))
            return 1;
    }
    return 0;
}

/* [{"propertyType": "...", "value": <any JSON, kept verbatim>}, ...] */
static int properties(Cur *c, Out *o, int base) {
    int count = 0, r;
    Buf *key_off = &o->b[base + 2], *key_data = &o->b[base + 3];
    Buf *val_off = &o->b[base + 4], *val_data = &o->b[base + 5];
    ws(c);
    if (peek(c) != '[') return ODD;
    c->p++;
    ws(c);
    if (peek(c) == ']') {
        c->p++;
    } else {
        for (;;) {
            const unsigned char *s, *value = NULL;
            size_t n, value_n = 0;
            int has_key = 0;
            if (count == MAX_PROPERTIES) return ODD;
            if ((r = expect(c, '{')) != OK) return ODD;
            ws(c);
            if (peek(c) == '}') return ODD;
            for (;;) {
                if ((r = plain_string(c, &s, &n)) != OK) return r;
                if ((r = expect(c, ':')) != OK) return r;
                if (key_is(s, n, "propertyType")) {
                    if (has_key) return ODD;
                    has_key = 1;
                    if ((r = text(c, key_data)) != OK) return r;
                    if ((r = put_i32(key_off, (int64_t)key_data->len)) != OK) return r;
                } else if (key_is(s, n, "value")) {
                    if (value != NULL) return ODD;
                    ws(c);
                    value = c->p;
                    if ((r = skip(c, 8, 1)) != OK) return r;
                    value_n = (size_t)(c->p - value);
                } else {
                    return ODD;
                }
                ws(c);
                if (peek(c) == ',') {
                    c->p++;
                    continue;
                }
                if ((r = expect(c, '}')) != OK) return r;
                break;
            }
            if (!has_key || value == NULL) return ODD;
            if (repeated(key_off, key_data, count)) return ODD;
            count++;
            if ((r = put(val_data, value, value_n)) ||
                (r = put_i32(val_off, (int64_t)val_data->len)))
                return r;
            ws(c);
            if (peek(c) == ',') {
                c->p++;
                continue;
            }
            if ((r = expect(c, ']')) != OK) return r;
            break;
        }
    }
    /* The list's end, in entries: the keys' offsets hold one more than the entries. */
    if ((r = put_i32(&o->b[base], (int64_t)(key_off->len / 4 - 1))) ||
        (r = put_u8(&o->b[base + 1], 1)))
        return r;
    return OK;
}

enum { F_SRC = 1, F_COL = 2, F_SPEC = 4, F_TRACK = 8, F_POS = 16, F_TS = 32, F_NAME = 64,
       F_STATIC = 128, F_LIVE = 256, F_STYLE = 512, F_REQUIRED = 63 };

static int text_field(Cur *c, Out *o, int off) {
    int r = text(c, &o->b[off + 1]);
    if (r != OK) return r;
    return put_i32(&o->b[off], (int64_t)o->b[off + 1].len);
}

/* A timestamp spelled with escapes, decoded into o->stamp_text: every character of a timestamp
 * is ASCII, so anything longer or not ASCII is not one (ODD). */
static int decode_stamp(Out *o, const unsigned char **s, size_t *n) {
    const unsigned char *p = *s, *end = *s + *n;
    size_t len = 0;
    while (p < end) {
        unsigned ch = *p++;
        if (ch == '\\') {
            unsigned char e = *p++; /* string() checked every escape */
            if (e == 'u') {
                ch = hex4(p);
                p += 4;
            } else {
                ch = e; /* '"', '\\' and '/' stand for themselves; b f n r t fail the shape */
            }
        }
        if (ch >= 0x80 || len == sizeof o->stamp_text) return ODD;
        o->stamp_text[len++] = (unsigned char)ch;
    }
    *s = o->stamp_text;
    *n = len;
    return OK;
}

/* The timestamp as microseconds. */
static int timestamp_field(Cur *c, Out *o) {
    const unsigned char *s;
    size_t n;
    int64_t us;
    int canonical, plain, r;
    ws(c);
    if (peek(c) != '"') return ODD;
    if ((r = string(c, &s, &n, &plain, 1)) != OK) return r;
    if (!plain && decode_stamp(o, &s, &n) != OK) return ODD;
    if (!timestamp_us(s, n, &us, &canonical)) return ODD;
    if (!canonical) o->stamp = s, o->stamp_n = n;
    return put(&o->b[TS_US], &us, 8);
}

static int field(Cur *c, Out *o, const unsigned char *k, size_t n, int *seen) {
    int bit, r;
    const unsigned char *s;
    size_t len;
    if (key_is(k, n, "sourceSystemId")) bit = F_SRC;
    else if (key_is(k, n, "collectionId")) bit = F_COL;
    else if (key_is(k, n, "observationSpecId")) bit = F_SPEC;
    else if (key_is(k, n, "trackId")) bit = F_TRACK;
    else if (key_is(k, n, "position")) bit = F_POS;
    else if (key_is(k, n, "timestamp")) bit = F_TS;
    else if (key_is(k, n, "name")) bit = F_NAME;
    else if (key_is(k, n, "staticProperties")) bit = F_STATIC;
    else if (key_is(k, n, "liveProperties")) bit = F_LIVE;
    else if (key_is(k, n, "style")) bit = F_STYLE;
    else return ODD;
    if (*seen & bit) return ODD;
    *seen |= bit;
    switch (bit) {
    case F_SRC: return text_field(c, o, SRC_OFF);
    case F_COL: return text_field(c, o, COL_OFF);
    case F_SPEC: return text_field(c, o, SPEC_OFF);
    case F_TRACK: return text_field(c, o, TRACK_OFF);
    case F_TS: return timestamp_field(c, o);
    case F_POS: return position(c, o);
    case F_STATIC: return properties(c, o, ST_LIST);
    case F_LIVE: return properties(c, o, LV_LIST);
    case F_NAME:
        ws(c);
        if (peek(c) == 'n') { /* an explicit null: kept apart from an absent name */
            if ((r = literal(c, "null", 4)) != OK) return r;
            if ((r = put_i32(&o->b[NAME_OFF], (int64_t)o->b[NAME_DATA].len))) return r;
            o->null_name = 1;
            return put_u8(&o->b[NAME_STATE], 0);
        }
        if ((r = text_field(c, o, NAME_OFF)) != OK) return r;
        return put_u8(&o->b[NAME_STATE], 1);
    default: /* F_STYLE: any JSON, verbatim */
        ws(c);
        s = c->p;
        if ((r = skip(c, 4, 1)) != OK) return r;
        len = (size_t)(c->p - s);
        if ((r = put(&o->b[STYLE_DATA], s, len)) ||
            (r = put_i32(&o->b[STYLE_OFF], (int64_t)o->b[STYLE_DATA].len)))
            return r;
        return put_u8(&o->b[STYLE_STATE], 1);
    }
}

/* What an absent optional field leaves in its columns. */
static int absent(Out *o, int seen) {
    int r = OK;
    if (!(seen & F_NAME) && ((r = put_i32(&o->b[NAME_OFF], (int64_t)o->b[NAME_DATA].len)) ||
                             (r = put_u8(&o->b[NAME_STATE], 0))))
        return r;
    if (!(seen & F_STYLE) && ((r = put_i32(&o->b[STYLE_OFF], (int64_t)o->b[STYLE_DATA].len)) ||
                              (r = put_u8(&o->b[STYLE_STATE], 0))))
        return r;
    if (!(seen & F_STATIC) &&
        ((r = put_i32(&o->b[ST_LIST], (int64_t)(o->b[ST_KEY_OFF].len / 4 - 1))) ||
         (r = put_u8(&o->b[ST_STATE], 0))))
        return r;
    if (!(seen & F_LIVE) &&
        ((r = put_i32(&o->b[LV_LIST], (int64_t)(o->b[LV_KEY_OFF].len / 4 - 1))) ||
         (r = put_u8(&o->b[LV_STATE], 0))))
        return r;
    return OK;
}

#define PUT_LITERAL(b, text) put((b), (text), sizeof(text) - 1)

/* `extra` as the general path writes it: a JSON object of what the columns cannot say, in its
 * order (the timestamp's spelling, then an explicit null name); null when there is nothing. */
static int extra(Out *o) {
    Buf *data = &o->b[EXTRA_DATA];
    int r = OK, any = o->stamp != NULL || o->null_name;
    if (any) {
        if ((r = PUT_LITERAL(data, "{"))) return r;
        if (o->stamp != NULL &&
            ((r = PUT_LITERAL(data, "\"timestamp\":\"")) || (r = put(data, o->stamp, o->stamp_n)) ||
             (r = PUT_LITERAL(data, "\""))))
            return r;
        if (o->stamp != NULL && o->null_name && (r = PUT_LITERAL(data, ","))) return r;
        if (o->null_name && (r = PUT_LITERAL(data, "\"name\":null"))) return r;
        if ((r = PUT_LITERAL(data, "}"))) return r;
    }
    if ((r = put_i32(&o->b[EXTRA_OFF], (int64_t)data->len))) return r;
    return put_u8(&o->b[EXTRA_STATE], (unsigned char)any);
}

static int observation(Cur *c, Out *o) {
    const unsigned char *k;
    size_t n;
    int r, seen = 0;
    o->stamp = NULL;
    o->null_name = 0;
    c->p++; /* '{' */
    ws(c);
    if (peek(c) == '}') return ODD;
    for (;;) {
        if ((r = plain_string(c, &k, &n)) != OK) return r;
        if ((r = expect(c, ':')) != OK) return r;
        if ((r = field(c, o, k, n, &seen)) != OK) return r;
        ws(c);
        if (peek(c) == ',') {
            c->p++;
            continue;
        }
        if ((r = expect(c, '}')) != OK) return r;
        break;
    }
    if ((seen & F_REQUIRED) != F_REQUIRED) return ODD;
    if ((r = absent(o, seen)) != OK) return r;
    return extra(o);
}

static void rollback(Out *o, const size_t *mark) {
    for (int i = 0; i < NBUF; i++) o->b[i].len = mark[i];
}

static void remember(Out *o, size_t *mark) {
    for (int i = 0; i < NBUF; i++) mark[i] = o->b[i].len;
}

/* One observation of the array; an odd one is stepped over whole and its span recorded. */
static int element(Cur *c, Out *o, PyObject *odd, Py_ssize_t frame, Py_ssize_t index,
                   const unsigned char *base) {
    size_t mark[NBUF];
    const unsigned char *start;
    int r = ODD;
    ws(c);
    start = c->p;
    remember(o, mark);
    if (peek(c) == '{') r = observation(c, o);
    if (r == OK) {
        o->rows++;
        return OK;
    }
    if (r != ODD) return r;
    rollback(o, mark);
    c->p = start;
    if ((r = skip(c, 2, 0)) != OK) return r;
    PyObject *item = Py_BuildValue("(nnnn)", frame, index, (Py_ssize_t)(start - base),
                                   (Py_ssize_t)(c->p - base));
    if (item == NULL) return NOMEM;
    r = PyList_Append(odd, item);
    Py_DECREF(item);
    return r == 0 ? OK : NOMEM;
}

/* The envelope: an object whose "observations" array holds the observations. Returns the
 * number of observations it holds (odd ones included) or a negative code. */
static int frame(Cur *c, Out *o, PyObject *odd, Py_ssize_t index, Py_ssize_t *count) {
    const unsigned char *base = c->p, *k;
    size_t n;
    int r, plain, found = 0;
    *count = 0;
    if ((r = expect(c, '{')) != OK) return r;
    ws(c);
    if (peek(c) == '}') return BAD;
    for (;;) {
        ws(c);
        if (peek(c) != '"') return BAD;
        if ((r = string(c, &k, &n, &plain, 0)) != OK) return r;
        if (!plain) return BAD; /* a key spelled with escapes: let the decoders judge */
        if ((r = expect(c, ':')) != OK) return r;
        if (key_is(k, n, "observations")) {
            if (found) return BAD;
            found = 1;
            if ((r = expect(c, '[')) != OK) return r;
            ws(c);
            if (peek(c) == ']') {
                c->p++;
            } else {
                for (;;) {
                    if ((r = element(c, o, odd, index, *count, base)) != OK) return r;
                    ++*count;
                    ws(c);
                    if (peek(c) == ',') {
                        c->p++;
                        continue;
                    }
                    if ((r = expect(c, ']')) != OK) return r;
                    break;
                }
            }
        } else if ((r = skip(c, 1, 0)) != OK) {
            return r;
        }
        ws(c);
        if (peek(c) == ',') {
            c->p++;
            continue;
        }
        if ((r = expect(c, '}')) != OK) return r;
        break;
    }
    ws(c);
    return found && c->p == c->end ? OK : BAD;
}

static void release(Out *o) {
    for (int i = 0; i < NBUF; i++) Py_XDECREF(o->b[i].obj);
}

/* A presence buffer (a byte per row, 1: present) as Arrow's validity bitmap, or None when every
 * row is present (Arrow then needs no bitmap). Here, not with Arrow kernels: an equal, an
 * invert and an any per column and piece cost ~0.07 us per observation. */
static PyObject *validity(const Buf *state, int64_t rows) {
    const unsigned char *flags = (const unsigned char *)state->p;
    int64_t present = 0;
    for (int64_t i = 0; i < rows; i++) present += flags[i];
    if (present == rows) Py_RETURN_NONE;
    PyObject *obj = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)((rows + 7) / 8));
    if (obj == NULL) return NULL;
    unsigned char *bits = (unsigned char *)PyByteArray_AS_STRING(obj);
    memset(bits, 0, (size_t)((rows + 7) / 8));
    for (int64_t i = 0; i < rows; i++) bits[i >> 3] |= (unsigned char)(flags[i] << (i & 7));
    return obj;
}

/* The buffer as a bytearray of its length; the caller owns it (NULL: an error is set). */
static PyObject *hand_over(Buf *b) {
    PyObject *obj = b->obj;
    if (obj == NULL) return PyByteArray_FromStringAndSize(NULL, 0);
    if (PyByteArray_Resize(obj, (Py_ssize_t)b->len) < 0) return NULL;
    b->obj = NULL;
    return obj;
}

static int start_offsets(Out *o) {
    static const int offsets[] = {SRC_OFF,  COL_OFF,    SPEC_OFF,   TRACK_OFF, NAME_OFF,
                                  ST_LIST,  ST_KEY_OFF, ST_VAL_OFF, LV_LIST,   LV_KEY_OFF,
                                  LV_VAL_OFF, STYLE_OFF, EXTRA_OFF};
    for (size_t i = 0; i < sizeof offsets / sizeof offsets[0]; i++)
        if (put_i32(&o->b[offsets[i]], 0) != OK) return NOMEM;
    return OK;
}

PyDoc_STRVAR(scan_doc,
"scan(frames) -> (rows, counts, odd, buffers)\n\n"
"counts[i]: observations of frame i kept in the columns, or -1 when the frame is left to the\n"
"Python paths whole. odd: (frame, index, start, end) of observations left to the general path.\n"
"buffers: the column buffers as bytearrays, in the order connector.native names them; a\n"
"presence column as Arrow's validity bitmap, or None when every row is present.");

static PyObject *scan(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *frames, *seq, *counts = NULL, *odd = NULL, *buffers = NULL, *result = NULL;
    Out o;
    memset(&o, 0, sizeof o);
    if (!PyArg_ParseTuple(args, "O", &frames)) return NULL;
    seq = PySequence_Fast(frames, "frames must be a sequence of bytes-like objects");
    if (seq == NULL) return NULL;
    Py_ssize_t total = PySequence_Fast_GET_SIZE(seq), bytes = 0;
    for (Py_ssize_t i = 0; i < total; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        bytes += PyBytes_Check(item) ? PyBytes_GET_SIZE(item) : 0;
    }
    /* Sized from the input, so the big columns (8 bytes a row for times and coordinates, ~10
     * for ids) rarely grow and copy: an observation is ~150-400 bytes of JSON. Untouched pages
     * of a large allocation cost nothing, and the final resize returns the rest. */
    for (int i = 0; i < NBUF; i++) o.b[i].first = bytes / 32 > 4096 ? (size_t)bytes / 32 : 4096;
    counts = PyList_New(total);
    odd = PyList_New(0);
    if (counts == NULL || odd == NULL || start_offsets(&o) != OK) goto fail;
    for (Py_ssize_t i = 0; i < total; i++) {
        Py_buffer view;
        size_t mark[NBUF];
        Py_ssize_t odd_before = PyList_GET_SIZE(odd), count = 0;
        int64_t rows_before = o.rows;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &view, PyBUF_SIMPLE) < 0)
            goto fail;
        Cur c = {(const unsigned char *)view.buf, (const unsigned char *)view.buf + view.len};
        remember(&o, mark);
        int r = frame(&c, &o, odd, i, &count);
        PyBuffer_Release(&view);
        if (r == NOMEM) {
            if (!PyErr_Occurred()) PyErr_NoMemory();
            goto fail;
        }
        if (r != OK) {
            rollback(&o, mark);
            o.rows = rows_before;
            if (PyList_SetSlice(odd, odd_before, PyList_GET_SIZE(odd), NULL) < 0) goto fail;
            count = -1;
        } else {
            count = (Py_ssize_t)(o.rows - rows_before);
        }
        PyObject *n = PyLong_FromSsize_t(count);
        if (n == NULL) goto fail;
        PyList_SET_ITEM(counts, i, n);
    }
    buffers = PyTuple_New(NBUF);
    if (buffers == NULL) goto fail;
    for (int i = 0; i < NBUF; i++) {
        int state = i == NAME_STATE || i == ELEV_STATE || i == ST_STATE || i == LV_STATE ||
                    i == STYLE_STATE || i == EXTRA_STATE;
        PyObject *b = state ? validity(&o.b[i], o.rows) : hand_over(&o.b[i]);
        if (b == NULL) goto fail;
        PyTuple_SET_ITEM(buffers, i, b);
    }
    result = Py_BuildValue("(LOOO)", (long long)o.rows, counts, odd, buffers);
fail:
    release(&o);
    Py_XDECREF(counts);
    Py_XDECREF(odd);
    Py_XDECREF(buffers);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "connector._native",
    "Frames of documented-shape observations -> column buffers (see _native.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    init_plain_bytes();
    return PyModule_Create(&module);
}
