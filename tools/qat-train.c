/* qat-train: quantization-aware training, or plain full / frozen-layer
 * fine-tuning with --wbits 32.
 *
 *   qat-train MODEL --data train.txt [--eval eval.txt] [--wbits 4 --group 32 --sym|--asym]
 *             [--distill|--ce] [--steps N --batch B --ctx T --lr LR] [--freeze RE] [--train RE]
 *             -o OUT [--to TYPE]
 *
 * The forward sees every linear layer's weight fake-quantized (min-max scales
 * per group, recomputed each step, gradients straight through); the loss is
 * the KL divergence from the float model (LLM-QAT's distillation, the default
 * when quantizing) or cross-entropy on the next token. The output is written
 * through qtc_convert in the trained scheme (or --to), so its dequantized
 * weights equal the fake-quantized weights of the trained model bit for bit. */
#include <getopt.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qtc/calibrate.h"
#include "qtc/qat.h"
#include "qtc/plot.h"
#include "qtc/runtime.h"
#include "qtc/train.h"

#include "cli.h"

static const char *usage_text =
    "usage: qat-train MODEL --data FILE -o OUT [options]\n"
    "\n"
    "  --data FILE        training text (or a qtc token file)\n"
    "  --data-free N      no data: the float model generates N tokens of training text itself,\n"
    "                     sequences of --ctx + 1 from BOS sampled at temperature 1 (LLM-QAT)\n"
    "  --eval FILE        evaluation text: loss, perplexity and KLD against the float model\n"
    "  --wbits B          weight bits: 2..8 fake-quantized, 32 for plain fine-tuning (default 4)\n"
    "  --group G          group size along the input (default 32; 0 per channel, -1 per tensor)\n"
    "  --sym | --asym     symmetric (default) or asymmetric integer grid\n"
    "  --abits 8          also fake-quantize the linear layers' inputs to int8: per tensor with\n"
    "                     ranges from a moving-average min/max observer (constant 0.01), frozen\n"
    "                     after --observer-steps N (default: never), or per token (--act-per-token)\n"
    "  --calib FILE       with --abits 8: the inputs' ranges from a qcalib calibration file, fixed\n"
    "  --lsq              learn the weights' scales (and zero points) with LSQ's gradients; they are\n"
    "                     exported as learned (not with --save-every/--resume yet)\n"
    "  --distill | --ce   loss: KL divergence from the float model (default when quantizing) or\n"
    "                     cross-entropy on the next token (default for --wbits 32)\n"
    "  --steps N --batch B --ctx T --lr LR --warmup W --clip C --weight-decay D --grad-accum K --seed S\n"
    "                     (defaults 200, 8, 128, 5e-4, steps/10, 1.0, 0.0, 1, 0)\n"
    "  --freeze RE        freeze parameters whose HF name matches RE (repeatable)\n"
    "  --train RE         train only parameters matching RE (repeatable; applied before --freeze)\n"
    "  --eval-every N     evaluate every N steps (default: at the start and the end)\n"
    "  --eval-windows N   windows of --ctx scored per evaluation (default 64)\n"
    "  --save-every N     write a checkpoint every N steps (weights, AdamW moments, step) into\n"
    "                     --checkpoint DIR (default OUT.ckpt)\n"
    "  --resume DIR       continue the run saved in DIR: the same options give the same weights as\n"
    "                     an uninterrupted run\n"
    "  --stop-after N     stop after step N with a checkpoint (to continue later with --resume)\n"
    "  -o OUT             output model; --to TYPE its storage (default: the trained scheme,\n"
    "                     f32 for --wbits 32); --format safetensors|gguf|hf\n"
    "  --plot FILE.svg    the training loss and the evaluations as a chart\n"
    "  --tokenizer FILE   tokenizer for the text files; --log-json FILE events; --threads N\n"
    "\n"
    "Exit status: 0 done, 1 usage, 2 bad input, 3 I/O, 4 numerical failure (NaN or divergence).\n";

/* The running range of one linear layer's input (PyTorch's moving-average
 * min/max observer), and the scale and zero point it gives. */
typedef struct act_observer {
    float min, max;
    int seen;
    qtc_tensor *scale, *zero; /* one value each, not trained */
} act_observer;

