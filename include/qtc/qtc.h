/* qtc/qtc.h: every public header of libqtc. */
#ifndef QTC_QTC_H
#define QTC_QTC_H

#include "qtc/calib.h"
#include "qtc/calibrate.h"
#include "qtc/convert.h"
#include "qtc/error.h"
#include "qtc/export.h"
#include "qtc/graph.h"
#include "qtc/io.h"
#include "qtc/lora.h"
#include "qtc/model.h"
#include "qtc/optim.h"
#include "qtc/plot.h"
#include "qtc/qat.h"
#include "qtc/quant.h"
#include "qtc/rng.h"
#include "qtc/runtime.h"
#include "qtc/tensor.h"
#include "qtc/train.h"

#endif
