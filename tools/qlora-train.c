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
    "                     int4-g32, q4_0, q8_0, ... (default f32 for the other methods); a float\n"
    "                     base is used as the file stores it (f32 mapped, f16/bf16 converted a\n"
    "                     tile at a time), never copied\n"
    "  --embed-type TYPE  the frozen embedding and output head: kept in TYPE (default: the\n"
    "                     --base-type; f32 keeps them float as stored)\n"
    "  --steps N --batch B --ctx T --lr LR --warmup W --clip C --weight-decay D --grad-accum K --seed S\n"
    "                     (defaults 200, 8, 128, 1e-3, steps/10, 1.0, 0.0, 1, 0)\n"
    "  --grad-checkpoint  activation checkpointing: keep only each block's input and recompute\n"
    "                     the block in the backward pass (less memory, one more forward per step;\n"
    "                     the same results bit for bit)\n"
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
    qtc_tensor **params;
    char (*names)[QTC_NAME_MAX];
    const char **name_ptr;
    int np;
} run;

/* dropout acts on training forwards only */
static void training(void *ctx, int on)
{
    ((qtc_peft *)ctx)->training = on;
}

static qtc_status save_checkpoint(void *ctx, const char *path, int64_t step, qtc_error *err)
{
    run *r = ctx;
    return qtc_checkpoint_save_params(path, r->src, r->params, r->name_ptr, r->np, r->opt, step, err);
}

static qtc_status load_checkpoint(void *ctx, const char *path, int64_t *step, qtc_error *err)
{
    run *r = ctx;
    return qtc_checkpoint_load_params(path, r->params, r->name_ptr, r->np, r->opt, step, err);
}

static double megabytes(double b)
{
    return b / (1024.0 * 1024.0);
}

/* "nf4 4.61 MB", "f32 36.86 MB mapped": how a frozen embedding or head is held. */
static void describe_io(const qtc_qmatrix *q, const qtc_tensor *t, char *buf, size_t cap)
{
    char name[64];
    if (q) {
        qtc_target tg = {q->is_scheme, q->dtype, q->s};
        qtc_target_name(&tg, name, sizeof name);
        snprintf(buf, cap, "%s %.2f MB%s", name, megabytes((double)qtc_qmatrix_bytes(q)), q->borrowed ? " mapped" : "");
    } else {
        snprintf(buf, cap, "f32 %.2f MB%s", megabytes((double)qtc_tensor_nbytes(t)), qtc_tensor_owns_data(t) ? "" : " mapped");
    }
}

