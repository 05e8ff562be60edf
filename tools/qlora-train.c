/* qlora-train: parameter-efficient fine-tuning: LoRA on a float base, QLoRA
 * on an NF4 (or any quantized) base, bottleneck adapters and prefix tuning,
 * all through one trainer; the result is a PEFT folder or a GGUF LoRA.
 *
 *   qlora-train MODEL --data FILE [--method lora|qlora|adapter|prefix] [--rank R --alpha A --target LIST|REGEX]
 *               [--base-type nf4|int8|...] [--steps N --batch B --ctx T --lr LR] [--eval FILE] -o ADAPTER_DIR
 *               [--format peft|gguf]
 *
 * The base is frozen; only the adapter trains (AdamW, warmup + cosine,
 * clipping, cross-entropy on the next token: on the responses only for
 * prompt/response JSON lines). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qtc/lora.h"
#include "qtc/plot.h"
#include "qtc/runtime.h"
#include "qtc/train.h"

#include "cli.h"

static const char *usage_text =
    "usage: qlora-train MODEL --data FILE -o ADAPTER [options]\n"
    "\n"
    "  --data FILE        training text, prompt/response JSON lines ({\"prompt\":..,\"response\":..}:\n"
    "                     the loss counts the responses only), or a qtc token file\n"
    "  --eval FILE        held-out text: loss and perplexity before and after training\n"
    "  --method M         lora (default), qlora (lora on an nf4 base), adapter (bottleneck\n"
    "                     adapters after attention and the MLP), prefix (prefix tuning)\n"
    "  --rank R           LoRA rank, or the adapters' bottleneck width (default 8)\n"
    "  --alpha A          LoRA scale numerator: s = A / R (default 2 R); --rslora: s = A / sqrt(R)\n"
    "  --target T         LoRA's modules: q_proj,v_proj (default), all-linear, or a regex over\n"
    "                     module paths such as model\\.layers\\.[0-3]\\.self_attn\\.(q|v)_proj\n"
    "  --dropout P        dropout on LoRA's input while training (default 0)\n"
    "  --prefix-len N     prefix tuning's virtual tokens per layer (default 8)\n"
    "  --base-type TYPE   keep the frozen base quantized: nf4 (qlora's default), nf4-single, int8,\n"
    "                     int4-g32, q4_0, q8_0, ... (default f32 for the other methods)\n"
    "  --steps N --batch B --ctx T --lr LR --warmup W --clip C --weight-decay D --grad-accum K --seed S\n"
    "                     (defaults 200, 8, 128, 1e-3, steps/10, 1.0, 0.0, 1, 0)\n"
    "  --eval-every N     evaluate every N steps (default: at the start and the end)\n"
    "  --eval-windows N   windows of --ctx scored per evaluation (default 64)\n"
    "  --save-every N     checkpoint the adapter and its AdamW moments every N steps into\n"
    "                     --checkpoint DIR (default ADAPTER.ckpt); --resume DIR continues a run;\n"
    "                     --stop-after N stops after step N with a checkpoint\n"
    "  -o ADAPTER         a PEFT folder (adapter_config.json, adapter_model.safetensors), or with\n"
    "                     --format gguf (or a .gguf name) a GGUF LoRA adapter for llama.cpp\n"
    "  --plot FILE.svg    the training loss and the evaluations as a chart\n"
    "  --tokenizer FILE   tokenizer for the text files; --log-json FILE events; --threads N\n"
    "\n"
    "Exit status: 0 done, 1 usage, 2 bad input, 3 I/O, 4 numerical failure (NaN or divergence).\n";

typedef struct run {
    qtc_llama *m;
    qtc_peft *p;
    qtc_adamw *opt;
    const qtc_model_file *src;
    qtc_tensor *params[4096];
    char names[4096][QTC_NAME_MAX];
    const char *name_ptr[4096];
    int np;
    char ckpt[4200];
    int64_t save_every, stop_after, steps, eval_every;
    FILE *log;
    qtc_tokens eval;
    int eval_windows, ctx;
    double *step_x, *step_loss, eval_x[256], eval_y[256];
    int n_evals;
} run;

static qtc_tensor *loss_fn(void *ctx, qtc_graph *g, const qtc_tensor *tokens, const qtc_tensor *targets)
{
    run *r = ctx;
    r->p->training = 1;
    qtc_tensor *logits = qtc_llama_forward(r->m, g, tokens, 0);
    r->p->training = 0;
    return qtc_cross_entropy(g, logits, targets);
}

static int evaluate(run *r, int64_t step, qtc_error *err)
{
    if (!r->eval.n)
        return 0;
    qtc_eval_result e;
    if (qtc_eval(r->m, NULL, &r->eval, r->ctx, 8, r->eval_windows, NULL, NULL, &e, err) != QTC_OK)
        return 1;
    if (r->n_evals < 256) {
        r->eval_x[r->n_evals] = (double)step;
        r->eval_y[r->n_evals++] = e.nll;
    }
    fprintf(stderr, "qlora-train: step %lld eval: loss %.4f, perplexity %.4f over %lld predictions\n", (long long)step,
            e.nll, e.ppl, (long long)e.predictions);
    if (r->log)
        fprintf(r->log, "{\"event\":\"eval\",\"step\":%lld,\"loss\":%.6f,\"ppl\":%.6f}\n", (long long)step, e.nll, e.ppl);
    return 0;
}

static int on_step(void *ctx, const qtc_train_event *ev, qtc_error *err)
{
    run *r = ctx;
    if (r->step_loss) {
        r->step_x[ev->step - 1] = (double)ev->step;
        r->step_loss[ev->step - 1] = ev->loss;
    }
    char line[256];
    int tty = isatty(STDERR_FILENO);
    qtc_train_event_text(ev, r->steps, line, sizeof line);
    if (tty || ev->step % 10 == 0 || ev->step == r->steps)
        fprintf(stderr, "%sqlora-train: %s%s", tty ? "\r" : "", line, tty && ev->step < r->steps ? "" : "\n");
    qtc_train_event_json(ev, line, sizeof line);
    if (r->log)
        fprintf(r->log, "%s\n", line);
    int stop = r->stop_after > 0 && ev->step >= r->stop_after && ev->step < r->steps;
    if (r->ckpt[0] && ((r->save_every > 0 && ev->step % r->save_every == 0) || stop)) {
        if (qtc_checkpoint_save_params(r->ckpt, r->src, r->params, r->name_ptr, r->np, r->opt, ev->step, err) != QTC_OK)
            return 1;
        fprintf(stderr, "qlora-train: step %lld: checkpoint %s\n", (long long)ev->step, r->ckpt);
    }
    if (stop)
        return 1;
    if (r->eval_every > 0 && ev->step % r->eval_every == 0 && ev->step < r->steps)
        return evaluate(r, ev->step, err);
    return 0;
}

static double megabytes(double b)
{
    return b / (1024.0 * 1024.0);
}

int main(int argc, char **argv)
{
    cli_init("qlora-train", usage_text, argv);
    static const struct option opts[] = {
        {"data", required_argument, 0, 'd'},     {"eval", required_argument, 0, 'e'},
        {"method", required_argument, 0, 'M'},   {"rank", required_argument, 0, 'r'},
        {"alpha", required_argument, 0, 'A'},    {"target", required_argument, 0, 'T'},
        {"rslora", no_argument, 0, 'S'},         {"dropout", required_argument, 0, 'D'},
        {"prefix-len", required_argument, 0, 'P'}, {"base-type", required_argument, 0, 'b'},
        {"steps", required_argument, 0, 'n'},    {"batch", required_argument, 0, 'B'},
        {"ctx", required_argument, 0, 'c'},      {"lr", required_argument, 0, 'l'},
        {"warmup", required_argument, 0, 'w'},   {"clip", required_argument, 0, 'C'},
        {"weight-decay", required_argument, 0, 'W'}, {"grad-accum", required_argument, 0, 'a'},
        {"seed", required_argument, 0, 's'},     {"eval-every", required_argument, 0, 'E'},
        {"eval-windows", required_argument, 0, 'V'}, {"save-every", required_argument, 0, 'v'},
        {"checkpoint", required_argument, 0, 'K'}, {"resume", required_argument, 0, 'R'},
        {"stop-after", required_argument, 0, 'X'}, {"format", required_argument, 0, 'f'},
        {"plot", required_argument, 0, 'p'},     {"tokenizer", required_argument, 0, 'k'},
        {"log-json", required_argument, 0, 'L'}, {"threads", required_argument, 0, 'j'},
        {"output", required_argument, 0, 'o'},   {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *data_path = NULL, *eval_path = NULL, *out = NULL, *tokenizer = NULL, *log_path = NULL, *base_type = NULL;
    const char *ckpt_dir = NULL, *resume = NULL, *plot = NULL, *method = "lora", *format = NULL;
    qtc_peft_config pc;
    memset(&pc, 0, sizeof pc);
    pc.r = 8;
    pc.alpha = -1;
    pc.prefix_len = 8;
    snprintf(pc.target, sizeof pc.target, "q_proj,v_proj");
    int threads = 0;
    float weight_decay = 0;
    qtc_train_opts o = qtc_train_defaults(200);
    o.lr.warmup = -1;
    static run r;
    r.eval_windows = 64;
    int c;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        char *end = NULL;
        switch (c) {
        case 'd': data_path = optarg; break;
        case 'e': eval_path = optarg; break;
        case 'M': method = optarg; break;
        case 'r': pc.r = (int)strtol(optarg, &end, 10); if (*end || pc.r < 1 || pc.r > 4096) cli_usage("--rank takes 1..4096"); break;
        case 'A': pc.alpha = strtof(optarg, &end); if (*end || !(pc.alpha > 0)) cli_usage("--alpha takes a positive number"); break;
        case 'T': if (strlen(optarg) >= sizeof pc.target) cli_usage("--target is too long"); snprintf(pc.target, sizeof pc.target, "%s", optarg); break;
        case 'S': pc.rslora = 1; break;
        case 'D': pc.dropout = strtof(optarg, &end); if (*end || pc.dropout < 0 || pc.dropout >= 1) cli_usage("--dropout is in [0, 1)"); break;
        case 'P': pc.prefix_len = (int)strtol(optarg, &end, 10); if (*end || pc.prefix_len < 1) cli_usage("--prefix-len takes a positive number"); break;
        case 'b': base_type = optarg; break;
        case 'n': o.steps = strtoll(optarg, &end, 10); if (*end || o.steps < 1) cli_usage("--steps takes a positive number"); break;
        case 'B': o.batch = (int)strtol(optarg, &end, 10); if (*end || o.batch < 1) cli_usage("--batch takes a positive number"); break;
        case 'c': o.ctx = (int)strtol(optarg, &end, 10); if (*end || o.ctx < 2) cli_usage("--ctx takes a number of at least 2"); break;
        case 'l': o.lr.lr = strtof(optarg, &end); if (*end || !(o.lr.lr > 0)) cli_usage("--lr takes a positive number"); break;
        case 'w': o.lr.warmup = strtoll(optarg, &end, 10); if (*end || o.lr.warmup < 0) cli_usage("--warmup takes a number"); break;
        case 'C': o.clip = strtof(optarg, &end); if (*end) cli_usage("--clip takes a number"); break;
        case 'W': weight_decay = strtof(optarg, &end); if (*end || weight_decay < 0) cli_usage("--weight-decay takes a number"); break;
        case 'a': o.grad_accum = (int)strtol(optarg, &end, 10); if (*end || o.grad_accum < 1) cli_usage("--grad-accum takes a positive number"); break;
        case 's': o.seed = strtoull(optarg, &end, 10); if (*end) cli_usage("--seed takes a number"); break;
        case 'E': r.eval_every = strtoll(optarg, &end, 10); if (*end || r.eval_every < 1) cli_usage("--eval-every takes a positive number"); break;
        case 'V': r.eval_windows = (int)strtol(optarg, &end, 10); if (*end || r.eval_windows < 1) cli_usage("--eval-windows takes a positive number"); break;
        case 'v': r.save_every = strtoll(optarg, &end, 10); if (*end || r.save_every < 1) cli_usage("--save-every takes a positive number"); break;
        case 'K': ckpt_dir = optarg; break;
        case 'R': resume = optarg; break;
        case 'X': r.stop_after = strtoll(optarg, &end, 10); if (*end || r.stop_after < 1) cli_usage("--stop-after takes a positive number"); break;
        case 'f': format = optarg; if (strcmp(format, "peft") != 0 && strcmp(format, "gguf") != 0) cli_usage("--format is peft or gguf"); break;
        case 'p': plot = optarg; break;
        case 'k': tokenizer = optarg; break;
        case 'L': log_path = optarg; break;
        case 'j': threads = atoi(optarg); if (threads <= 0) cli_usage("--threads takes a positive number"); break;
        case 'o': out = optarg; break;
        case 'h': fputs(usage_text, stdout); return 0;
        default: cli_usage("bad option");
        }
    }
    if (optind != argc - 1)
        cli_usage(optind < argc ? "one model only" : "no model");
    if (!data_path || !out)
        cli_usage("give --data FILE and -o ADAPTER");
    if (strcmp(out, "-") == 0)
        cli_usage("an adapter is a folder or a file: -o - is not supported");
    int qlora = strcmp(method, "qlora") == 0;
    if (qlora || strcmp(method, "lora") == 0)
        pc.method = QTC_PEFT_LORA;
    else if (strcmp(method, "adapter") == 0)
        pc.method = QTC_PEFT_ADAPTER;
    else if (strcmp(method, "prefix") == 0)
        pc.method = QTC_PEFT_PREFIX;
    else
        cli_usage("--method is lora, qlora, adapter or prefix");
    if (pc.alpha < 0)
        pc.alpha = 2.0f * (float)pc.r;
    size_t olen = strlen(out);
    int gguf = format ? strcmp(format, "gguf") == 0 : olen > 5 && strcmp(out + olen - 5, ".gguf") == 0;
    if (gguf && pc.method != QTC_PEFT_LORA)
        cli_usage("only LoRA adapters have a GGUF form: write a PEFT folder");
    qtc_target base;
    memset(&base, 0, sizeof base);
    base.dtype = QTC_F32;
    if (!base_type && qlora)
        base_type = "nf4";
    if (base_type && qtc_target_parse(base_type, &base) != 0)
        cli_usage("unknown --base-type");
    if (qlora && !base.is_scheme && base.dtype == QTC_F32)
        cli_usage("--method qlora needs a quantized --base-type (nf4 by default)");
    if (o.lr.warmup < 0)
        o.lr.warmup = o.steps / 10;
    o.lr.total = o.steps;
    r.steps = o.steps;
    r.ctx = o.ctx;
    qtc_set_threads(threads);

    qtc_error err;
    int rc = 0;
    qtc_model_file *src = qtc_model_open(argv[optind], &err);
    qtc_tokenizer *tok = NULL;
    qtc_tokens data = {0};
    int quantized = base.is_scheme || base.dtype != QTC_F32;
    if (src && !src->has_config)
        qtc_error_set(&err, QTC_ERR_INPUT, "%s: no llama configuration (config.json, GGUF llama.* keys or a llama2.c header)",
                      src->path);
    if (!src || !src->has_config || !(r.p = qtc_peft_new(&src->config, &pc, o.seed ^ 0x10a4u, &err)) ||
        !(r.m = quantized ? qtc_peft_load_base(r.p, src, base.is_scheme ? &base.scheme : NULL, base.dtype, &err)
                          : qtc_llama_from_model(src, &err)) ||
        !(tok = tokenizer ? qtc_tokenizer_load(tokenizer, src->config.vocab, &err) : qtc_tokenizer_for_model(src, &err)) ||
        qtc_tokens_load(tok, data_path, src->config.vocab, &data, &err) != QTC_OK ||
        (eval_path && qtc_tokens_load(tok, eval_path, src->config.vocab, &r.eval, &err) != QTC_OK)) {
        rc = cli_fail(&err);
        goto done;
    }
    r.src = src;
    if (o.ctx > src->config.ctx) {
        fprintf(stderr, "qlora-train: error: --ctx %d is larger than the model's context of %d\n", o.ctx, src->config.ctx);
        rc = 1;
        goto done;
    }
    if (pc.method == QTC_PEFT_PREFIX && o.ctx + pc.prefix_len > src->config.ctx)
        fprintf(stderr, "qlora-train: note: --ctx %d plus a prefix of %d exceeds the model's context of %d\n", o.ctx,
                pc.prefix_len, src->config.ctx);
    const qtc_llama_config *mc = &src->config;
    double f32_base = 4.0 * mc->n_layers *
                      ((double)mc->dim * mc->head_dim * (mc->n_heads * 2 + mc->n_kv_heads * 2) + 3.0 * mc->dim * mc->hidden);
    qtc_peft_attach(r.p, r.m);
    r.np = qtc_peft_params(r.p, r.params, 4096);
    int64_t n_trainable = 0;
    for (int i = 0; i < r.np; i++) {
        qtc_peft_param_name(r.p, i, r.names[i], QTC_NAME_MAX);
        r.name_ptr[i] = r.names[i];
        n_trainable += qtc_tensor_numel(r.params[i]);
    }
    qtc_adamw_config cfg = qtc_adamw_defaults();
    cfg.weight_decay = weight_decay;
    if (!(r.opt = qtc_adamw_new(r.params, r.np, cfg, &err))) {
        rc = cli_fail(&err);
        goto done;
    }
    if (log_path && !(r.log = fopen(log_path, "w"))) {
        fprintf(stderr, "qlora-train: error: %s: cannot open for writing\n", log_path);
        rc = 3;
        goto done;
    }
    if ((r.save_every || r.stop_after || ckpt_dir) && qtc_checkpoint_path(ckpt_dir, out, 1, r.ckpt, sizeof r.ckpt, &err) != QTC_OK) {
        rc = cli_fail(&err);
        goto done;
    }
    int64_t first_step = 0;
    if (resume) {
        char path[4200];
        if (qtc_checkpoint_path(resume, NULL, 0, path, sizeof path, &err) != QTC_OK ||
            qtc_checkpoint_load_params(path, r.params, r.name_ptr, r.np, r.opt, &first_step, &err) != QTC_OK) {
            rc = cli_fail(&err);
            goto done;
        }
        fprintf(stderr, "qlora-train: resuming %s after step %lld\n", path, (long long)first_step);
        if (first_step >= o.steps) {
            fprintf(stderr, "qlora-train: error: the checkpoint is at step %lld, --steps is %lld\n", (long long)first_step,
                    (long long)o.steps);
            rc = 1;
            goto done;
        }
    }
    char bname[64] = "f32";
    qtc_target_name(&base, bname, sizeof bname);
    double base_bytes = r.p->base ? (double)qtc_peft_base_bytes(r.p) : f32_base;
    fprintf(stderr, "qlora-train: %s, %s, %lld trainable weights in %d tensors; linear base %s %.2f MB (f32: %.2f MB); "
                    "%lld training tokens%s\n",
            argv[optind], qlora ? "qlora" : method, (long long)n_trainable, r.np, bname, megabytes(base_bytes),
            megabytes(f32_base), (long long)data.n, data.loss_mask ? " (prompt/response pairs: responses scored)" : "");
    if (pc.method == QTC_PEFT_LORA)
        fprintf(stderr, "qlora-train: LoRA rank %d, alpha %g (scale %g%s), targets %s, dropout %g\n", pc.r, pc.alpha,
                r.p->scaling, pc.rslora ? ", rsLoRA" : "", pc.target, pc.dropout);
    if (evaluate(&r, first_step, &err)) {
        rc = cli_fail(&err);
        goto done;
    }
    if (plot) {
        r.step_x = calloc((size_t)o.steps, sizeof *r.step_x);
        r.step_loss = malloc((size_t)o.steps * sizeof *r.step_loss);
        for (int64_t k = 0; r.step_loss && k < o.steps; k++)
            r.step_loss[k] = NAN;
    }
    if (qtc_train(&o, r.opt, r.params, r.np, &data, first_step, loss_fn, &r, on_step, &r, &err) != QTC_OK) {
        rc = cli_fail(&err);
        goto done;
    }
    if (r.stop_after > 0 && r.stop_after < o.steps) {
        fprintf(stderr, "qlora-train: stopped after step %lld; continue with --resume %.*s\n", (long long)r.stop_after,
                (int)(strlen(r.ckpt) - strlen("/checkpoint.safetensors")), r.ckpt);
        goto done;
    }
    if (evaluate(&r, o.steps, &err)) {
        rc = cli_fail(&err);
        goto done;
    }
    if (plot && r.step_loss) {
        char title[256];
        snprintf(title, sizeof title, "qlora-train %s (base %s): cross-entropy", qlora ? "qlora" : method, bname);
        qtc_plot_series series[2] = {{"training loss", r.step_x, r.step_loss, (int)o.steps},
                                     {"eval loss", r.eval_x, r.eval_y, r.n_evals}};
        if (qtc_plot_svg(plot, title, "step", series, r.n_evals ? 2 : 1, &err) != QTC_OK) {
            rc = cli_fail(&err);
            goto done;
        }
    }
    if (qtc_peft_save(r.p, out, gguf, argv[optind], &err) != QTC_OK) {
        rc = cli_fail(&err);
        goto done;
    }
    fprintf(stderr, "qlora-train: wrote %s (%s)\n", out, gguf ? "GGUF LoRA adapter" : "PEFT folder");
done:
    free(r.step_x);
    free(r.step_loss);
    if (r.log)
        fclose(r.log);
    qtc_adamw_free(r.opt);
    qtc_tokens_free(&data);
    qtc_tokens_free(&r.eval);
    qtc_tokenizer_free(tok);
    qtc_llama_free(r.m);
    qtc_peft_free(r.p);
    qtc_model_close(src);
    return rc;
}
