/* cli.c: what every tool's main() shares; see cli.h. */
#include "cli.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qtc/plot.h"
#include "qtc/runtime.h"

static const char *tool_name = "qtc";
static const char *tool_usage = "";

void cli_process_setup(char **argv)
{
    if (getenv("OMP_WAIT_POLICY"))
        return;
    if (setenv("OMP_WAIT_POLICY", "PASSIVE", 1) != 0)
        return;
    execv("/proc/self/exe", argv); /* returns only on failure */
}

void cli_init(const char *tool, const char *usage, char **argv)
{
    tool_name = tool;
    tool_usage = usage;
    cli_process_setup(argv);
}

void cli_usage(const char *msg)
{
    fprintf(stderr, "%s: %s\n%s", tool_name, msg, tool_usage);
    exit(1);
}

int cli_fail(const qtc_error *err)
{
    fprintf(stderr, "%s: error: %s\n", tool_name, err->msg);
    return qtc_exit_code(err->code);
}

static void say(const char *what, const char *fmt, va_list ap)
{
    fprintf(stderr, "%s: %s", tool_name, what);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

int cli_error(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    say("error: ", fmt, ap);
    va_end(ap);
    return code;
}

void cli_note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    say("", fmt, ap);
    va_end(ap);
}

int cli_threads(const char *arg)
{
    int n = atoi(arg);
    if (n <= 0)
        cli_usage("--threads takes a positive number");
    return n;
}

cli_train_flags cli_train_flags_defaults(float lr)
{
    cli_train_flags f;
    memset(&f, 0, sizeof f);
    f.o = qtc_train_defaults(200);
    f.o.lr.lr = lr;
    f.o.lr.warmup = -1;
    f.eval_windows = 64;
    return f;
}

/* A positive count, or exit with "--flag takes a positive number". */
static int64_t positive(const char *arg, const char *flag)
{
    char *end;
    long long v = strtoll(arg, &end, 10);
    if (*end || v < 1) {
        char msg[96];
        snprintf(msg, sizeof msg, "%s takes a positive number", flag);
        cli_usage(msg);
    }
    return v;
}

int cli_train_flag(cli_train_flags *f, int c, const char *arg)
{
    char *end = NULL;
    qtc_train_opts *o = &f->o;
    switch (c) {
    case CLI_OPT_STEPS: o->steps = positive(arg, "--steps"); break;
    case CLI_OPT_BATCH: o->batch = (int)positive(arg, "--batch"); break;
    case CLI_OPT_CTX: o->ctx = (int)strtol(arg, &end, 10); if (*end || o->ctx < 2) cli_usage("--ctx takes a number of at least 2"); break;
    case CLI_OPT_LR: o->lr.lr = strtof(arg, &end); if (*end || !(o->lr.lr > 0)) cli_usage("--lr takes a positive number"); break;
    case CLI_OPT_WARMUP: o->lr.warmup = strtoll(arg, &end, 10); if (*end || o->lr.warmup < 0) cli_usage("--warmup takes a number"); break;
    case CLI_OPT_CLIP: o->clip = strtof(arg, &end); if (*end) cli_usage("--clip takes a number"); break;
    case CLI_OPT_WEIGHT_DECAY: f->weight_decay = strtof(arg, &end); if (*end || f->weight_decay < 0) cli_usage("--weight-decay takes a number"); break;
    case CLI_OPT_GRAD_ACCUM: o->grad_accum = (int)positive(arg, "--grad-accum"); break;
    case CLI_OPT_SEED: o->seed = strtoull(arg, &end, 10); if (*end) cli_usage("--seed takes a number"); break;
    case CLI_OPT_EVAL_EVERY: f->eval_every = positive(arg, "--eval-every"); break;
    case CLI_OPT_EVAL_WINDOWS: f->eval_windows = (int)positive(arg, "--eval-windows"); break;
    case CLI_OPT_SAVE_EVERY: f->save_every = positive(arg, "--save-every"); break;
    case CLI_OPT_CHECKPOINT: f->checkpoint = arg; break;
    case CLI_OPT_RESUME: f->resume = arg; break;
    case CLI_OPT_STOP_AFTER: f->stop_after = positive(arg, "--stop-after"); break;
    case CLI_OPT_LOG_JSON: f->log_json = arg; break;
    case CLI_OPT_PLOT: f->plot = arg; break;
    case CLI_OPT_DATA: f->data = arg; break;
    case CLI_OPT_EVAL: f->eval = arg; break;
    case CLI_OPT_TOKENIZER: f->tokenizer = arg; break;
    case CLI_OPT_THREADS: f->threads = cli_threads(arg); break;
    case CLI_OPT_GRAD_CHECKPOINT: f->grad_checkpoint = 1; break;
    default: return 0;
    }
    return 1;
}

