/* plot.c: line charts as SVG, for training curves. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/io.h"
#include "qtc/train.h"

typedef struct text {
    char *p;
    size_t n, cap;
    int failed;
} text;

static void add(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(text *t, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int k = vsnprintf(t->p ? t->p + t->n : NULL, t->p ? t->cap - t->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) {
            t->failed = 1;
            return;
        }
        if (t->p && t->n + (size_t)k < t->cap) {
            t->n += (size_t)k;
            return;
        }
        size_t cap = t->cap ? 2 * t->cap : 8192;
        while (cap < t->n + (size_t)k + 1)
            cap *= 2;
        char *p = realloc(t->p, cap);
        if (!p) {
            t->failed = 1;
            return;
        }
        t->p = p;
        t->cap = cap;
    }
}

/* A "nice" tick step for a span (1, 2 or 5 times a power of ten). */
static double tick_step(double span)
{
    double raw = span / 6, p = pow(10, floor(log10(raw))), f = raw / p;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
}

qtc_status qtc_plot_svg(const char *path, const char *title, const char *xlabel, const qtc_plot_series *s, int n_series,
                        qtc_error *err)
{
    static const char *colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"};
    const double W = 720, H = 420, L = 70, R = 160, T = 40, B = 50;
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (int k = 0; k < n_series; k++)
        for (int i = 0; i < s[k].n; i++)
            if (isfinite(s[k].y[i])) {
                x0 = fmin(x0, s[k].x[i]);
                x1 = fmax(x1, s[k].x[i]);
                y0 = fmin(y0, s[k].y[i]);
                y1 = fmax(y1, s[k].y[i]);
            }
    if (!isfinite(x0)) { /* no finite point: an empty frame */
        x0 = y0 = 0;
        x1 = y1 = 1;
    }
    if (x1 <= x0)
        x1 = x0 + 1;
    if (y1 <= y0)
        y1 = y0 + 1;
    double pad = (y1 - y0) * 0.05;
    y0 -= pad;
    y1 += pad;
#define PX(v) (L + ((v) - x0) / (x1 - x0) * (W - L - R))
#define PY(v) (H - B - ((v) - y0) / (y1 - y0) * (H - T - B))
    text t = {0};
    add(&t, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    add(&t, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    add(&t, "<text x=\"%.0f\" y=\"24\" font-size=\"15\">", L);
    for (const char *c = title; *c; c++) /* escape the title */
        add(&t, "%s", *c == '<' ? "&lt;" : *c == '&' ? "&amp;" : (char[2]){*c, 0});
    add(&t, "</text>\n");
    double xs = tick_step(x1 - x0), ys = tick_step(y1 - y0);
    for (double v = ceil(x0 / xs) * xs; v <= x1 + 1e-9; v += xs)
        add(&t, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/><text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>\n",
            PX(v), T, PX(v), H - B, PX(v), H - B + 16, v);
    for (double v = ceil(y0 / ys) * ys; v <= y1 + 1e-9; v += ys)
        add(&t, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/><text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n",
            L, PY(v), W - R, PY(v), L - 6, PY(v) + 4, v);
    add(&t, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#333\"/>\n", L, T, W - L - R, H - T - B);
    add(&t, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", L + (W - L - R) / 2, H - 12, xlabel);
    for (int k = 0; k < n_series; k++) {
        const char *col = colors[k % 6];
        add(&t, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", col);
        for (int i = 0; i < s[k].n; i++)
            if (isfinite(s[k].y[i]))
                add(&t, "%.1f,%.1f ", PX(s[k].x[i]), PY(s[k].y[i]));
        add(&t, "\"/>\n");
        if (s[k].n < 30) /* few points: mark them */
            for (int i = 0; i < s[k].n; i++)
                if (isfinite(s[k].y[i]))
                    add(&t, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", PX(s[k].x[i]), PY(s[k].y[i]), col);
        add(&t, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"%s\" stroke-width=\"3\"/><text x=\"%.0f\" y=\"%.0f\">%s</text>\n",
            W - R + 12, T + 12 + 18.0 * k, W - R + 32, T + 12 + 18.0 * k, col, W - R + 38, T + 16 + 18.0 * k, s[k].name);
    }
    add(&t, "</svg>\n");
#undef PX
#undef PY
    qtc_status rc;
    if (t.failed) {
        rc = qtc_error_set(err, QTC_ERR_NOMEM, "out of memory drawing %s", path);
    } else {
        qtc_out *o = qtc_out_open(path, 0, err);
        rc = o ? qtc_out_pwrite(o, t.p, t.n, 0, err) : err->code;
        if (o && rc == QTC_OK)
            rc = qtc_out_commit(o, err);
        else if (o)
            qtc_out_abort(o);
    }
    free(t.p);
    return rc;
}
