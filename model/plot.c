/* plot.c: SVG charts: line charts for training curves, histograms of
 * calibration statistics. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <errno.h>
#include <sys/stat.h>

#include "qtc/io.h"
#include "qtc/model.h"
#include "qtc/plot.h"

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

/* Writes t to path atomically (the text is freed). */
static qtc_status write_text(text *t, const char *path, qtc_error *err)
{
    qtc_status rc = t->failed ? qtc_error_set(err, QTC_ERR_NOMEM, "out of memory drawing %s", path)
                              : qtc_write_file(path, t->p, t->n, err);
    free(t->p);
    t->p = NULL;
    return rc;
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
    return write_text(&t, path, err);
}

/* One activation histogram: log-scale bars over the observed range, the
 * chosen clipping range in red, the observed extremes dashed. */
static qtc_status plot_histogram(const qtc_act_stats *a, const char *path, const char *method, double lo, double hi,
                                 qtc_error *err)
{
    const double W = 720, H = 360, L = 60, R = 20, T = 46, B = 46;
    enum { BARS = 240 };
    double x1 = fmax(fmax(fabs(a->min), fabs(a->max)), 1e-12), x0 = -x1, bars[BARS] = {0}, top = 1;
    const double width = 2 * a->range / QTC_HIST_BINS;
    for (int b = 0; b < QTC_HIST_BINS; b++) { /* the histogram's bins into the display's bars */
        double c = -a->range + width * (b + 0.5);
        int k = (int)floor((c - x0) / (x1 - x0) * BARS);
        if (a->hist[b] > 0 && k >= 0 && k < BARS)
            bars[k] += a->hist[b];
    }
    for (int k = 0; k < BARS; k++)
        top = fmax(top, bars[k]);
    const double ytop = ceil(log10(top + 1));
#define PX(v) (L + ((v) - x0) / (x1 - x0) * (W - L - R))
#define PY(v) (H - B - (v) / ytop * (H - T - B))
    text t = {0};
    add(&t, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    add(&t, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    add(&t, "<text x=\"%.0f\" y=\"20\" font-size=\"14\">input of %s</text>\n", L, a->weight);
    add(&t, "<text x=\"%.0f\" y=\"38\" fill=\"#555\">%lld values; observed [%.4g, %.4g]; %s range [%.4g, %.4g]</text>\n", L,
        (long long)(a->rows * a->in), a->min, a->max, method, lo, hi);
    for (int d = 0; d <= (int)ytop; d++)
        add(&t, "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"#ddd\"/><text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">1e%d</text>\n",
            L, PY(d), W - R, PY(d), L - 6, PY(d) + 4, d);
    double xs = tick_step(x1 - x0);
    for (double v = ceil(x0 / xs) * xs; v <= x1 + 1e-12; v += xs)
        add(&t, "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%g</text>\n", PX(v), H - B + 16, fabs(v) < 1e-12 ? 0.0 : v);
    add(&t, "<path fill=\"#4a7fb5\" d=\"");
    for (int k = 0; k < BARS; k++)
        if (bars[k] > 0) {
            double xa = PX(x0 + (x1 - x0) * k / BARS), xb = PX(x0 + (x1 - x0) * (k + 1) / BARS), y = PY(log10(bars[k] + 1));
            add(&t, "M%.1f %.1fH%.1fV%.1fH%.1fZ", xa, H - B, xb, y, xa);
        }
    add(&t, "\"/>\n");
    add(&t, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#333\"/>\n", L, T, W - L - R, H - T - B);
    const double ext[2] = {a->min, a->max}, clip[2] = {lo, hi};
    for (int k = 0; k < 2; k++) {
        add(&t, "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>\n", PX(ext[k]), T,
            PX(ext[k]), H - B);
        add(&t, "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#d62728\" stroke-width=\"2\"/>\n", PX(clip[k]), T,
            PX(clip[k]), H - B);
    }
    add(&t, "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">activation value (counts on a log scale)</text>\n",
        L + (W - L - R) / 2, H - 10);
    add(&t, "</svg>\n");
#undef PX
#undef PY
    return write_text(&t, path, err);
}

qtc_status qtc_calib_plot(const qtc_calib *cb, const char *dir, qtc_range_method m, double p, int bits, qtc_error *err)
{
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return qtc_error_set(err, QTC_ERR_IO, "%s: cannot create the folder: %s", dir, strerror(errno));
    text idx = {0};
    add(&idx, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>qcalib: activation ranges</title></head>\n"
              "<body style=\"font-family:sans-serif\">\n<h1>Activation histograms (%s ranges, int%d)</h1>\n",
        qtc_range_method_name(m), bits);
    add(&idx, "<p>%lld tokens in %lld windows. Red: the chosen clipping range; dashed: the observed extremes.</p>\n",
        (long long)cb->tokens, (long long)cb->windows);
    qtc_status rc = QTC_OK;
    for (int i = 0; i < cb->n_layers * QTC_N_LINEAR && rc == QTC_OK; i++) {
        const qtc_act_stats *a = &cb->s[i];
        double lo, hi;
        qtc_act_range(a, m, p, bits, &lo, &hi);
        char file[QTC_NAME_MAX + 8], path[QTC_PATH_MAX];
        snprintf(file, sizeof file, "%s.svg", a->weight);
        if ((rc = qtc_path_join(path, dir, file, err)) != QTC_OK)
            break;
        rc = plot_histogram(a, path, qtc_range_method_name(m), lo, hi, err);
        add(&idx, "<div><h3>%s</h3><img src=\"%s\" alt=\"%s\"></div>\n", a->weight, file, a->weight);
    }
    add(&idx, "</body></html>\n");
    char path[QTC_PATH_MAX];
    if (rc == QTC_OK && (rc = qtc_path_join(path, dir, "index.html", err)) == QTC_OK)
        return write_text(&idx, path, err);
    free(idx.p);
    return rc;
}