int main(int argc, char **argv)
{
    cli_init("qlora-train", usage_text, argv);
    static const struct option opts[] = {
        {"method", required_argument, 0, 'M'},   {"rank", required_argument, 0, 'r'},
        {"alpha", required_argument, 0, 'A'},    {"target", required_argument, 0, 'T'},
        {"rslora", no_argument, 0, 'S'},         {"dropout", required_argument, 0, 'D'},
        {"prefix-len", required_argument, 0, 'P'}, {"base-type", required_argument, 0, 'b'},
        {"embed-type", required_argument, 0, 'E'},
        {"format", required_argument, 0, 'f'},   {"output", required_argument, 0, 'o'},
        {"help", no_argument, 0, 'h'},           CLI_TRAIN_OPTIONS,
        {0, 0, 0, 0}};
    const char *out = NULL, *base_type = NULL, *embed_type = NULL;
    const char *method = "lora", *format = NULL;
    qtc_peft_config pc;
    memset(&pc, 0, sizeof pc);
    pc.r = 8;
    pc.alpha = -1;
    pc.prefix_len = 8;
    snprintf(pc.target, sizeof pc.target, "q_proj,v_proj");
    cli_train_flags tf = cli_train_flags_defaults(qtc_train_defaults(200).lr.lr);
    run r;
    memset(&r, 0, sizeof r);
    int c;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        char *end = NULL;
        if (cli_train_flag(&tf, c, optarg))
            continue;
        switch (c) {
        case 'M': method = optarg; break;
        case 'r': pc.r = (int)strtol(optarg, &end, 10); if (*end || pc.r < 1 || pc.r > 4096) cli_usage("--rank takes 1..4096"); break;
        case 'A': pc.alpha = strtof(optarg, &end); if (*end || !(pc.alpha > 0)) cli_usage("--alpha takes a positive number"); break;
        case 'T': if (strlen(optarg) >= sizeof pc.target) cli_usage("--target is too long"); snprintf(pc.target, sizeof pc.target, "%s", optarg); break;
        case 'S': pc.rslora = 1; break;
        case 'D': pc.dropout = strtof(optarg, &end); if (*end || pc.dropout < 0 || pc.dropout >= 1) cli_usage("--dropout is in [0, 1)"); break;
        case 'P': pc.prefix_len = (int)strtol(optarg, &end, 10); if (*end || pc.prefix_len < 1) cli_usage("--prefix-len takes a positive number"); break;
        case 'b': base_type = optarg; break;
        case 'E': embed_type = optarg; break;
        case 'f': format = optarg; if (strcmp(format, "peft") != 0 && strcmp(format, "gguf") != 0) cli_usage("--format is peft or gguf"); break;
        case 'o': out = optarg; break;
        case 'h': fputs(usage_text, stdout); return 0;
        default: cli_usage("bad option");
        }
    }
    if (optind != argc - 1)
        cli_usage(optind < argc ? "one model only" : "no model");
    if (!tf.data || !out)
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
    qtc_target io = base;
    if (embed_type && qtc_target_parse(embed_type, &io) != 0)
        cli_usage("unknown --embed-type");
    cli_trainer tr;
    cli_trainer_init(&tr, &tf);
    const qtc_train_opts o = tf.o;

    qtc_error err;
    int rc = 0;
    qtc_model_file *src = qtc_model_open(argv[optind], &err);
    if (src && !src->has_config)
        qtc_error_set(&err, QTC_ERR_INPUT, "%s: no llama configuration (config.json, GGUF llama.* keys or a llama2.c header)",
                      src->path);
    if (!src || !src->has_config || !(r.p = qtc_peft_new(&src->config, &pc, o.seed ^ 0x10a4u, &err)) ||
        !(r.m = qtc_peft_load_frozen(r.p, src, &base, &io, &err)) ||
        cli_trainer_load_text(&tr, &tf, src, &err) != QTC_OK) {
        rc = cli_fail(&err);
        goto done;
    }
    r.src = src;
    if ((rc = cli_check_ctx(o.ctx, &src->config)))
        goto done;
    if (pc.method == QTC_PEFT_PREFIX && o.ctx + pc.prefix_len > src->config.ctx)
        fprintf(stderr, "qlora-train: note: --ctx %d plus a prefix of %d exceeds the model's context of %d\n", o.ctx,
                pc.prefix_len, src->config.ctx);
    const qtc_llama_config *mc = &src->config;
    double f32_base = 4.0 * mc->n_layers *
                      ((double)mc->dim * mc->head_dim * (mc->n_heads * 2 + mc->n_kv_heads * 2) + 3.0 * mc->dim * mc->hidden);
    qtc_peft_attach(r.p, r.m);
    r.m->grad_checkpoint = tf.grad_checkpoint;
    r.np = qtc_peft_params(r.p, NULL, 0);
    r.params = malloc((size_t)r.np * sizeof *r.params);
    r.names = malloc((size_t)r.np * sizeof *r.names);
    r.name_ptr = malloc((size_t)r.np * sizeof *r.name_ptr);
    if (!r.params || !r.names || !r.name_ptr) {
        rc = cli_error(3, "out of memory");
        goto done;
    }
    qtc_peft_params(r.p, r.params, r.np);
    int64_t n_trainable = 0;
    for (int i = 0; i < r.np; i++) {
        qtc_peft_param_name(r.p, i, r.names[i], QTC_NAME_MAX);
        r.name_ptr[i] = r.names[i];
        n_trainable += qtc_tensor_numel(r.params[i]);
    }
    qtc_adamw_config cfg = qtc_adamw_defaults();
    cfg.weight_decay = tf.weight_decay;
    if (!(r.opt = qtc_adamw_new(r.params, r.np, cfg, &err))) {
        rc = cli_fail(&err);
        goto done;
    }
    if ((rc = cli_trainer_open_log(&tr, tf.log_json)))
        goto done;
    if (cli_trainer_checkpoint_path(&tr, &tf, out, &err) != QTC_OK) {
        rc = cli_fail(&err);
        goto done;
    }
    int64_t first_step;
    if ((rc = cli_trainer_resume(&tr, tf.resume, load_checkpoint, &r, &first_step)))
        goto done;
    char bname[64] = "f32";
    qtc_target_name(&base, bname, sizeof bname);
    double base_bytes = (double)qtc_peft_base_bytes(r.p), mapped = 0; /* mapped: views of the file, no copy */
    for (int l = 0; l < mc->n_layers; l++)
        for (int k = 0; k < QTC_N_LINEAR; k++) {
            const qtc_tensor *w = qtc_llama_linear_weight(r.m, l, (qtc_linear_kind)k);
            const qtc_qmatrix *q = &r.p->base[l * QTC_N_LINEAR + k];
            base_bytes += w ? (double)qtc_tensor_nbytes(w) : 0;
            mapped += w && !qtc_tensor_owns_data(w) ? (double)qtc_tensor_nbytes(w)
                      : !w && q->borrowed        ? (double)qtc_qmatrix_bytes(q)
                                                 : 0;
        }
    if (!base.is_scheme && base.dtype == QTC_F32 && !qtc_llama_linear_weight(r.m, 0, QTC_LIN_Q)) /* f16/bf16 as stored */
        snprintf(bname, sizeof bname, "%s", qtc_dtype_info(r.p->base[0].dtype)->name);
    char mapped_note[48] = "";
    if (mapped > 0)
        snprintf(mapped_note, sizeof mapped_note, ", %.2f MB of it mapped", megabytes(mapped));
    char ename[64], hname[80];
    describe_io(r.p->base_embed, r.m->embed, ename, sizeof ename);
    if (r.p->base_head && r.p->base_head == r.p->base_embed)
        snprintf(hname, sizeof hname, "tied");
    else if (!r.p->base_head && r.m->output == r.m->embed)
        snprintf(hname, sizeof hname, "tied");
    else
        describe_io(r.p->base_head, r.m->output, hname, sizeof hname);
    fprintf(stderr, "qlora-train: %s, %s, %lld trainable weights in %d tensors; linear base %s %.2f MB%s (f32: %.2f MB); "
                    "embedding %s, head %s; %lld training tokens%s\n",
            argv[optind], qlora ? "qlora" : method, (long long)n_trainable, r.np, bname, megabytes(base_bytes),
            mapped_note, megabytes(f32_base), ename, hname, (long long)tr.data.n,
            tr.data.loss_mask ? " (prompt/response pairs: responses scored)" : "");
    if (pc.method == QTC_PEFT_LORA)
        fprintf(stderr, "qlora-train: LoRA rank %d, alpha %g (scale %g%s), targets %s, dropout %g\n", pc.r, pc.alpha,
                r.p->scaling, pc.rslora ? ", rsLoRA" : "", pc.target, pc.dropout);
    tr.model = r.m;
    tr.save = save_checkpoint;
    tr.save_ctx = &r;
    char title[256];
    snprintf(title, sizeof title, "qlora-train %s (base %s): cross-entropy", qlora ? "qlora" : method, bname);
    int stopped;
    /* adapters leave the head a plain matmul: the loss fuses it (no batch logits) */
    qtc_lm_loss loss = {r.m, NULL, NULL, training, r.p, 1};
    if ((rc = cli_trainer_run(&tr, r.opt, r.params, r.np, first_step, qtc_lm_loss_fn, &loss, title, "eval loss",
                              &stopped)) ||
        stopped)
        goto done;
    if (qtc_peft_save(r.p, out, gguf, argv[optind], &err) != QTC_OK) {
        rc = cli_fail(&err);
        goto done;
    }
    fprintf(stderr, "qlora-train: wrote %s (%s)\n", out, gguf ? "GGUF LoRA adapter" : "PEFT folder");
done:
    cli_trainer_free(&tr);
    qtc_adamw_free(r.opt);
    qtc_llama_free(r.m);
    qtc_peft_free(r.p);
    free(r.params);
    free(r.names);
    free(r.name_ptr);
    qtc_model_close(src);
    return rc;
}
