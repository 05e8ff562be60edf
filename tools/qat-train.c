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
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/calibrate.h"
#include "qtc/qat.h"
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
    "  --grad-checkpoint  activation checkpointing: keep only each block's input and recompute\n"
    "                     the block in the backward pass (less memory, one more forward per step;\n"
    "                     the same results bit for bit)\n"
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

typedef struct qat {
    int quantize;
    int lsq;
    int abits, act_per_token;
    int64_t observer_steps;
    int calibrated;           /* the ranges came from a calibration file and stay */
    qtc_qat *fq;              /* the student's fake quantization */
    const qtc_model_file *src;
    qtc_adamw *opt;
    qtc_qscheme scheme;
    qtc_llama *student, *teacher;
    int distill;
    qtc_graph *tg;         /* the teacher's graph */
} qat;

/* the observers see training forwards only */
static void training(void *ctx, int on)
{
    qtc_qat_set_training(((qat *)ctx)->fq, on);
}

static void stepped(void *ctx, int64_t step)
{
    qtc_qat_set_step(((qat *)ctx)->fq, step);
}

static qtc_status save_checkpoint(void *ctx, const char *path, int64_t step, qtc_error *err)
{
    qat *q = ctx;
    return qtc_checkpoint_save(path, q->src, q->student, q->opt, step, err);
}

static qtc_status load_checkpoint(void *ctx, const char *path, int64_t *step, qtc_error *err)
{
    qat *q = ctx;
    return qtc_checkpoint_load(path, q->student, q->opt, step, err);
}

