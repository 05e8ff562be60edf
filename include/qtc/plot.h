/* qtc/plot.h: charts as SVG files, written atomically: training curves
 * (line charts) and calibration histograms. */
#ifndef QTC_PLOT_H
#define QTC_PLOT_H

#include "qtc/calib.h"
#include "qtc/export.h"

QTC_API_BEGIN

/* A line chart as an SVG file (written atomically): one polyline per series
 * over a shared x axis, with axis ticks and a legend. */
typedef struct qtc_plot_series {
    const char *name;
    const double *x, *y;
    int n;
} qtc_plot_series;
qtc_status qtc_plot_svg(const char *path, const char *title, const char *xlabel, const qtc_plot_series *s, int n_series,
                        qtc_error *err);

/* DIR/<weight>.svg for every linear input (its histogram on a log scale, the
 * range method m chose, the observed extremes) and DIR/index.html showing them
 * all. */
qtc_status qtc_calib_plot(const qtc_calib *cb, const char *dir, qtc_range_method m, double p, int bits, qtc_error *err);

QTC_API_END

#endif
