# qtc: plain Make. Targets:
#   make            libqtc.a, libqtc.so and the tools in bin/
#   make test       builds and runs every test; ends with "N passed, N failed"
#   make check      the same tests built with -fsanitize=address,undefined
#   make demo       qconv's pipeline on ../shared/models/stories260K (examples/demo.sh)
#   make bench      benchmarks (ratios against a baseline measured in the same run; few steps each)
#   make bench-tables  the examples' fine-tuning and calibration tables (long)
#   make install    PREFIX=/usr/local DESTDIR= : tools, library, headers, qtc.pc, man pages
# Options: NATIVE=1 adds -march=native; WERROR=1 makes warnings errors in the
# library and tools too (tests always build with -Werror).

PREFIX ?= /usr/local
DESTDIR ?=
CC ?= cc
PKG_CONFIG ?= pkg-config
DEPS := openblas libzstd libcjson

DEP_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(DEPS))
DEP_LIBS := $(shell $(PKG_CONFIG) --libs $(DEPS))

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wpointer-arith \
        -Wformat=2 -Wundef -Wvla -Wno-unknown-pragmas
OPT ?= -O2
BASE_CFLAGS := -std=c11 -D_DEFAULT_SOURCE -g $(WARN) -fopenmp -fPIC -Iinclude $(DEP_CFLAGS)
ifeq ($(NATIVE),1)
BASE_CFLAGS += -march=native
endif
ifeq ($(WERROR),1)
BASE_CFLAGS += -Werror
endif

# The sanitizer build lives in its own folder so both can coexist.
ifeq ($(SANITIZE),1)
BUILD := build/check
MODE_CFLAGS := -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
MODE_LDFLAGS := -fsanitize=address,undefined
else
BUILD := build/release
MODE_CFLAGS := $(OPT)
MODE_LDFLAGS :=
endif

CFLAGS_ALL := $(BASE_CFLAGS) $(MODE_CFLAGS) $(CFLAGS)
LDLIBS_ALL := $(DEP_LIBS) -fopenmp -lm $(LDLIBS)

# V=1 shows the full command lines
ifeq ($(V),1)
Q :=
say = @true
else
Q := @
say = @printf '  %-6s %s\n'
endif

