/* qeval: score a model on text (perplexity; KL divergence, top-1 agreement and
 * both perplexities against a reference model), or generate from a prompt.
 *
 *   qeval MODEL --text FILE [--ctx N] [--ref MODEL] [--batch B] [--windows N] [--json]
 *   qeval MODEL --generate "Once upon a time" [-n 200] [--temp T --top-p P --seed S]
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>

#include "qtc/calibrate.h"
#include "qtc/lora.h"
#include "qtc/qat.h"
#include "qtc/model.h"
#include "qtc/rng.h"
#include "qtc/runtime.h"

#include "cli.h"

static const char *usage_text =
    "usage: qeval MODEL --text FILE [--ctx N] [--ref MODEL] [--batch B] [--windows N] [--json]\n"
    "       qeval MODEL --generate PROMPT [-n N] [--temp T] [--top-p P] [--seed S]\n"
    "\n"
    "MODEL is any model qconv reads (quantized weights are dequantized on load).\n"
    "  --text FILE       score FILE: documents split at <|endoftext|> lines (else one per line), each\n"
    "                    after BOS, cut into consecutive windows of --ctx tokens (default 128); every\n"
    "                    prediction after a window's first token is scored\n"
    "  --ref MODEL       also score REF on the same windows: mean KL(REF || MODEL), top-1 agreement\n"
    "  --act-calib FILE  quantize every linear layer's input as the calibration file from qcalib\n"
    "                    says (static per-tensor scale and zero point: W8A8 with int8 weights)\n"
    "  --adapter A       run MODEL with an adapter (a PEFT folder: LoRA, bottleneck or prefix, or a\n"
    "                    GGUF LoRA), for scoring and generation\n"
    "  --batch B         windows per forward pass (default 8); --windows N scores the first N only\n"
    "  --json            the scores as one JSON document on standard output\n"
    "  --save-tokens OUT also write the text's tokens as a qtc token file (FILE may be one already)\n"
    "  --generate TEXT   continue TEXT (after BOS); greedy unless --temp T > 0, then top-p sampling\n"
    "                    (--top-p, default 0.9) seeded by --seed (default 0); -n tokens (default 200);\n"
    "                    stops early at BOS or EOS\n"
    "  --tokenizer FILE  a GGUF, an HF tokenizer.json or a llama2.c tokenizer.bin (default: the\n"
    "                    model's own, or a tokenizer.bin beside a llama2.c checkpoint)\n"
    "  --threads N       threads (default: all cores)\n"
    "  -h, --help        this help\n"
    "\n"
    "Exit status: 0 done, 1 usage, 2 bad input, 3 I/O, 4 numerical failure.\n";

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void show_progress(void *ctx, int64_t done, int64_t total)
{
    (void)ctx;
    if (isatty(STDERR_FILENO))
        fprintf(stderr, "\rqeval: %lld/%lld windows%s", (long long)done, (long long)total, done == total ? "\n" : "");
}

/* Loads a model and its tokenizer (tokenizer: a path or NULL for the model's own). */
/* The llama of a model file, with its tokenizer when tok is given and its
 * static input quantization (compressed-tensors' input_scale) when iq is. */
static qtc_llama *load(const char *path, const char *tokenizer, qtc_tokenizer **tok, qtc_input_quant *iq, qtc_error *err)
{
    qtc_model_file *f = qtc_model_open(path, err);
    if (!f)
        return NULL;
    qtc_llama *m = qtc_llama_from_model(f, err);
    if (m && iq && qtc_model_input_quant(f, iq, err) != QTC_OK) {
        qtc_llama_free(m);
        m = NULL;
    }
    if (m && tok) {
        *tok = tokenizer ? qtc_tokenizer_load(tokenizer, m->c.vocab, err) : qtc_tokenizer_for_model(f, err);
        if (!*tok) {
            qtc_llama_free(m);
            m = NULL;
        } else if (qtc_tokenizer_vocab(*tok) != m->c.vocab) {
            qtc_error_set(err, QTC_ERR_INPUT, "%s: the tokenizer has %d tokens, the model %d", path,
                          qtc_tokenizer_vocab(*tok), m->c.vocab);
            qtc_tokenizer_free(*tok);
            qtc_llama_free(m);
            m = NULL;
        }
    }
    qtc_model_close(f);
    return m;
}