int main(int argc, char **argv)
{
    cli_init("qat-train", usage_text, argv);
    static const struct option opts[] = {
        {"wbits", required_argument, 0, 'b'},    {"group", required_argument, 0, 'g'},
        {"sym", no_argument, 0, 'S'},            {"asym", no_argument, 0, 'A'},
        {"distill", no_argument, 0, 'D'},        {"ce", no_argument, 0, 'C'},
        {"freeze", required_argument, 0, 'F'},   {"train", required_argument, 0, 'R'},
        {"to", required_argument, 0, 't'},       {"format", required_argument, 0, 'f'},
        {"output", required_argument, 0, 'o'},   {"help", no_argument, 0, 'h'},
        {"data-free", required_argument, 0, 'G'}, {"abits", required_argument, 0, 'x'},
        {"act-per-token", no_argument, 0, 'X'},  {"observer-steps", required_argument, 0, 'O'},
        {"lsq", no_argument, 0, 'Q'},            {"calib", required_argument, 0, 'y'},
        CLI_TRAIN_OPTIONS,
        {0, 0, 0, 0}};
    const char *out = NULL, *to_name = NULL, *calib = NULL;
    int wbits = 4, group = 32, sym = 1, loss_kind = -1, n_freeze = 0, n_train = 0;
    int64_t data_free = 0;
    qtc_format fmt = QTC_FMT_UNKNOWN;
    regex_t freeze[32], train[32];
    cli_train_flags tf = cli_train_flags_defaults(5e-4f);
    qtc_tensor **params = NULL;
    qtc_act_qparams *ranges = NULL; /* --calib */
    qat q;
    memset(&q, 0, sizeof q);
    int c;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        char *end = NULL;
        if (cli_train_flag(&tf, c, optarg))
            continue;
        switch (c) {
        case 'b': wbits = (int)strtol(optarg, &end, 10); if (*end || !((wbits >= 2 && wbits <= 8) || wbits == 32)) cli_usage("--wbits is 2..8 or 32"); break;
        case 'g': group = (int)strtol(optarg, &end, 10); if (*end || group < -1) cli_usage("--group takes a size, 0 or -1"); break;
        case 'S': sym = 1; break;
        case 'A': sym = 0; break;
        case 'D': loss_kind = 1; break;
        case 'C': loss_kind = 0; break;
        case 'F':
        case 'R': {
            if ((c == 'F' ? n_freeze : n_train) == 32)
                cli_usage("at most 32 --freeze and 32 --train patterns");
            regex_t *re = c == 'F' ? &freeze[n_freeze] : &train[n_train];
            if (regcomp(re, optarg, REG_EXTENDED | REG_NOSUB) != 0)
                cli_usage("bad --freeze/--train pattern");
            if (c == 'F')
                n_freeze++;
            else
                n_train++;
            break;
        }
        case 't': to_name = optarg; break;
        case 'f': fmt = qtc_format_from_name(optarg); if (fmt == QTC_FMT_UNKNOWN) cli_usage("--format is safetensors, gguf or hf"); break;
        case 'o': out = optarg; break;
        case 'x': q.abits = (int)strtol(optarg, &end, 10); if (*end || q.abits != 8) cli_usage("--abits is 8"); break;
        case 'X': q.act_per_token = 1; break;
        case 'Q': q.lsq = 1; break;
        case 'y': calib = optarg; break;
        case 'O': q.observer_steps = strtoll(optarg, &end, 10); if (*end || q.observer_steps < 1) cli_usage("--observer-steps takes a positive number"); break;
        case 'G': data_free = strtoll(optarg, &end, 10); if (*end || data_free < 1) cli_usage("--data-free takes a number of tokens"); break;
        case 'h': fputs(usage_text, stdout); return 0;
        default: cli_usage("bad option");
        }
    }
    if (optind != argc - 1)
        cli_usage(optind < argc ? "one model only" : "no model");
    if ((!tf.data && !data_free) || (tf.data && data_free) || !out)
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
    cli_trainer tr;
    cli_trainer_init(&tr, &tf);
    const qtc_train_opts o = tf.o;
    qtc_error err;
    int rc = 0;
    qtc_model_file *src = qtc_model_open(argv[optind], &err);
    qtc_adamw *opt = NULL;
    if (!src || !(q.student = qtc_llama_from_model(src, &err)) ||
        /* the teacher is never written: its f32 weights are read from the file's mapping */
        ((q.distill || tf.eval || data_free) && !(q.teacher = qtc_llama_from_model_frozen(src, NULL, NULL, &err)))) {
        rc = cli_fail(&err);
        goto done;
    }
    if (cli_trainer_load_text(&tr, &tf, src, &err) != QTC_OK) {
        rc = cli_fail(&err);
        goto done;
    }
    if (data_free) { /* the teacher writes the training text: sequences of ctx + 1 from BOS */
        int64_t seqs;
        if (qtc_generate_corpus(q.teacher, data_free, o.ctx, o.seed, &tr.data, &seqs, &err) != QTC_OK) {
            rc = cli_fail(&err);
            goto done;
        }
        fprintf(stderr, "qat-train: the float model wrote %lld tokens of training data (%lld sequences)\n",
                (long long)tr.data.n, (long long)seqs);
    }
    if ((rc = cli_check_ctx(o.ctx, &src->config)))
        goto done;
    if ((rc = cli_trainer_open_log(&tr, tf.log_json)))
        goto done;
    if (q.abits && !q.quantize) {
        rc = cli_error(1, "--abits needs fake-quantized weights (--wbits 2..8)");
        goto done;
    }
    const int n_lin = src->config.n_layers * QTC_N_LINEAR;
    if (calib) { /* static input ranges from qcalib, used as they are */
        if (!q.abits || q.act_per_token) {
            rc = cli_error(1, "--calib gives per-tensor input ranges: it needs --abits 8 (not --act-per-token)");
            goto done;
        }
        if (!(ranges = calloc((size_t)n_lin, sizeof *ranges))) {
            rc = cli_error(3, "out of memory");
            goto done;
        }
        int bits = 0;
        if (qtc_calib_load_json(calib, src->config.n_layers, ranges, &bits, &err) != QTC_OK || bits != q.abits) {
            if (bits && bits != q.abits)
                qtc_error_set(&err, QTC_ERR_INPUT, "%s: ranges for %d-bit inputs, --abits is %d", calib, bits, q.abits);
            rc = cli_fail(&err);
            goto done;
        }
        q.calibrated = 1;
    }
    q.tg = qtc_graph_new(&err);
    int np = qtc_llama_params(q.student, NULL, 0), n_trainable = 0;
    /* the model's tensors, then (--lsq) a scale and a zero point per linear weight */
    if (!(params = malloc((size_t)np * sizeof *params))) {
        rc = cli_error(3, "out of memory");
        goto done;
    }
    qtc_llama_params(q.student, params, np);
    for (int i = 0; i < np; i++) {
        char name[QTC_NAME_MAX];
        qtc_llama_param_name(q.student, i, name, sizeof name);
        int on = n_train == 0;
        for (int k = 0; k < n_train; k++)
            on |= regexec(&train[k], name, 0, NULL, 0) == 0;
        for (int k = 0; k < n_freeze; k++)
            on &= regexec(&freeze[k], name, 0, NULL, 0) != 0;
        if (on && qtc_tensor_require_grad(params[i], &err) != QTC_OK) { /* frozen ones get no gradient */
            rc = cli_fail(&err);
            goto done;
        }
        n_trainable += on;
    }
    if (!n_trainable) {
        rc = cli_error(1, "--train/--freeze leave no parameter to train");
        goto done;
    }
    int n_model = np;
    if (q.lsq && (!q.quantize || q.scheme.kind != QTC_QK_INT || tf.save_every || tf.stop_after || tf.resume)) {
        rc = cli_error(1, "--lsq needs integer weights (--wbits 2..8) and no checkpoints yet");
        goto done;
    }
    /* the student's linear layers fake-quantized; with --lsq, the scales (and zero points) of
     * every linear weight join the parameters */
    qtc_qat_options fo = {.weights = q.quantize, .scheme = q.scheme, .lsq = q.lsq, .abits = q.abits,
                          .observer_steps = q.observer_steps, .calib = ranges};
    fo.inputs = !q.abits ? QTC_QAT_INPUTS_FLOAT
                : q.act_per_token ? QTC_QAT_INPUTS_PER_TOKEN
                : q.calibrated ? QTC_QAT_INPUTS_RANGES : QTC_QAT_INPUTS_OBSERVED;
    if (!(q.fq = qtc_qat_attach(q.student, &fo, &err))) {
        rc = cli_fail(&err);
        goto done;
    }
    q.student->grad_checkpoint = tf.grad_checkpoint;
    int n_qat = qtc_qat_params(q.fq, NULL, 0);
    qtc_tensor **grown = realloc(params, (size_t)(np + n_qat) * sizeof *params);
    if (!grown) {
        rc = cli_error(3, "out of memory");
        goto done;
    }
    params = grown;
    np += qtc_qat_params(q.fq, params + np, n_qat);
    qtc_adamw_config cfg = qtc_adamw_defaults();
    cfg.weight_decay = tf.weight_decay;
    opt = qtc_adamw_new(params, np, cfg, &err);
    if (!opt) {
        rc = cli_fail(&err);
        goto done;
    }
    for (int i = n_model; i < np; i++) /* scales and zero points take no weight decay */
        qtc_adamw_set_weight_decay(opt, i, 0);
    q.src = src;
    q.opt = opt;
    if (cli_trainer_checkpoint_path(&tr, &tf, out, &err) != QTC_OK) {
        rc = cli_fail(&err);
        goto done;
    }
    int64_t first_step;
    if ((rc = cli_trainer_resume(&tr, tf.resume, load_checkpoint, &q, &first_step)))
        goto done;
    char sname[64] = "none (--wbits 32)";
    if (q.quantize)
        qtc_qscheme_name(&q.scheme, sname, sizeof sname);
    if (q.abits)
        snprintf(sname + strlen(sname), sizeof sname - strlen(sname), " + int8 inputs %s", q.act_per_token ? "per token" : q.calibrated ? "per tensor (calibrated)" : "per tensor");
    if (q.lsq)
        snprintf(sname + strlen(sname), sizeof sname - strlen(sname), ", learned scales");
    fprintf(stderr, "qat-train: %s, fake quantization %s, loss %s, %d of %d tensors trained, %lld training tokens\n",
            argv[optind], sname, q.distill ? "KL divergence from the float model" : "cross-entropy", n_trainable, n_model,
            (long long)tr.data.n);
    /* the observers see one training batch before anything is scored */
    if (qtc_qat_warm_up(q.fq, &tr.data, o.batch, o.ctx, o.seed, first_step, &err) != QTC_OK) {
        rc = cli_fail(&err);
        goto done;
    }
    tr.model = q.student;
    tr.ref = q.teacher;
    tr.judge_kld = q.distill;
    tr.save = save_checkpoint;
    tr.save_ctx = &q;
    tr.stepped = stepped;
    tr.stepped_ctx = &q;
    char title[256];
    snprintf(title, sizeof title, "qat-train %s: %s", sname, q.distill ? "KL divergence from the float model" : "cross-entropy");
    int stopped;
    /* the QAT hook leaves the head a plain matmul: the loss fuses it (neither the batch's
     * logits nor the teacher's exist) */
    qtc_lm_loss loss = {q.student, q.distill ? q.teacher : NULL, q.tg, training, &q, 1};
    if ((rc = cli_trainer_run(&tr, opt, params, np, first_step, qtc_lm_loss_fn, &loss, title,
                              q.distill ? "eval KLD" : "eval loss", &stopped)) ||
        stopped)
        goto done;
    qtc_convert_hooks hooks = qtc_qat_convert_hooks(q.fq); /* LSQ: the learned scales */
    qtc_convert_summary s;
    if (qtc_llama_export(q.student, src, out, fmt, qtc_path_wants_zstd(out), &to, &hooks, &s, &err) != QTC_OK)
        rc = cli_fail(&err);
    else
        fprintf(stderr, "qat-train: wrote %s: %.3f bits per weight, weights' rel rms err %.3e against the trained floats\n",
                out, s.bits_per_weight, s.rel_rms_err);
done:
    free(params);
    qtc_qat_free(q.fq);
    if (ranges)
        qtc_act_qparams_free(ranges, src->config.n_layers * QTC_N_LINEAR);
    free(ranges);
    cli_trainer_free(&tr);
    qtc_adamw_free(opt);
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
