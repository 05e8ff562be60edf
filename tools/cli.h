/* cli.h: what every tool's main() shares (not part of libqtc).
 *
 * The library never prints or exits; the tools do, and they do it the same
 * way: messages on standard error prefixed with the tool's name, usage errors
 * exit 1 after the usage text, library errors map to exit codes through
 * qtc_exit_code (0 ok, 1 usage, 2 bad input, 3 I/O, 4 numerical failure).
 */
#ifndef QTC_TOOLS_CLI_H
#define QTC_TOOLS_CLI_H

#include <getopt.h>
#include <stdio.h>

#include "qtc/train.h"

/* For main(), before anything else: remembers the tool's name and usage text
 * and sets the process up (cli_process_setup). */
void cli_init(const char *tool, const char *usage, char **argv);

/* libgomp reads OMP_WAIT_POLICY when the program loads, and its default (idle
 * workers spin) halves throughput here, where qtc's OpenMP loops alternate
 * with OpenBLAS's own threads on few cores. When the user has not chosen a
 * policy, this re-executes the program once with OMP_WAIT_POLICY=PASSIVE; it
 * returns when nothing needed doing or the re-execution was not possible (the
 * program then runs as it is). The benchmarks call it too. */
void cli_process_setup(char **argv);

/* "tool: MSG" and the usage text on standard error, then exit 1. */
_Noreturn void cli_usage(const char *msg);
/* "tool: error: MSG" for a library error; returns its exit code. */
int cli_fail(const qtc_error *err);
/* "tool: error: FMT..." for the tool's own errors; returns code. */
int cli_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "tool: FMT..." on standard error (a newline is added). */
void cli_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The flags every trainer takes: --data --eval --tokenizer --threads, --steps
 * --batch --ctx --lr --warmup --clip --weight-decay --grad-accum --seed,
 * --eval-every --eval-windows, --save-every --checkpoint --resume
 * --stop-after, --log-json, --plot, --grad-checkpoint. A
 * tool puts CLI_TRAIN_OPTIONS in its getopt_long table and hands each option
 * to cli_train_flag first. */
typedef struct cli_train_flags {
    qtc_train_opts o;           /* o.lr.warmup < 0 until cli_trainer_init: steps / 10 */
    float weight_decay;
    int64_t eval_every;         /* 0: evaluate at the start and the end only */
    int eval_windows;
    int64_t save_every, stop_after;
    const char *checkpoint, *resume, *log_json, *plot;
    const char *data, *eval, *tokenizer; /* training and evaluation text, their tokenizer */
    int threads;                         /* 0: all cores */
    int grad_checkpoint;                 /* --grad-checkpoint: the trained llama's grad_checkpoint */
} cli_train_flags;

enum {
    CLI_OPT_STEPS = 0x100, CLI_OPT_BATCH, CLI_OPT_CTX, CLI_OPT_LR, CLI_OPT_WARMUP, CLI_OPT_CLIP, CLI_OPT_WEIGHT_DECAY,
    CLI_OPT_GRAD_ACCUM, CLI_OPT_SEED, CLI_OPT_EVAL_EVERY, CLI_OPT_EVAL_WINDOWS, CLI_OPT_SAVE_EVERY, CLI_OPT_CHECKPOINT,
    CLI_OPT_RESUME, CLI_OPT_STOP_AFTER, CLI_OPT_LOG_JSON, CLI_OPT_PLOT, CLI_OPT_DATA, CLI_OPT_EVAL, CLI_OPT_TOKENIZER,
    CLI_OPT_THREADS, CLI_OPT_GRAD_CHECKPOINT
};
#define CLI_TRAIN_OPTIONS                                                                                             \
    {"steps", required_argument, 0, CLI_OPT_STEPS}, {"batch", required_argument, 0, CLI_OPT_BATCH},                   \
    {"ctx", required_argument, 0, CLI_OPT_CTX}, {"lr", required_argument, 0, CLI_OPT_LR},                             \
    {"warmup", required_argument, 0, CLI_OPT_WARMUP}, {"clip", required_argument, 0, CLI_OPT_CLIP},                   \
    {"weight-decay", required_argument, 0, CLI_OPT_WEIGHT_DECAY},                                                     \
    {"grad-accum", required_argument, 0, CLI_OPT_GRAD_ACCUM}, {"seed", required_argument, 0, CLI_OPT_SEED},           \
    {"eval-every", required_argument, 0, CLI_OPT_EVAL_EVERY},                                                         \
    {"eval-windows", required_argument, 0, CLI_OPT_EVAL_WINDOWS},                                                     \
    {"save-every", required_argument, 0, CLI_OPT_SAVE_EVERY}, {"checkpoint", required_argument, 0, CLI_OPT_CHECKPOINT}, \
    {"resume", required_argument, 0, CLI_OPT_RESUME}, {"stop-after", required_argument, 0, CLI_OPT_STOP_AFTER},       \
    {"log-json", required_argument, 0, CLI_OPT_LOG_JSON}, {"plot", required_argument, 0, CLI_OPT_PLOT},             \
    {"data", required_argument, 0, CLI_OPT_DATA}, {"eval", required_argument, 0, CLI_OPT_EVAL},                       \
    {"tokenizer", required_argument, 0, CLI_OPT_TOKENIZER}, {"threads", required_argument, 0, CLI_OPT_THREADS},  \
    {"grad-checkpoint", no_argument, 0, CLI_OPT_GRAD_CHECKPOINT}