typedef struct printer {
    qtc_tokenizer *tok;
} printer;

/* each generated token's text as it comes */
static void print_piece(void *ctx, int32_t prev, int32_t next)
{
    printer *p = ctx;
    fputs(qtc_tokenizer_piece(p->tok, prev, next), stdout);
    fflush(stdout);
}

static int generate(qtc_llama *m, qtc_tokenizer *tok, const char *prompt, int n, float temp, float top_p, uint64_t seed)
{
    qtc_error err;
    int32_t *ids = malloc((strlen(prompt) + 3) * sizeof *ids);
    if (!ids)
        return cli_error(3, "out of memory");
    int64_t np = qtc_tokenizer_encode(tok, prompt, 1, 0, ids, (int64_t)strlen(prompt) + 3, &err);
    if (np < 0 || np + n > m->c.ctx) { /* refused before anything is printed */
        if (np >= 0)
            qtc_error_set(&err, QTC_ERR_USAGE, "%lld prompt tokens and %d more exceed the model's context of %d",
                          (long long)np, n, m->c.ctx);
        free(ids);
        return cli_fail(&err);
    }
    qtc_rng rng;
    qtc_rng_seed(&rng, seed);
    fputs(prompt, stdout);
    double t0 = now();
    const int32_t stop[2] = {qtc_tokenizer_bos(tok), qtc_tokenizer_eos(tok)};
    printer p = {tok};
    int generated = 0;
    qtc_status st = qtc_generate_from(m, ids, np, n, temp, top_p, &rng, stop, 2, print_piece, &p, &generated, &err);
    free(ids);
    if (st != QTC_OK)
        return cli_fail(&err);
    double dt = now() - t0;
    fputc('\n', stdout);
    fprintf(stderr, "qeval: %lld prompt tokens, %d generated in %.3f s (%.1f tokens/s)\n", (long long)np, generated, dt,
            dt > 0 ? (np + generated) / dt : 0);
    return 0;
}