void cli_trainer_init(cli_trainer *t, cli_train_flags *f)
{
    if (f->o.lr.warmup < 0)
        f->o.lr.warmup = f->o.steps / 10;
    f->o.lr.total = f->o.steps;
    memset(t, 0, sizeof *t);
    t->o = f->o;
    t->plot = f->plot;
    t->steps = f->o.steps;
    t->eval_every = f->eval_every;
    t->save_every = f->save_every;
    t->stop_after = f->stop_after;
    t->ctx = f->o.ctx;
    t->eval_windows = f->eval_windows;
    qtc_set_threads(f->threads);
}

qtc_status cli_trainer_load_text(cli_trainer *t, const cli_train_flags *f, const qtc_model_file *src, qtc_error *err)
{
    if (!f->data && !f->eval)
        return QTC_OK;
    const int vocab = src->config.vocab;
    if (!(t->tok = f->tokenizer ? qtc_tokenizer_load(f->tokenizer, vocab, err) : qtc_tokenizer_for_model(src, err)))
        return err->code;
    if ((f->data && qtc_tokens_load(t->tok, f->data, vocab, &t->data, err) != QTC_OK) ||
        (f->eval && qtc_tokens_load(t->tok, f->eval, vocab, &t->eval, err) != QTC_OK))
        return err->code;
    return QTC_OK;
}

int cli_trainer_open_log(cli_trainer *t, const char *path)
{
    if (path && !(t->log = fopen(path, "w")))
        return cli_error(3, "%s: cannot open for writing", path);
    return 0;
}

qtc_status cli_trainer_checkpoint_path(cli_trainer *t, const cli_train_flags *f, const char *out, qtc_error *err)
{
    if (!f->save_every && !f->stop_after && !f->checkpoint)
        return QTC_OK;
    return qtc_checkpoint_path(f->checkpoint, out, 1, t->ckpt, sizeof t->ckpt, err);
}

int cli_trainer_resume(cli_trainer *t, const char *dir,
                       qtc_status (*load)(void *ctx, const char *path, int64_t *first_step, qtc_error *err), void *ctx,
                       int64_t *first_step)
{
    *first_step = 0;
    if (!dir)
        return 0;
    char path[QTC_PATH_MAX];
    qtc_error err;
    if (qtc_checkpoint_path(dir, NULL, 0, path, sizeof path, &err) != QTC_OK || load(ctx, path, first_step, &err) != QTC_OK)
        return cli_fail(&err);
    cli_note("resuming %s after step %lld", path, (long long)*first_step);
    if (*first_step >= t->steps)
        return cli_error(1, "the checkpoint is at step %lld, --steps is %lld", (long long)*first_step, (long long)t->steps);
    return 0;
}

static int cli_trainer_evaluate(cli_trainer *t, int64_t step, qtc_error *err)
{
    if (!t->eval.n)
        return 0;
    qtc_eval_result r;
    if (qtc_eval(t->model, t->ref, &t->eval, t->ctx, 8, t->eval_windows, NULL, NULL, &r, err) != QTC_OK)
        return 1;
    if (t->n_evals == t->cap_evals) {
        int cap = t->cap_evals ? 2 * t->cap_evals : 64;
        double *x = realloc(t->eval_x, (size_t)cap * sizeof *x), *y = x ? realloc(t->eval_y, (size_t)cap * sizeof *y) : NULL;
        if (x)
            t->eval_x = x;
        if (!x || !y) {
            qtc_error_set(err, QTC_ERR_IO, "out of memory");
            return 1;
        }
        t->eval_y = y;
        t->cap_evals = cap;
    }
    t->eval_x[t->n_evals] = (double)step; /* distillation is judged by KLD, cross-entropy by the loss */
    t->eval_y[t->n_evals++] = t->judge_kld ? r.kld : r.nll;
    if (t->ref) {
        cli_note("step %lld eval: loss %.4f, perplexity %.4f (float %.4f), KLD %.5f, top-1 %.2f%%", (long long)step, r.nll,
                 r.ppl, r.ref_ppl, r.kld, 100 * r.top1);
        if (t->log)
            fprintf(t->log, "{\"event\":\"eval\",\"step\":%lld,\"loss\":%.6f,\"ppl\":%.6f,\"ref_ppl\":%.6f,\"kld\":%.6f,\"top1\":%.6f}\n",
                    (long long)step, r.nll, r.ppl, r.ref_ppl, r.kld, r.top1);
    } else {
        cli_note("step %lld eval: loss %.4f, perplexity %.4f over %lld predictions", (long long)step, r.nll, r.ppl,
                 (long long)r.predictions);
        if (t->log)
            fprintf(t->log, "{\"event\":\"eval\",\"step\":%lld,\"loss\":%.6f,\"ppl\":%.6f}\n", (long long)step, r.nll, r.ppl);
    }
    return 0;
}