typedef struct qat {
    int quantize;
    int lsq;                  /* learnable scales (and zero points) per linear weight */
    qtc_tensor **lsq_scale, **lsq_zero; /* n_layers * 7 */
    int abits, act_per_token;
    int64_t observer_steps, step;
    int observing;            /* set while the training forward runs */
    int calibrated;           /* the ranges came from a calibration file and stay */
    act_observer *obs;        /* n_layers * 7 */
    const qtc_model_file *src;
    qtc_adamw *opt;
    char ckpt[4200];      /* the checkpoint file, or "" */
    int64_t save_every, stop_after;
    qtc_qscheme scheme;
    qtc_llama *student, *teacher;
    int distill;
    qtc_graph *tg;         /* the teacher's graph */
    FILE *log;
    qtc_tokens eval;
    int eval_windows, ctx;
    int64_t steps;
    /* curves for --plot: training loss per step, evaluations */
    double *step_x, *step_loss, eval_x[256], eval_y[256];
    int n_evals;
} qat;

/* The QAT linear layer: y = x fq(W)^T for the layers' projections; the output
 * head stays in float (as compressed-tensors ignores lm_head). */
/* Fake-quantizes a linear layer's input x to int8 (see --abits). */
static qtc_tensor *fq_input(qat *q, qtc_graph *g, qtc_tensor *x, int layer, qtc_linear_kind kind)
{
    qtc_qscheme a = {QTC_QK_INT, q->abits, q->act_per_token ? 0 : -1, 0, 0};
    if (q->act_per_token) /* dynamic: each token's own range */
        return qtc_fake_quant(g, x, &a, NULL, NULL, 0);
    act_observer *o = &q->obs[layer * 7 + (int)kind];
    if (q->observing && !q->calibrated && (q->observer_steps <= 0 || q->step < q->observer_steps)) {
        const float *v = x->data;
        float lo = v[0], hi = v[0];
        for (int64_t i = 1; i < qtc_tensor_numel(x); i++) {
            lo = fminf(lo, v[i]);
            hi = fmaxf(hi, v[i]);
        }
        o->min = o->seen ? o->min + 0.01f * (lo - o->min) : lo;
        o->max = o->seen ? o->max + 0.01f * (hi - o->max) : hi;
        o->seen = 1;
    }
    float range[2] = {o->min, o->max};
    int z;
    qtc_int_qparams(range, 2, q->abits, 0, (float *)o->scale->data, &z);
    ((float *)o->zero->data)[0] = (float)z;
    return qtc_fake_quant(g, x, &a, o->scale, o->zero, 0);
}

static qtc_tensor *fq_linear(void *ctx, qtc_graph *g, qtc_tensor *x, qtc_tensor *w, int layer, qtc_linear_kind kind)
{
    qat *q = ctx;
    if (kind == QTC_LIN_OUTPUT || !q->quantize)
        return qtc_matmul(g, x, w, 0, 1);
    if (q->abits && x)
        x = fq_input(q, g, x, layer, kind);
    if (q->lsq) {
        int k = layer * 7 + (int)kind;
        return qtc_matmul(g, x, qtc_fake_quant(g, w, &q->scheme, q->lsq_scale[k], q->lsq_zero[k], 0), 0, 1);
    }
    qtc_tensor *wq = q->scheme.kind == QTC_QK_NF4 ? qtc_fake_quant_nf4(g, w, &q->scheme) : qtc_fake_quant(g, w, &q->scheme, NULL, NULL, 0);
    return qtc_matmul(g, x, wq, 0, 1);
}