/* The defaults (qtc_train_defaults(200), learning rate lr, 64 evaluation windows). */
cli_train_flags cli_train_flags_defaults(float lr);
/* Takes option c with its argument if it is a training flag: returns 1 then
 * (a bad value exits through cli_usage), 0 for any other option. */
int cli_train_flag(cli_train_flags *f, int c, const char *arg);

/* --threads N: a positive number (exits through cli_usage otherwise). */
int cli_threads(const char *arg);

/* The training reporter: the progress line (rewritten in place on a
 * terminal, every 10th step otherwise), --log-json events, evaluation every
 * --eval-every steps, checkpoints every --save-every steps and at
 * --stop-after, and the curves for --plot. Its on_step is qtc_train's
 * callback. */
typedef struct cli_trainer {
    qtc_train_opts o;           /* the finished flags' schedule, batches and steps */
    int64_t steps, eval_every, save_every, stop_after;
    const char *plot;           /* --plot, or NULL */
    FILE *log;                  /* --log-json, or NULL */
    char ckpt[QTC_PATH_MAX];    /* the checkpoint file, or "" */
    /* what an evaluation scores: model on eval (ctx, windows), against ref
     * when not NULL (KLD, top-1); the curve shows the KLD when judge_kld */
    qtc_llama *model, *ref;
    qtc_tokens data, eval;      /* the training and evaluation text, owned (none: n == 0) */
    qtc_tokenizer *tok;         /* theirs, owned (NULL without text) */
    int ctx, eval_windows, judge_kld;
    /* writes a checkpoint of the run to path after step */
    qtc_status (*save)(void *ctx, const char *path, int64_t step, qtc_error *err);
    void *save_ctx;
    /* called first on every step, with the step just taken (may be NULL) */
    void (*stepped)(void *ctx, int64_t step);
    void *stepped_ctx;
    /* curves for --plot: the loss per step (NaN before a resumed step), the evaluations */
    double *step_x, *step_loss, *eval_x, *eval_y;
    int n_evals, cap_evals;
} cli_trainer;

/* After parsing: finishes the flags (the warmup default, the schedule's
 * length), sets t up from them (steps, cadences, ctx, evaluation windows)
 * and the threads. */
void cli_trainer_init(cli_trainer *t, cli_train_flags *f);
/* The tokenizer (--tokenizer, else the model's own) when there is text to
 * read, --data into t->data and --eval into t->eval. */
qtc_status cli_trainer_load_text(cli_trainer *t, const cli_train_flags *f, const qtc_model_file *src, qtc_error *err);
/* Opens --log-json; returns an exit code (0: fine), having printed why. */
int cli_trainer_open_log(cli_trainer *t, const char *path);
/* The checkpoint file of the run when it saves one (--save-every,
 * --stop-after or --checkpoint given), next to out by default. */
qtc_status cli_trainer_checkpoint_path(cli_trainer *t, const cli_train_flags *f, const char *out, qtc_error *err);
/* Continues from --resume DIR through load (which fills *first_step);
 * returns an exit code (0: fine; resumed or nothing to resume), printed. */
int cli_trainer_resume(cli_trainer *t, const char *dir,
                       qtc_status (*load)(void *ctx, const char *path, int64_t *first_step, qtc_error *err), void *ctx,
                       int64_t *first_step);
/* The whole run after setup: an evaluation at first_step (a line on
 * standard error, an event in the log, a point of the curve; nothing without
 * eval data), qtc_train on t->data reporting each step, the stop at
 * --stop-after (*stopped = 1, the line telling how to continue printed), the
 * last evaluation and the chart into --plot (title, the evaluations' series
 * named eval_name). Returns an exit code, the error printed. */
int cli_trainer_run(cli_trainer *t, qtc_adamw *opt, qtc_tensor *const *params, int n_params, int64_t first_step,
                    qtc_loss_fn loss, void *loss_ctx, const char *title, const char *eval_name, int *stopped);
void cli_trainer_free(cli_trainer *t);

/* 0 when --ctx fits the model's context; else 1, with the error printed. */
int cli_check_ctx(int ctx, const qtc_llama_config *c);

#endif