int main(int argc, char **argv)
{
    cli_init("qeval", usage_text, argv);
    static const struct option opts[] = {
        {"text", required_argument, 0, 'x'},  {"ctx", required_argument, 0, 'c'},
        {"ref", required_argument, 0, 'r'},   {"batch", required_argument, 0, 'b'},
        {"windows", required_argument, 0, 'w'}, {"json", no_argument, 0, 'J'},
        {"generate", required_argument, 0, 'g'}, {"temp", required_argument, 0, 'T'},
        {"top-p", required_argument, 0, 'p'}, {"seed", required_argument, 0, 's'},
        {"tokenizer", required_argument, 0, 'k'}, {"threads", required_argument, 0, 'j'},
        {"save-tokens", required_argument, 0, 'S'}, {"adapter", required_argument, 0, 'a'},
        {"act-calib", required_argument, 0, 'C'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *act_calib = NULL, *adapter = NULL, *text = NULL, *ref_path = NULL, *prompt = NULL, *tokenizer = NULL, *save_tokens = NULL;
    int ctx = 128, batch = 8, as_json = 0, n = 200, threads = 0;
    int64_t windows = 0;
    float temp = 0, top_p = 0.9f;
    uint64_t seed = 0;
    int c;
    while ((c = getopt_long(argc, argv, "n:h", opts, NULL)) != -1) {
        char *end = NULL;
        switch (c) {
        case 'x': text = optarg; break;
        case 'c': ctx = (int)strtol(optarg, &end, 10); if (*end || ctx < 2) cli_usage("--ctx takes a number of at least 2"); break;
        case 'r': ref_path = optarg; break;
        case 'b': batch = (int)strtol(optarg, &end, 10); if (*end || batch < 1) cli_usage("--batch takes a positive number"); break;
        case 'w': windows = strtoll(optarg, &end, 10); if (*end || windows < 1) cli_usage("--windows takes a positive number"); break;
        case 'J': as_json = 1; break;
        case 'g': prompt = optarg; break;
        case 'n': n = (int)strtol(optarg, &end, 10); if (*end || n < 1) cli_usage("-n takes a positive number"); break;
        case 'T': temp = strtof(optarg, &end); if (*end || !(temp >= 0)) cli_usage("--temp takes a number >= 0"); break;
        case 'p': top_p = strtof(optarg, &end); if (*end || !(top_p > 0 && top_p <= 1)) cli_usage("--top-p takes a number in (0, 1]"); break;
        case 's': seed = strtoull(optarg, &end, 10); if (*end) cli_usage("--seed takes a number"); break;
        case 'k': tokenizer = optarg; break;
        case 'S': save_tokens = optarg; break;
        case 'a': adapter = optarg; break;
        case 'C': act_calib = optarg; break;
        case 'j': threads = atoi(optarg); if (threads <= 0) cli_usage("--threads takes a positive number"); break;
        case 'h': fputs(usage_text, stdout); return 0;
        default: cli_usage("bad option");
        }
    }
    if (optind != argc - 1)
        cli_usage(optind < argc ? "one model only" : "no model");
    if (!!text + !!prompt != 1)
        cli_usage("give --text FILE or --generate PROMPT");
    qtc_set_threads(threads);
    qtc_error err;
    qtc_tokenizer *tok = NULL;
    qtc_input_quant iq = {0};
    qtc_llama *m = load(argv[optind], tokenizer, &tok, &iq, &err), *ref = NULL;
    if (!m)
        return cli_fail(&err);
    if (iq.n && (act_calib || adapter)) {
        fprintf(stderr, "qeval: note: %s: the model's static input scales are not applied (%s)\n", argv[optind],
                act_calib ? "--act-calib replaces them" : "--adapter takes the linear layers");
        qtc_input_quant_free(&iq);
    }
    qtc_peft *peft = NULL;
    if (adapter && !(peft = qtc_peft_load(adapter, &m->c, &err))) {
        qtc_llama_free(m);
        qtc_tokenizer_free(tok);
        return cli_fail(&err);
    }
    if (peft)
        qtc_peft_attach(peft, m);
    if (act_calib) {
        if (peft) {
            qtc_peft_free(peft);
            qtc_llama_free(m);
            qtc_tokenizer_free(tok);
            cli_usage("--act-calib and --adapter do not combine yet");
        }
    }
    qtc_qat *aq = NULL;
    if (act_calib || iq.n) { /* every linear input the file or the model's scales name fake-quantized with them */
        const int n_lin = m->c.n_layers * QTC_N_LINEAR;
        qtc_act_qparams *ap = act_calib ? calloc((size_t)n_lin, sizeof *ap) : NULL;
        qtc_qat_options o = {.inputs = act_calib ? QTC_QAT_INPUTS_STATIC : QTC_QAT_INPUTS_MODEL, .abits = iq.bits,
                             .calib = ap, .input_quant = &iq};
        qtc_status st = QTC_OK;
        if (act_calib && !ap)
            st = qtc_error_set(&err, QTC_ERR_NOMEM, "out of memory");
        else if (act_calib)
            st = qtc_calib_load_json(act_calib, m->c.n_layers, ap, &o.abits, &err);
        if (st == QTC_OK && !(aq = qtc_qat_attach(m, &o, &err))) {
            st = err.code;
            if (act_calib && st == QTC_ERR_INPUT) /* per-channel parameters that do not fit */
                qtc_error_prefix(&err, "%s", act_calib);
        }
        if (!act_calib)
            fprintf(stderr, "qeval: %s: %d linear inputs quantized to int%d with the model's static scales\n", argv[optind],
                    iq.n, iq.bits);
        qtc_input_quant_free(&iq);
        if (ap)
            qtc_act_qparams_free(ap, n_lin);
        free(ap);
        if (st != QTC_OK) {
            qtc_llama_free(m);
            qtc_tokenizer_free(tok);
            return cli_fail(&err);
        }
    }
    int rc = 0;
    if (prompt) {
        rc = generate(m, tok, prompt, n, temp, top_p, seed);
    } else if (!(rc = cli_check_ctx(ctx, &m->c))) {
        qtc_tokens data;
        qtc_eval_result r;
        if (ref_path && !(ref = load(ref_path, NULL, NULL, NULL, &err)))
            rc = cli_fail(&err);
        else if (qtc_tokens_load(tok, text, m->c.vocab, &data, &err) != QTC_OK)
            rc = cli_fail(&err);
        else if (save_tokens && qtc_tokens_save(&data, save_tokens, &err) != QTC_OK) {
            qtc_tokens_free(&data);
            rc = cli_fail(&err);
        }
        else {
            double t0 = now();
            qtc_status st = qtc_eval(m, ref, &data, ctx, batch, windows, show_progress, NULL, &r, &err);
            double dt = now() - t0;
            qtc_tokens_free(&data);
            if (st != QTC_OK) {
                rc = cli_fail(&err);
            } else if (as_json) {
                cJSON *o = cJSON_CreateObject();
                cJSON_AddStringToObject(o, "model", argv[optind]);
                cJSON_AddStringToObject(o, "text", text);
                cJSON_AddNumberToObject(o, "ctx", ctx);
                cJSON_AddNumberToObject(o, "windows", (double)r.windows);
                cJSON_AddNumberToObject(o, "predictions", (double)r.predictions);
                cJSON_AddNumberToObject(o, "nll", r.nll);
                cJSON_AddNumberToObject(o, "ppl", r.ppl);
                cJSON_AddNumberToObject(o, "ppl_se", r.ppl_se);
                if (ref) {
                    cJSON_AddStringToObject(o, "ref", ref_path);
                    cJSON_AddNumberToObject(o, "ref_ppl", r.ref_ppl);
                    cJSON_AddNumberToObject(o, "kld", r.kld);
                    cJSON_AddNumberToObject(o, "kld_se", r.kld_se);
                    cJSON_AddNumberToObject(o, "top1", r.top1);
                }
                cJSON_AddNumberToObject(o, "seconds", dt);
                cJSON_AddNumberToObject(o, "tokens_per_second", dt > 0 ? (double)(r.windows * ctx) / dt : 0);
                char *s = cJSON_Print(o);
                printf("%s\n", s);
                cJSON_free(s);
                cJSON_Delete(o);
            } else {
                printf("perplexity %.4f +/- %.4f over %lld predictions (%lld windows of %d)\n", r.ppl, r.ppl_se,
                       (long long)r.predictions, (long long)r.windows, ctx);
                if (ref)
                    printf("reference perplexity %.4f; KL divergence %.6f +/- %.6f; top-1 agreement %.2f%%\n", r.ref_ppl,
                           r.kld, r.kld_se, 100 * r.top1);
                fprintf(stderr, "qeval: %.2f s, %.0f tokens/s\n", dt, dt > 0 ? (double)(r.windows * ctx) / dt : 0);
            }
        }
    }
    qtc_qat_free(aq);
    qtc_llama_free(m);
    qtc_peft_free(peft);
    qtc_llama_free(ref);
    qtc_tokenizer_free(tok);
    if (fclose(stdout) != 0 && !rc)
        rc = 3;
    return rc;
}