/* The learned scales of a weight, for the export (see qtc_convert_hooks). */
static int lsq_qweight(void *ctx, const char *name, const qtc_qscheme *s, qtc_qweight *out, qtc_error *err)
{
    qat *q = ctx;
    static const char *kinds[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
    for (int l = 0; l < q->student->c.n_layers; l++)
        for (int k = 0; k < 7; k++) {
            char want[QTC_NAME_MAX];
            snprintf(want, sizeof want, "model.layers.%d.%s.weight", l, kinds[k]);
            if (strcmp(want, name) != 0)
                continue;
            if (memcmp(s, &q->scheme, sizeof *s) != 0)
                return 0; /* exported in another scheme: quantized afresh */
            const qtc_llama_layer *L = &q->student->layers[l];
            qtc_tensor *ws[7] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
            qtc_tensor *sc = q->lsq_scale[l * 7 + k], *zp = q->lsq_zero[l * 7 + k];
            return qtc_qweight_quantize_with(ws[k]->data, ws[k]->ne[0], ws[k]->ne[1], s, sc->data, zp ? zp->data : NULL, out, err) == QTC_OK
                       ? 1
                       : -1;
        }
    return 0;
}

static qtc_tensor *loss_fn(void *ctx, qtc_graph *g, const qtc_tensor *tokens, const qtc_tensor *targets)
{
    qat *q = ctx;
    q->observing = 1;
    qtc_tensor *logits = qtc_llama_forward(q->student, g, tokens, 0);
    q->observing = 0;
    if (!q->distill)
        return qtc_cross_entropy(g, logits, targets);
    qtc_graph_reset(q->tg);
    qtc_graph_set_recording(q->tg, 0);
    qtc_tensor *ref = qtc_llama_forward(q->teacher, q->tg, tokens, 0);
    return qtc_kl_div(g, logits, ref);
}

static int evaluate(qat *q, int64_t step, qtc_error *err)
{
    if (!q->eval.n)
        return 0;
    qtc_eval_result r;
    if (qtc_eval(q->student, q->teacher, &q->eval, q->ctx, 8, q->eval_windows, NULL, NULL, &r, err) != QTC_OK)
        return 1;
    if (q->n_evals < 256) { /* distillation is judged by KLD, cross-entropy by the loss */
        q->eval_x[q->n_evals] = (double)step;
        q->eval_y[q->n_evals++] = q->distill ? r.kld : r.nll;
    }
    fprintf(stderr, "qat-train: step %lld eval: loss %.4f, perplexity %.4f (float %.4f), KLD %.5f, top-1 %.2f%%\n",
            (long long)step, r.nll, r.ppl, r.ref_ppl, r.kld, 100 * r.top1);
    if (q->log)
        fprintf(q->log, "{\"event\":\"eval\",\"step\":%lld,\"loss\":%.6f,\"ppl\":%.6f,\"ref_ppl\":%.6f,\"kld\":%.6f,\"top1\":%.6f}\n",
                (long long)step, r.nll, r.ppl, r.ref_ppl, r.kld, r.top1);
    return 0;
}

typedef struct progress {
    qat *q;
    int64_t eval_every;
} progress;

static int on_step(void *ctx, const qtc_train_event *ev, qtc_error *err)
{
    progress *p = ctx;
    p->q->step = ev->step;
    if (p->q->step_loss) {
        p->q->step_x[ev->step - 1] = (double)ev->step;
        p->q->step_loss[ev->step - 1] = ev->loss;
    }
    char line[256];
    int tty = isatty(STDERR_FILENO);
    qtc_train_event_text(ev, p->q->steps, line, sizeof line);
    if (tty || ev->step % 10 == 0 || ev->step == p->q->steps)
        fprintf(stderr, "%sqat-train: %s%s", tty ? "\r" : "", line, tty && ev->step < p->q->steps ? "" : "\n");
    qtc_train_event_json(ev, line, sizeof line);
    if (p->q->log)
        fprintf(p->q->log, "%s\n", line);
    qat *q = p->q;
    int stop = q->stop_after > 0 && ev->step >= q->stop_after && ev->step < q->steps;
    if (q->ckpt[0] && ((q->save_every > 0 && ev->step % q->save_every == 0) || stop)) {
        if (qtc_checkpoint_save(q->ckpt, q->src, q->student, q->opt, ev->step, err) != QTC_OK)
            return 1;
        fprintf(stderr, "qat-train: step %lld: checkpoint %s\n", (long long)ev->step, q->ckpt);
    }
    if (stop)
        return 1;
    if (p->eval_every > 0 && ev->step % p->eval_every == 0 && ev->step < q->steps)
        return evaluate(q, ev->step, err);
    return 0;
}

/* Writes the trained weights as the source model's twin (f32), then converts. */
static int save(const qtc_model_file *src, qtc_llama *m, const char *out, qtc_format fmt, int compress,
                const qtc_target *to, const qtc_convert_hooks *hooks, qtc_error *err)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s/qat-trained-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    int fd = mkstemp(tmp);
    if (fd < 0) {
        qtc_error_set(err, QTC_ERR_IO, "%s: cannot create a temporary file", tmp);
        return cli_fail(err);
    }
    close(fd);
    qtc_tensor *ps[256];
    int n = qtc_llama_params(m, ps, 256);
    qtc_out_entry *e = calloc((size_t)n, sizeof *e);
    for (int i = 0; i < n; i++) {
        qtc_llama_param_name(m, i, e[i].name, sizeof e[i].name);
        e[i].dtype = QTC_F32;
        e[i].ndim = ps[i]->ndim;
        memcpy(e[i].ne, ps[i]->ne, sizeof e[i].ne);
    }
    int rc = 0;
    qtc_model_writer *w = qtc_writer_open(tmp, QTC_FMT_SAFETENSORS, 0, src, e, n, NULL, err);
    for (int i = 0; w && i < n && !rc; i++)
        if (qtc_writer_put(w, i, ps[i], err) != QTC_OK)
            rc = 1;
    if (!w || rc || qtc_writer_commit(w, err) != QTC_OK) {
        if (w && rc)
            qtc_writer_abort(w);
        free(e);
        unlink(tmp);
        return cli_fail(err);
    }
    free(e);
    qtc_model_file *t = qtc_model_open(tmp, err);
    if (t && src->tokenizer_bin && !t->tokenizer_bin)
        t->tokenizer_bin = strdup(src->tokenizer_bin);
    qtc_convert_summary s;
    rc = t && qtc_convert(t, out, fmt, compress, to, NULL, 0, hooks, &s, err) == QTC_OK ? 0 : cli_fail(err);
    if (!rc)
        fprintf(stderr, "qat-train: wrote %s: %.3f bits per weight, weights' rel rms err %.3e against the trained floats\n",
                out, s.bits_per_weight, s.rel_rms_err);
    qtc_model_close(t);
    unlink(tmp);
    return rc;
}