static void cli_trainer_want_plot(cli_trainer *t)
{
    if (!t->plot)
        return;
    t->step_x = calloc((size_t)t->steps, sizeof *t->step_x);
    t->step_loss = malloc((size_t)t->steps * sizeof *t->step_loss);
    for (int64_t k = 0; t->step_loss && k < t->steps; k++)
        t->step_loss[k] = NAN; /* steps before a resume are not drawn */
}

static int cli_trainer_on_step(void *ctx, const qtc_train_event *ev, qtc_error *err)
{
    cli_trainer *t = ctx;
    if (t->stepped)
        t->stepped(t->stepped_ctx, ev->step);
    if (t->step_loss && t->step_x) {
        t->step_x[ev->step - 1] = (double)ev->step;
        t->step_loss[ev->step - 1] = ev->loss;
    }
    char line[256];
    int tty = isatty(STDERR_FILENO);
    qtc_train_event_text(ev, t->steps, line, sizeof line);
    if (tty || ev->step % 10 == 0 || ev->step == t->steps)
        fprintf(stderr, "%s%s: %s%s", tty ? "\r" : "", tool_name, line, tty && ev->step < t->steps ? "" : "\n");
    qtc_train_event_json(ev, line, sizeof line);
    if (t->log)
        fprintf(t->log, "%s\n", line);
    int stop = t->stop_after > 0 && ev->step >= t->stop_after && ev->step < t->steps;
    if (t->ckpt[0] && ((t->save_every > 0 && ev->step % t->save_every == 0) || stop)) {
        if (t->save(t->save_ctx, t->ckpt, ev->step, err) != QTC_OK)
            return 1;
        cli_note("step %lld: checkpoint %s", (long long)ev->step, t->ckpt);
    }
    if (stop)
        return 1;
    if (t->eval_every > 0 && ev->step % t->eval_every == 0 && ev->step < t->steps)
        return cli_trainer_evaluate(t, ev->step, err);
    return 0;
}

static int cli_trainer_stopped(const cli_trainer *t)
{
    if (!(t->stop_after > 0 && t->stop_after < t->steps))
        return 0;
    cli_note("stopped after step %lld; continue with --resume %.*s", (long long)t->stop_after,
             (int)(strlen(t->ckpt) - strlen("/checkpoint.safetensors")), t->ckpt);
    return 1;
}

static qtc_status cli_trainer_plot(const cli_trainer *t, const char *title, const char *eval_name, qtc_error *err)
{
    if (!t->plot || !t->step_loss || !t->step_x)
        return QTC_OK;
    qtc_plot_series series[2] = {{"training loss", t->step_x, t->step_loss, (int)t->steps},
                                 {eval_name, t->eval_x, t->eval_y, t->n_evals}};
    return qtc_plot_svg(t->plot, title, "step", series, t->n_evals ? 2 : 1, err);
}

int cli_trainer_run(cli_trainer *t, qtc_adamw *opt, qtc_tensor *const *params, int n_params, int64_t first_step,
                    qtc_loss_fn loss, void *loss_ctx, const char *title, const char *eval_name, int *stopped)
{
    qtc_error err;
    *stopped = 0;
    if (cli_trainer_evaluate(t, first_step, &err))
        return cli_fail(&err);
    cli_trainer_want_plot(t);
    if (qtc_train(&t->o, opt, params, n_params, &t->data, first_step, loss, loss_ctx, cli_trainer_on_step, t, &err) != QTC_OK)
        return cli_fail(&err);
    if ((*stopped = cli_trainer_stopped(t)))
        return 0;
    if (cli_trainer_evaluate(t, t->o.steps, &err) || cli_trainer_plot(t, title, eval_name, &err) != QTC_OK)
        return cli_fail(&err);
    return 0;
}

int cli_check_ctx(int ctx, const qtc_llama_config *c)
{
    if (ctx > c->ctx)
        return cli_error(1, "--ctx %d is larger than the model's context of %d", ctx, c->ctx);
    return 0;
}

void cli_trainer_free(cli_trainer *t)
{
    free(t->step_x);
    free(t->step_loss);
    free(t->eval_x);
    free(t->eval_y);
    qtc_tokens_free(&t->eval);
    qtc_tokens_free(&t->data);
    qtc_tokenizer_free(t->tok);
    t->tok = NULL;
    if (t->log)
        fclose(t->log);
    t->log = NULL;
}