# Every .c under the library folders is libqtc; every tools/*.c but cli.c is a
# tool, linked with tools/cli.c (what the tools share) and the library.
MODULES := tensor quant convert model train qat lora
LIB_SRC := $(wildcard $(addsuffix /*.c,$(MODULES)))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)

# The row kernels (tensor/vec.c, quant/qvec.c) are compiled once per
# instruction-set path, the vector ones with VEC_SUFFIX naming their table;
# tensor/cpu.c picks one at run time (qtc_cpu_path in qtc/runtime.h), so the
# default build still runs on any x86-64. -O3 vectorizes their loops (-O2's
# cost model leaves most of them scalar) and -fno-trapping-math lets it turn
# their selects (clamps) into vector blends; neither changes a result, unlike
# -ffast-math. Only the tensor kernels may fuse multiply-adds: quantization
# must give the same bits on every path.
VEC_SRC := tensor/vec.c quant/qvec.c
AVX2_FLAGS := -mavx2 -mfma -mf16c
AVX512_FLAGS := $(AVX2_FLAGS) -mavx512f -mavx512bw -mavx512vl -mavx512dq -mprefer-vector-width=512
ifneq ($(SANITIZE),1)
$(VEC_SRC:%.c=$(BUILD)/%.o): KERNEL_FLAGS := -O3 -fno-trapping-math
endif
ifneq ($(filter x86_64%,$(shell $(CC) -dumpmachine)),)
CFLAGS_ALL += -DQTC_VEC_X86
VEC_OBJ := $(VEC_SRC:%.c=$(BUILD)/%_avx2.o) $(VEC_SRC:%.c=$(BUILD)/%_avx512.o)
LIB_OBJ += $(VEC_OBJ)
$(VEC_OBJ): KERNEL_FLAGS := $(if $(filter 1,$(SANITIZE)),,-O3) -fno-trapping-math
$(BUILD)/tensor/vec_avx2.o $(BUILD)/tensor/vec_avx512.o: CONTRACT := -ffp-contract=fast
# dequantization runs over groups of 32 or 64: 512-bit loops would run their
# scalar epilogues there (measured 2x slower than 256-bit on int4-g32)
$(BUILD)/quant/qvec_avx512.o: CONTRACT := -mprefer-vector-width=256
endif
CLI_OBJ := $(BUILD)/tools/cli.o
TOOL_MAINS := $(filter-out tools/cli.c,$(wildcard tools/*.c))
TOOLS := $(notdir $(basename $(TOOL_MAINS)))

TEST_SRC := $(wildcard tests/*.c)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
BENCH_SRC := $(wildcard bench/*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

BINDIR := bin
ifeq ($(SANITIZE),1)
BINDIR := $(BUILD)/bin
endif
TOOL_BIN := $(addprefix $(BINDIR)/,$(TOOLS))

.PHONY: all lib test check bench bench-tables install uninstall clean unit demo
all: lib $(TOOL_BIN)
lib: $(BUILD)/libqtc.a $(BUILD)/libqtc.so

# libqtc.so exports only what the public headers declare (qtc/export.h); the
# tools and tests link libqtc.a and still reach everything.
$(LIB_OBJ): VISIBILITY := -fvisibility=hidden
# a change of flags here rebuilds what they compile
$(LIB_OBJ) $(TEST_OBJ) $(CLI_OBJ) $(TOOL_MAINS:%.c=$(BUILD)/%.o): Makefile

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(say) CC $<
	$(Q)$(CC) $(CFLAGS_ALL) $(KERNEL_FLAGS) $(VISIBILITY) -MMD -MP -c $< -o $@

$(BUILD)/%_avx2.o: %.c
	@mkdir -p $(dir $@)
	$(say) CC "$< (avx2)"
	$(Q)$(CC) $(CFLAGS_ALL) $(KERNEL_FLAGS) $(AVX2_FLAGS) $(CONTRACT) -DVEC_SUFFIX=avx2 $(VISIBILITY) -MMD -MP -c $< -o $@

$(BUILD)/%_avx512.o: %.c
	@mkdir -p $(dir $@)
	$(say) CC "$< (avx512)"
	$(Q)$(CC) $(CFLAGS_ALL) $(KERNEL_FLAGS) $(AVX512_FLAGS) $(CONTRACT) -DVEC_SUFFIX=avx512 $(VISIBILITY) -MMD -MP -c $< -o $@

$(BUILD)/tests/%.o: tests/%.c
	@mkdir -p $(dir $@)
	$(say) CC $<
	$(Q)$(CC) $(CFLAGS_ALL) -Werror -Itests -MMD -MP -c $< -o $@

$(BUILD)/libqtc.a: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(say) AR $@
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/libqtc.so: $(LIB_OBJ)
	$(say) LD $@
	$(Q)$(CC) -shared -o $@ $^ $(MODE_LDFLAGS) $(LDLIBS_ALL)

# a tool links its main's object (compiled with dependency tracking) and the library
define TOOL_RULE
$(BINDIR)/$(notdir $(basename $(1))): $(BUILD)/$(1:.c=.o) $(CLI_OBJ) $(BUILD)/libqtc.a
	@mkdir -p $$(dir $$@)
	$$(say) LD $$@
	$$(Q)$$(CC) -o $$@ $$^ $$(MODE_LDFLAGS) $$(LDLIBS_ALL)
endef
$(foreach m,$(TOOL_MAINS),$(eval $(call TOOL_RULE,$(m))))

$(BUILD)/qtc-tests: $(TEST_OBJ) $(BUILD)/libqtc.a
	$(say) LD $@
	$(Q)$(CC) -o $@ $(TEST_OBJ) $(BUILD)/libqtc.a $(MODE_LDFLAGS) $(LDLIBS_ALL)

$(BUILD)/bench/%: bench/%.c $(CLI_OBJ) $(BUILD)/libqtc.a
	@mkdir -p $(dir $@)
	$(say) CC $<
	$(Q)$(CC) $(CFLAGS_ALL) -Werror -Itools -o $@ $< $(CLI_OBJ) $(BUILD)/libqtc.a $(MODE_LDFLAGS) $(LDLIBS_ALL)

unit: $(BUILD)/qtc-tests

# The runner prints each suite's count and ends with the total line.
test: all $(BUILD)/qtc-tests
	@QTC_BUILD=$(BUILD) QTC_BIN=$(BINDIR) sh tests/run.sh

check:
	@$(MAKE) --no-print-directory SANITIZE=1 all build/check/qtc-tests
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  QTC_BUILD=build/check QTC_BIN=build/check/bin sh tests/run.sh

# the README's first command: qconv's main pipeline on stories260K
demo: all
	@QTC_BIN=$(BINDIR) sh examples/demo.sh build/demo

# make bench runs few steps per configuration (QTC_BENCH_ROWS=12356 leaves out
# bench_sizes' 1.1B row, minutes a step on 2 cores);
# bench-tables reruns the examples' long tables (minutes each).
bench: all $(BENCH_BIN)
	@for b in $(BENCH_BIN); do echo "== $$b"; QTC_BIN=$(BINDIR) $$b || exit 1; done
	@echo "== bench/torch_train.py (the peer baseline for bench_train and bench_lora)"
	@py=; for p in python3 /usr/bin/python3; do if $$p -c "import torch" 2>/dev/null; then py=$$p; break; fi; done; \
	  if [ -n "$$py" ]; then $$py bench/torch_train.py; else echo "skipped: no python3 with torch"; fi

bench-tables: all
	@echo "== examples/finetune.sh: the fine-tuning table (500 steps per method, several minutes)"
	@STEPS=500 BATCH=16 WINDOWS=all QTC_BIN=$(BINDIR) sh examples/finetune.sh build/finetune
	@echo "== examples/calibrate.sh: the calibration table (every method, all tokens, a few minutes)"
	@TOKENS=0 WINDOWS=all SCHEMES="int4-g32 int4 int3-g32" METHODS="minmax percentile mse kl" GGML_TYPES="q4_0 q4_1 q5_0" QTC_BIN=$(BINDIR) \
	  sh examples/calibrate.sh build/calibrate

qtc.pc: qtc.pc.in
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(shell sed -n 's/^#define QTC_VERSION "\(.*\)"/\1/p' include/qtc/runtime.h)|' $< > $@

install: all qtc.pc
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig \
	  $(DESTDIR)$(PREFIX)/include/qtc $(DESTDIR)$(PREFIX)/share/man/man1
	$(if $(TOOL_BIN),install -m 755 $(TOOL_BIN) $(DESTDIR)$(PREFIX)/bin/)
	install -m 644 $(BUILD)/libqtc.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/libqtc.so $(DESTDIR)$(PREFIX)/lib/
	install -m 644 include/qtc/*.h $(DESTDIR)$(PREFIX)/include/qtc/
	install -m 644 qtc.pc $(DESTDIR)$(PREFIX)/lib/pkgconfig/
	$(if $(wildcard docs/man/*.1),install -m 644 docs/man/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/)

uninstall:
	rm -f $(addprefix $(DESTDIR)$(PREFIX)/bin/,$(TOOLS)) $(DESTDIR)$(PREFIX)/lib/libqtc.a \
	  $(DESTDIR)$(PREFIX)/lib/libqtc.so $(DESTDIR)$(PREFIX)/lib/pkgconfig/qtc.pc
	rm -rf $(DESTDIR)$(PREFIX)/include/qtc

clean:
	rm -rf build bin qtc.pc

-include $(LIB_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(TOOL_MAINS:%.c=$(BUILD)/%.d) $(CLI_OBJ:.o=.d)