int main(int argc, char **argv)
{
    cli_init("qat-train", usage_text, argv);
    static const struct option opts[] = {
        {"data", required_argument, 0, 'd'},     {"eval", required_argument, 0, 'e'},
        {"wbits", required_argument, 0, 'b'},    {"group", required_argument, 0, 'g'},
        {"sym", no_argument, 0, 'S'},            {"asym", no_argument, 0, 'A'},
        {"distill", no_argument, 0, 'D'},        {"ce", no_argument, 0, 'C'},
        {"steps", required_argument, 0, 'n'},    {"batch", required_argument, 0, 'B'},
        {"ctx", required_argument, 0, 'T'},      {"lr", required_argument, 0, 'l'},
        {"warmup", required_argument, 0, 'w'},   {"clip", required_argument, 0, 'c'},
        {"weight-decay", required_argument, 0, 'W'}, {"grad-accum", required_argument, 0, 'a'},
        {"seed", required_argument, 0, 's'},     {"freeze", required_argument, 0, 'F'},
        {"train", required_argument, 0, 'R'},    {"eval-every", required_argument, 0, 'E'},
        {"eval-windows", required_argument, 0, 'V'}, {"to", required_argument, 0, 't'},
        {"format", required_argument, 0, 'f'},   {"tokenizer", required_argument, 0, 'k'},
        {"log-json", required_argument, 0, 'L'}, {"threads", required_argument, 0, 'j'},
        {"output", required_argument, 0, 'o'},   {"help", no_argument, 0, 'h'},
        {"save-every", required_argument, 0, 'v'}, {"checkpoint", required_argument, 0, 'K'},
        {"resume", required_argument, 0, 'r'},   {"stop-after", required_argument, 0, 'P'},
        {"data-free", required_argument, 0, 'G'}, {"plot", required_argument, 0, 'p'},
        {"abits", required_argument, 0, 'x'},    {"act-per-token", no_argument, 0, 'X'},
        {"observer-steps", required_argument, 0, 'O'}, {"lsq", no_argument, 0, 'Q'},
        {"calib", required_argument, 0, 'y'},
        {0, 0, 0, 0}};
    const char *data_path = NULL, *eval_path = NULL, *out = NULL, *to_name = NULL, *tokenizer = NULL, *log_path = NULL;
    const char *ckpt_dir = NULL, *resume = NULL, *plot = NULL, *calib = NULL;
    int wbits = 4, group = 32, sym = 1, loss_kind = -1, threads = 0, n_freeze = 0, n_train = 0;
    int64_t eval_every = 0, data_free = 0;
    qtc_format fmt = QTC_FMT_UNKNOWN;
    regex_t freeze[32], train[32];
    qtc_train_opts o = qtc_train_defaults(200);
    o.lr.lr = 5e-4f;
    o.lr.warmup = -1;
    float weight_decay = 0;
    qat q;
    memset(&q, 0, sizeof q);
    q.eval_windows = 64;
    int c;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        char *end = NULL;
        switch (c) {
        case 'd': data_path = optarg; break;
        case 'e': eval_path = optarg; break;
        case 'b': wbits = (int)strtol(optarg, &end, 10); if (*end || !((wbits >= 2 && wbits <= 8) || wbits == 32)) cli_usage("--wbits is 2..8 or 32"); break;
        case 'g': group = (int)strtol(optarg, &end, 10); if (*end || group < -1) cli_usage("--group takes a size, 0 or -1"); break;
        case 'S': sym = 1; break;
        case 'A': sym = 0; break;
        case 'D': loss_kind = 1; break;
        case 'C': loss_kind = 0; break;
        case 'n': o.steps = strtoll(optarg, &end, 10); if (*end || o.steps < 1) cli_usage("--steps takes a positive number"); break;
        case 'B': o.batch = (int)strtol(optarg, &end, 10); if (*end || o.batch < 1) cli_usage("--batch takes a positive number"); break;
        case 'T': o.ctx = (int)strtol(optarg, &end, 10); if (*end || o.ctx < 2) cli_usage("--ctx takes a number of at least 2"); break;
        case 'l': o.lr.lr = strtof(optarg, &end); if (*end || !(o.lr.lr > 0)) cli_usage("--lr takes a positive number"); break;
        case 'w': o.lr.warmup = strtoll(optarg, &end, 10); if (*end || o.lr.warmup < 0) cli_usage("--warmup takes a number"); break;
        case 'c': o.clip = strtof(optarg, &end); if (*end) cli_usage("--clip takes a number"); break;
        case 'W': weight_decay = strtof(optarg, &end); if (*end || weight_decay < 0) cli_usage("--weight-decay takes a number"); break;
        case 'a': o.grad_accum = (int)strtol(optarg, &end, 10); if (*end || o.grad_accum < 1) cli_usage("--grad-accum takes a positive number"); break;
        case 's': o.seed = strtoull(optarg, &end, 10); if (*end) cli_usage("--seed takes a number"); break;
        case 'F':
        case 'R': {
            regex_t *re = c == 'F' ? &freeze[n_freeze] : &train[n_train];
            if ((c == 'F' ? n_freeze : n_train) == 32 || regcomp(re, optarg, REG_EXTENDED | REG_NOSUB) != 0)
                cli_usage("bad --freeze/--train pattern");
            if (c == 'F')
                n_freeze++;
            else
                n_train++;
            break;
        }
        case 'E': eval_every = strtoll(optarg, &end, 10); if (*end || eval_every < 1) cli_usage("--eval-every takes a positive number"); break;
        case 'V': q.eval_windows = (int)strtol(optarg, &end, 10); if (*end || q.eval_windows < 1) cli_usage("--eval-windows takes a positive number"); break;
        case 't': to_name = optarg; break;
        case 'f': fmt = qtc_format_from_name(optarg); if (fmt == QTC_FMT_UNKNOWN) cli_usage("--format is safetensors, gguf or hf"); break;
        case 'k': tokenizer = optarg; break;
        case 'L': log_path = optarg; break;
        case 'j': threads = atoi(optarg); if (threads <= 0) cli_usage("--threads takes a positive number"); break;
        case 'o': out = optarg; break;
        case 'p': plot = optarg; break;
        case 'x': q.abits = (int)strtol(optarg, &end, 10); if (*end || q.abits != 8) cli_usage("--abits is 8"); break;
        case 'X': q.act_per_token = 1; break;
        case 'Q': q.lsq = 1; break;
        case 'y': calib = optarg; break;
        case 'O': q.observer_steps = strtoll(optarg, &end, 10); if (*end || q.observer_steps < 1) cli_usage("--observer-steps takes a positive number"); break;
        case 'G': data_free = strtoll(optarg, &end, 10); if (*end || data_free < 1) cli_usage("--data-free takes a number of tokens"); break;
        case 'v': q.save_every = strtoll(optarg, &end, 10); if (*end || q.save_every < 1) cli_usage("--save-every takes a positive number"); break;
        case 'K': ckpt_dir = optarg; break;
        case 'r': resume = optarg; break;
        case 'P': q.stop_after = strtoll(optarg, &end, 10); if (*end || q.stop_after < 1) cli_usage("--stop-after takes a positive number"); break;
        case 'h': fputs(usage_text, stdout); return 0;
        default: cli_usage("bad option");
        }
    }
    if (optind != argc - 1)
        cli_usage(optind < argc ? "one model only" : "no model");
    if ((!data_path && !data_free) || (data_path && data_free) || !out)
        cli_usage("give --data FILE or --data-free N, and -o OUT");
    if (fmt == QTC_FMT_UNKNOWN)
        fmt = strcmp(out, "-") == 0 ? QTC_FMT_SAFETENSORS : qtc_format_from_path(out);
    if (fmt == QTC_FMT_UNKNOWN)
        cli_usage("cannot tell the output format from its name: use --format");
    q.quantize = wbits != 32;
    if (q.quantize) {
        q.scheme = (qtc_qscheme){QTC_QK_INT, wbits, group, sym, 0};
    }
    q.distill = loss_kind < 0 ? q.quantize : loss_kind;
    qtc_target to;
    if (to_name && qtc_target_parse(to_name, &to) != 0)
        cli_usage("unknown --to type");
    if (!to_name) {
        memset(&to, 0, sizeof to);
        to.is_scheme = q.quantize;
        to.scheme = q.scheme;
        to.dtype = QTC_F32;
    }
    if (to.is_scheme && fmt == QTC_FMT_GGUF)
        cli_usage("GGUF cannot hold integer or NF4 schemes: write safetensors or an HF folder, or give --to q4_0, q8_0, ...");
    if (o.lr.warmup < 0)
        o.lr.warmup = o.steps / 10;
    o.lr.total = o.steps;
    q.steps = o.steps;
    q.ctx = o.ctx;
    qtc_set_threads(threads);
    qtc_error err;
    int rc = 0;
    qtc_model_file *src = qtc_model_open(argv[optind], &err);
    qtc_tokenizer *tok = NULL;
    qtc_tokens data = {0};
    qtc_adamw *opt = NULL;
    if (!src || !(q.student = qtc_llama_from_model(src, &err)) ||
        ((q.distill || eval_path || data_free) && !(q.teacher = qtc_llama_from_model(src, &err)))) {
        rc = cli_fail(&err);
        goto done;
    }
    if (data_path || eval_path)
        tok = tokenizer ? qtc_tokenizer_load(tokenizer, src->config.vocab, &err) : qtc_tokenizer_for_model(src, &err);
    if ((data_path || eval_path) && !tok) {
        rc = cli_fail(&err);
        goto done;
    }
    if ((data_path && qtc_tokens_load(tok, data_path, src->config.vocab, &data, &err) != QTC_OK) ||
        (eval_path && qtc_tokens_load(tok, eval_path, src->config.vocab, &q.eval, &err) != QTC_OK)) {
        rc = cli_fail(&err);
        goto done;
    }
    if (data_free) { /* the teacher writes the training text: sequences of ctx + 1 from BOS */
        int len = o.ctx + 1 > src->config.ctx ? src->config.ctx : o.ctx + 1;
        int64_t seqs = (data_free + len - 1) / len;
        data.n = seqs * len;
        data.ids = malloc((size_t)data.n * sizeof *data.ids);
        qtc_rng gen;
        qtc_rng_seed(&gen, o.seed ^ 0x51ed27a1u);
        int bos = src->config.bos_id >= 0 ? src->config.bos_id : 1;
        for (int64_t k = 0; data.ids && k < seqs; k++)
            if (qtc_generate(q.teacher, bos, len, 1.0f, 1.0f, &gen, data.ids + k * len, &err) != QTC_OK) {
                rc = cli_fail(&err);
                goto done;
            }
        if (!data.ids) {
            fprintf(stderr, "qat-train: error: out of memory\n");
            rc = 3;
            goto done;
        }
        fprintf(stderr, "qat-train: the float model wrote %lld tokens of training data (%lld sequences)\n",
                (long long)data.n, (long long)seqs);
    }
    if (o.ctx > src->config.ctx) {
        fprintf(stderr, "qat-train: error: --ctx %d is larger than the model's context of %d\n", o.ctx, src->config.ctx);
        rc = 1;
        goto done;
    }
    if (log_path && !(q.log = fopen(log_path, "w"))) {
        fprintf(stderr, "qat-train: error: %s: cannot open for writing\n", log_path);
        rc = 3;
        goto done;
    }
    q.student->linear = fq_linear;
    q.student->linear_ctx = &q;
    if (q.abits && !q.quantize) {
        fprintf(stderr, "qat-train: error: --abits needs fake-quantized weights (--wbits 2..8)\n");
        rc = 1;
        goto done;
    }
    if (q.abits && !(q.obs = calloc((size_t)src->config.n_layers * 7, sizeof *q.obs))) {
        rc = 3;
        goto done;
    }
    for (int k = 0; q.obs && k < src->config.n_layers * 7; k++)
        if (!(q.obs[k].scale = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(1), &err)) ||
            !(q.obs[k].zero = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(1), &err))) {
            rc = cli_fail(&err);
            goto done;
        }
    if (calib) { /* static input ranges from qcalib, used as they are */
        qtc_act_qparams *ap = calloc((size_t)src->config.n_layers * 7, sizeof *ap);
        int bits = 0;
        if (!q.abits || q.act_per_token) {
            fprintf(stderr, "qat-train: error: --calib gives per-tensor input ranges: it needs --abits 8 (not --act-per-token)\n");
            free(ap);
            rc = 1;
            goto done;
        }
        if (!ap || qtc_calib_load_json(calib, src->config.n_layers, ap, &bits, &err) != QTC_OK || bits != q.abits) {
            if (ap && bits && bits != q.abits)
                qtc_error_set(&err, QTC_ERR_INPUT, "%s: ranges for %d-bit inputs, --abits is %d", calib, bits, q.abits);
            if (ap)
                qtc_act_qparams_free(ap, src->config.n_layers * 7);
            free(ap);
            rc = cli_fail(&err);
            goto done;
        }
        for (int k = 0; k < src->config.n_layers * 7; k++) {
            q.obs[k].min = ap[k].min;
            q.obs[k].max = ap[k].max;
            q.obs[k].seen = 1;
        }
        qtc_act_qparams_free(ap, src->config.n_layers * 7); /* per-tensor ranges only: channels unused */
        q.calibrated = 1;
        free(ap);
    }
    q.tg = qtc_graph_new(&err);
    qtc_tensor *params[1024];
    int np = qtc_llama_params(q.student, params, 256), n_trainable = 0;
    for (int i = 0; i < np; i++) {
        char name[QTC_NAME_MAX];
        qtc_llama_param_name(q.student, i, name, sizeof name);
        int on = n_train == 0;
        for (int k = 0; k < n_train; k++)
            on |= regexec(&train[k], name, 0, NULL, 0) == 0;
        for (int k = 0; k < n_freeze; k++)
            on &= regexec(&freeze[k], name, 0, NULL, 0) != 0;
        if (qtc_tensor_require_grad(params[i], &err) != QTC_OK) {
            rc = cli_fail(&err);
            goto done;
        }
        qtc_tensor_set_trainable(params[i], on);
        n_trainable += on;
    }
    if (!n_trainable) {
        fprintf(stderr, "qat-train: error: --train/--freeze leave no parameter to train\n");
        rc = 1;
        goto done;
    }
    int n_model = np;
    if (q.lsq) { /* the scales (and zero points) of every linear weight join the parameters */
        if (!q.quantize || q.scheme.kind != QTC_QK_INT || q.save_every || q.stop_after || resume) {
            fprintf(stderr, "qat-train: error: --lsq needs integer weights (--wbits 2..8) and no checkpoints yet\n");
            rc = 1;
            goto done;
        }
        int n_lin = src->config.n_layers * 7;
        q.lsq_scale = calloc((size_t)n_lin, sizeof *q.lsq_scale);
        q.lsq_zero = calloc((size_t)n_lin, sizeof *q.lsq_zero);
        for (int l = 0; l < src->config.n_layers; l++) {
            const qtc_llama_layer *L = &q.student->layers[l];
            qtc_tensor *ws[7] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
            for (int k = 0; k < 7; k++) {
                int64_t cols = ws[k]->ne[1], rows = ws[k]->ne[0];
                int64_t g = q.scheme.group > 0 ? q.scheme.group : cols;
                int64_t n = q.scheme.group < 0 ? 1 : rows * ((cols + g - 1) / g);
                qtc_tensor **sc = &q.lsq_scale[l * 7 + k], **zp = &q.lsq_zero[l * 7 + k];
                if (!(*sc = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(n), &err)) ||
                    (!q.scheme.symmetric && !(*zp = qtc_tensor_new(QTC_F32, 1, QTC_SHAPE(n), &err)))) {
                    rc = cli_fail(&err);
                    goto done;
                }
                qtc_fake_quant_init_params(ws[k], &q.scheme, *sc, *zp);
                qtc_tensor_require_grad(*sc, &err);
                params[np++] = *sc;
                if (*zp) {
                    qtc_tensor_require_grad(*zp, &err);
                    params[np++] = *zp;
                }
            }
        }
    }
    qtc_adamw_config cfg = qtc_adamw_defaults();
    cfg.weight_decay = weight_decay;
    opt = qtc_adamw_new(params, np, cfg, &err);
    if (!opt) {
        rc = cli_fail(&err);
        goto done;
    }
    for (int i = n_model; i < np; i++) /* scales and zero points take no weight decay */
        qtc_adamw_set_weight_decay(opt, i, 0);
    q.src = src;
    q.opt = opt;
    if ((q.save_every || q.stop_after || ckpt_dir) && qtc_checkpoint_path(ckpt_dir, out, 1, q.ckpt, sizeof q.ckpt, &err) != QTC_OK) {
        rc = cli_fail(&err);
        goto done;
    }
    int64_t first_step = 0;
    if (resume) {
        char path[4200];
        if (qtc_checkpoint_path(resume, NULL, 0, path, sizeof path, &err) != QTC_OK ||
            qtc_checkpoint_load(path, q.student, opt, &first_step, &err) != QTC_OK) {
            rc = cli_fail(&err);
            goto done;
        }
        fprintf(stderr, "qat-train: resuming %s after step %lld\n", path, (long long)first_step);
        if (first_step >= o.steps) {
            fprintf(stderr, "qat-train: error: the checkpoint is at step %lld, --steps is %lld\n", (long long)first_step,
                    (long long)o.steps);
            rc = 1;
            goto done;
        }
    }
    char sname[64] = "none (--wbits 32)";
    if (q.quantize)
        qtc_qscheme_name(&q.scheme, sname, sizeof sname);
    if (q.abits)
        snprintf(sname + strlen(sname), sizeof sname - strlen(sname), " + int8 inputs %s", q.act_per_token ? "per token" : q.calibrated ? "per tensor (calibrated)" : "per tensor");
    if (q.lsq)
        snprintf(sname + strlen(sname), sizeof sname - strlen(sname), ", learned scales");
    fprintf(stderr, "qat-train: %s, fake quantization %s, loss %s, %d of %d tensors trained, %lld training tokens\n",
            argv[optind], sname, q.distill ? "KL divergence from the float model" : "cross-entropy", n_trainable, n_model,
            (long long)data.n);
    if (q.abits && !q.act_per_token && !q.calibrated) { /* the observers see one training batch before anything is scored */
        int32_t *tk = malloc((size_t)o.batch * o.ctx * sizeof *tk), *tg = malloc((size_t)o.batch * o.ctx * sizeof *tg);
        qtc_graph *cg = qtc_graph_new(&err);
        if (!tk || !tg || !cg) {
            free(tk);
            free(tg);
            qtc_graph_free(cg);
            rc = 3;
            goto done;
        }
        qtc_train_batch(&data, o.batch, o.ctx, o.seed, first_step, tk, tg);
        qtc_tensor *ids = qtc_tensor_wrap(QTC_I32, 2, QTC_SHAPE(o.batch, o.ctx), tk, NULL, &err);
        qtc_graph_set_recording(cg, 0);
        q.observing = 1;
        qtc_llama_forward(q.student, cg, ids, 0);
        q.observing = 0;
        qtc_tensor_free(ids);
        qtc_graph_free(cg);
        free(tk);
        free(tg);
    }
    if (evaluate(&q, first_step, &err)) {
        rc = cli_fail(&err);
        goto done;
    }
    if (plot) {
        q.step_x = calloc((size_t)o.steps, sizeof *q.step_x);
        q.step_loss = malloc((size_t)o.steps * sizeof *q.step_loss);
        for (int64_t k = 0; q.step_loss && k < o.steps; k++)
            q.step_loss[k] = NAN; /* steps before a resume are not drawn */
    }
    progress pr = {&q, eval_every};
    qtc_status st = qtc_train(&o, opt, params, np, &data, first_step, loss_fn, &q, on_step, &pr, &err);
    if (st != QTC_OK) {
        rc = cli_fail(&err);
        goto done;
    }
    if (q.stop_after > 0 && q.stop_after < o.steps) {
        fprintf(stderr, "qat-train: stopped after step %lld; continue with --resume %.*s\n", (long long)q.stop_after,
                (int)(strlen(q.ckpt) - strlen("/checkpoint.safetensors")), q.ckpt);
        goto done;
    }
    if (evaluate(&q, o.steps, &err)) {
        rc = cli_fail(&err);
        goto done;
    }
    if (plot && q.step_loss) {
        char title[256];
        snprintf(title, sizeof title, "qat-train %s: %s", sname, q.distill ? "KL divergence from the float model" : "cross-entropy");
        qtc_plot_series series[2] = {{"training loss", q.step_x, q.step_loss, (int)o.steps},
                                     {q.distill ? "eval KLD" : "eval loss", q.eval_x, q.eval_y, q.n_evals}};
        if (qtc_plot_svg(plot, title, "step", series, q.n_evals ? 2 : 1, &err) != QTC_OK) {
            rc = cli_fail(&err);
            goto done;
        }
    }
    qtc_convert_hooks hooks = {.qweight = q.lsq ? lsq_qweight : NULL, .ctx = &q};
    rc = save(src, q.student, out, fmt, qtc_path_wants_zstd(out), &to, &hooks, &err);
done:
    for (int k = 0; q.obs && k < src->config.n_layers * 7; k++) {
        qtc_tensor_free(q.obs[k].scale);
        qtc_tensor_free(q.obs[k].zero);
    }
    for (int k = 0; q.lsq_scale && k < src->config.n_layers * 7; k++) {
        qtc_tensor_free(q.lsq_scale[k]);
        qtc_tensor_free(q.lsq_zero[k]);
    }
    free(q.lsq_scale);
    free(q.lsq_zero);
    free(q.obs);
    free(q.step_x);
    free(q.step_loss);
    if (q.log)
        fclose(q.log);
    qtc_adamw_free(opt);
    qtc_tokens_free(&data);
    qtc_tokens_free(&q.eval);
    qtc_tokenizer_free(tok);
    qtc_graph_free(q.tg);
    qtc_llama_free(q.student);
    qtc_llama_free(q.teacher);
    qtc_model_close(src);
    for (int k = 0; k < n_freeze; k++)
        regfree(&freeze[k]);
    for (int k = 0; k < n_train; k++)
        regfree(&train[k]);
    return rc;
}
