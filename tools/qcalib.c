/* qcalib: runs calibration text through a model and turns what the
 * activations look like into activation ranges (a calibration file), an
 * importance matrix (llama.cpp's imatrix GGUF), or calibrated weights (GPTQ,
 * AWQ, SmoothQuant), a layer at a time when weights are calibrated.
 *
 *   qcalib MODEL --data calib.txt [--tokens N] [--ctx T] [--method minmax|percentile|mse|kl]
 *          [--imatrix OUT.gguf] [--gptq|--awq|--smoothquant] [--wbits 4 --group 32]
 *          [-o CALIB.json|MODEL] [--plot DIR] [--json]
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cJSON.h>

#include "qtc/calibrate.h"
#include "qtc/plot.h"
#include "qtc/runtime.h"

#include "cli.h"

static const char *usage_text =
    "usage: qcalib MODEL --data FILE [-o CALIB.json | -o MODEL --gptq] [--imatrix OUT.gguf] [options]\n"
    "\n"
    "  --data FILE        calibration text (or a qtc token file)\n"
    "  --tokens N         calibrate on the first N tokens (default 65536; 0: all)\n"
    "  --ctx T            tokens per window (default 128); --batch B windows per pass (default 8)\n"
    "  --method M         activation ranges: minmax (default), percentile, mse or kl\n"
    "  --percentile P     for --method percentile (default 99.99: 0.01% clipped on each side)\n"
    "  --abits B          activation bits the ranges are for (default 8)\n"
    "  --per-channel      also each input channel's observed range and parameters (--method minmax),\n"
    "                     for qeval --act-calib\n"
    "  -o CALIB.json      the calibration file: per linear weight, its input's static range,\n"
    "                     scale and zero point, with the data's sha256, tokens, ctx and seed\n"
    "  --imatrix OUT.gguf the importance matrix (mean x^2 per input channel) in llama.cpp's format\n"
    "  --gptq             GPTQ the linear weights to --wbits B --group G (default 4, 32; 0 per channel,\n"
    "                     -1 per tensor) [--asym] [--act-order] [--damp D (0.01)], written to -o MODEL\n"
    "                     (safetensors, an HF folder; the format from --format or the name); sequential:\n"
    "                     each input group (q/k/v, o, gate/up, down) calibrated on what the quantized\n"
    "                     groups and layers before it compute (--no-sequential: on the float model's\n"
    "                     inputs); an HF folder gets GPTQ's own layout (qweight, qzeros, scales,\n"
    "                     g_idx; 2, 4 or 8 bits), a .safetensors compressed-tensors' (--layout gptq|\n"
    "                     compressed-tensors to choose)\n"
    "  --awq              AWQ: per-input-channel scales mean|x|^alpha (alpha searched on a 20-point\n"
    "                     grid per input group for the least output error), folded into the RMSNorm\n"
    "                     weights (q/k/v, gate/up), v_proj (o_proj, without GQA) and up_proj\n"
    "                     (down_proj); then each group of every weight but q/k clipped to the range\n"
    "                     (max|w| shrunk 0-45%) with the least output error (--no-clip: not), and\n"
    "                     --wbits/--group round to nearest, written to -o MODEL\n"
    "  --smoothquant      SmoothQuant for W8A8: per-channel s = max|x|^A / max|W|^(1-A) (--alpha A,\n"
    "                     default 0.5) folded into the RMSNorm weights before q/k/v and gate/up;\n"
    "                     weights stored int8 per channel (or --wbits/--group) to -o MODEL, and the\n"
    "                     smoothed model's input ranges (--method) to --ranges FILE.json\n"
    "  --ranges FILE.json with a weight method: the calibration file of the model written to -o\n"
    "  --plot DIR         DIR/<weight>.svg: each linear input's histogram (log scale) with the chosen\n"
    "                     range, and DIR/index.html showing them all\n"
    "  --json             a JSON summary per tensor on standard output\n"
    "  --tokenizer FILE --threads N --seed S (recorded)\n"
    "\n"
    "Exit status: 0 done, 1 usage, 2 bad input, 3 I/O, 4 numerical failure.\n";

static void show_progress(void *ctx, int64_t done, int64_t total)
{
    (void)ctx;
    if (isatty(STDERR_FILENO))
        fprintf(stderr, "\rqcalib: %3.0f%% calibrated%s", 100.0 * (double)done / (double)total, done == total ? "\n" : "");
}

int main(int argc, char **argv)
{
    cli_init("qcalib", usage_text, argv);
    static const struct option opts[] = {
        {"data", required_argument, 0, 'd'},    {"tokens", required_argument, 0, 'n'},
        {"ctx", required_argument, 0, 'c'},     {"batch", required_argument, 0, 'b'},
        {"method", required_argument, 0, 'm'},  {"percentile", required_argument, 0, 'p'},
        {"abits", required_argument, 0, 'A'},   {"imatrix", required_argument, 0, 'i'},
        {"gptq", no_argument, 0, 'G'},          {"wbits", required_argument, 0, 'w'},
        {"group", required_argument, 0, 'g'},   {"asym", no_argument, 0, 'a'},
        {"act-order", no_argument, 0, 'O'},     {"damp", required_argument, 0, 'D'},
        {"format", required_argument, 0, 'f'},  {"json", no_argument, 0, 'J'},
        {"tokenizer", required_argument, 0, 'k'}, {"threads", required_argument, 0, 'j'},
        {"seed", required_argument, 0, 's'},    {"output", required_argument, 0, 'o'},
        {"awq", no_argument, 0, 'W'},           {"smoothquant", no_argument, 0, 'S'},
        {"alpha", required_argument, 0, 'l'},   {"ranges", required_argument, 0, 'r'},
        {"plot", required_argument, 0, 'P'},    {"no-sequential", no_argument, 0, 'Q'},
        {"layout", required_argument, 0, 'y'},  {"no-clip", no_argument, 0, 'K'},
        {"per-channel", no_argument, 0, 'H'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    const char *data_path = NULL, *out = NULL, *imatrix = NULL, *tokenizer = NULL, *ranges = NULL, *plot = NULL;
    double alpha = 0.5;
    int64_t tokens = 65536;
    int per_channel = 0, clip = 1, layout = -1, sequential = 1, ctx = 128, batch = 8, abits = 8, gptq = 0, awq = 0, smooth = 0, wbits_given = 0, wbits = 4, group = 32, sym = 1, threads = 0, as_json = 0;
    double percentile = 99.99;
    uint64_t seed = 0;
    qtc_range_method method = QTC_RANGE_MINMAX;
    qtc_gptq_opts go = {0.01, 0};
    qtc_format fmt = QTC_FMT_UNKNOWN;
    int c;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        char *end = NULL;
        switch (c) {
        case 'd': data_path = optarg; break;
        case 'n': tokens = strtoll(optarg, &end, 10); if (*end || tokens < 0) cli_usage("--tokens takes a number"); break;
        case 'c': ctx = (int)strtol(optarg, &end, 10); if (*end || ctx < 2) cli_usage("--ctx takes a number of at least 2"); break;
        case 'b': batch = (int)strtol(optarg, &end, 10); if (*end || batch < 1) cli_usage("--batch takes a positive number"); break;
        case 'm': if (qtc_range_method_parse(optarg, &method)) cli_usage("--method is minmax, percentile, mse or kl"); break;
        case 'p': percentile = strtod(optarg, &end); if (*end || !(percentile > 50 && percentile <= 100)) cli_usage("--percentile is in (50, 100]"); break;
        case 'A': abits = (int)strtol(optarg, &end, 10); if (*end || abits < 2 || abits > 8) cli_usage("--abits is 2..8"); break;
        case 'i': imatrix = optarg; break;
        case 'G': gptq = 1; break;
        case 'W': awq = 1; break;
        case 'S': smooth = 1; break;
        case 'l': alpha = strtod(optarg, &end); if (*end || !(alpha >= 0 && alpha <= 1)) cli_usage("--alpha is in [0, 1]"); break;
        case 'r': ranges = optarg; break;
        case 'P': plot = optarg; break;
        case 'w': wbits = (int)strtol(optarg, &end, 10); wbits_given = 1; if (*end || wbits < 2 || wbits > 8) cli_usage("--wbits is 2..8"); break;
        case 'g': group = (int)strtol(optarg, &end, 10); wbits_given = 1; if (*end || group < -1) cli_usage("--group takes a size, 0 or -1"); break;
        case 'a': sym = 0; break;
        case 'O': go.act_order = 1; break;
        case 'Q': sequential = 0; break;
        case 'K': clip = 0; break;
        case 'H': per_channel = 1; break;
        case 'y':
            if (strcmp(optarg, "gptq") == 0) layout = 1;
            else if (strcmp(optarg, "compressed-tensors") == 0) layout = 0;
            else cli_usage("--layout is gptq or compressed-tensors");
            break;
        case 'D': go.damp = strtod(optarg, &end); if (*end || !(go.damp >= 0)) cli_usage("--damp takes a number >= 0"); break;
        case 'f': fmt = qtc_format_from_name(optarg); if (fmt == QTC_FMT_UNKNOWN) cli_usage("--format is safetensors, gguf or hf"); break;
        case 'J': as_json = 1; break;
        case 'k': tokenizer = optarg; break;
        case 'j': threads = atoi(optarg); if (threads <= 0) cli_usage("--threads takes a positive number"); break;
        case 's': seed = strtoull(optarg, &end, 10); if (*end) cli_usage("--seed takes a number"); break;
        case 'o': out = optarg; break;
        case 'h': fputs(usage_text, stdout); return 0;
        default: cli_usage("bad option");
        }
    }
    if (optind != argc - 1)
        cli_usage(optind < argc ? "one model only" : "no model");
    if (!data_path)
        cli_usage("give --data FILE");
    size_t olen = out ? strlen(out) : 0;
    int out_json = out && olen > 5 && strcmp(out + olen - 5, ".json") == 0;
    if (!out && !imatrix && !as_json && !plot)
        cli_usage("nothing to write: give -o CALIB.json, -o MODEL with --gptq, --imatrix OUT.gguf, --plot DIR or --json");
    if (gptq + awq + smooth > 1)
        cli_usage("one weight method: --gptq, --awq or --smoothquant");
    if ((gptq || awq || smooth) && (!out || out_json))
        cli_usage("--gptq, --awq and --smoothquant write a model: give -o MODEL (.safetensors or a folder)");
    if (out && !out_json && !gptq && !awq && !smooth)
        cli_usage("-o MODEL needs a weight method (--gptq, --awq, --smoothquant); a calibration file ends in .json");
    if (per_channel && method != QTC_RANGE_MINMAX)
        cli_usage("--per-channel ranges are min-max (each channel's observed range): use --method minmax");
    if (ranges && !smooth && !awq)
        cli_usage("--ranges goes with --smoothquant or --awq (without them, -o FILE.json is the calibration file)");
    if (smooth && !wbits_given) { /* W8A8: int8 weights per channel */
        wbits = 8;
        group = 0;
    }
    qtc_target to = {1, QTC_F32, {QTC_QK_INT, wbits, group, sym, 0}};
    if (gptq || awq || smooth) {
        if (fmt == QTC_FMT_UNKNOWN)
            fmt = strcmp(out, "-") == 0 ? QTC_FMT_SAFETENSORS : qtc_format_from_path(out);
        if (fmt == QTC_FMT_UNKNOWN || fmt == QTC_FMT_GGUF)
            cli_usage("GPTQ and AWQ models are integer schemes: write safetensors or an HF folder");
    }
    if (layout < 0) /* an HF folder of GPTQ weights takes GPTQ's own layout */
        layout = gptq && fmt == QTC_FMT_HF;
    if (layout == 1 && !gptq)
        cli_usage("--layout gptq goes with --gptq");
    qtc_set_threads(threads);
    qtc_error err;
    int rc = 0;
    qtc_model_file *src = qtc_model_open(argv[optind], &err);
    qtc_llama *m = NULL;
    qtc_tokenizer *tok = NULL;
    qtc_tokens data = {0};
    qtc_calib *cb = NULL;
    qtc_calib_source prov = {data_path, "", 0, ctx, seed};
    qtc_gptq_run gr = {0};
    qtc_awq_fold ar = {0};
    float *before = NULL; /* one window's logits before folding, to check that folding keeps the function */
    if (!src || !(m = qtc_llama_from_model(src, &err)) ||
        !(tok = tokenizer ? qtc_tokenizer_load(tokenizer, src->config.vocab, &err) : qtc_tokenizer_for_model(src, &err)) ||
        qtc_tokens_load(tok, data_path, src->config.vocab, &data, &err) != QTC_OK ||
        qtc_sha256_file(data_path, prov.sha256, &err) != QTC_OK || !(cb = qtc_calib_new(&src->config, gptq || awq, &err))) {
        rc = cli_fail(&err);
        goto done;
    }
    if ((rc = cli_check_ctx(ctx, &src->config)))
        goto done;
    qtc_calib_hooks ch = {show_progress, NULL, 0, 0, NULL};
    if (gptq) { /* a layer at a time, each layer's inputs from the quantized layers before it */
        if (qtc_gptq_run_init(&gr, m->c.n_layers, &to.scheme, &go, sequential, &err) != QTC_OK) {
            rc = cli_fail(&err);
            goto done;
        }
        ch = (qtc_calib_hooks){show_progress, qtc_gptq_layer, sequential, sequential, &gr};
    } else if (awq) {
        if (qtc_awq_fold_init(&ar, m->c.n_layers, &to.scheme, clip, &err) != QTC_OK) {
            rc = cli_fail(&err);
            goto done;
        }
        ch = (qtc_calib_hooks){show_progress, qtc_awq_fold_layer, 0, 0, &ar};
    }
    if ((awq || smooth) && !(before = qtc_fold_logits(m, &data, ctx, &err))) {
        rc = cli_fail(&err);
        goto done;
    }
    if (qtc_calib_run(cb, m, &data, ctx, batch, tokens, &ch, &err) != QTC_OK) {
        rc = cli_fail(&err);
        goto done;
    }
    prov.tokens = cb->tokens;
    fprintf(stderr, "qcalib: %s: %lld tokens of %s (%lld windows of %d), sha256 %.16s...\n", argv[optind],
            (long long)cb->tokens, data_path, (long long)cb->windows, ctx, prov.sha256);
    if (out_json) {
        if (qtc_calib_save_json(cb, out, method, percentile, abits, per_channel, &prov, &err) != QTC_OK) {
            rc = cli_fail(&err);
            goto done;
        }
        fprintf(stderr, "qcalib: wrote %s (%s ranges for int%d inputs)\n", out, qtc_range_method_name(method), abits);
    }
    if (plot) {
        if (qtc_calib_plot(cb, plot, method, percentile, abits, &err) != QTC_OK) {
            rc = cli_fail(&err);
            goto done;
        }
        fprintf(stderr, "qcalib: wrote %s/index.html and %d histograms\n", plot, cb->n_layers * QTC_N_LINEAR);
    }
    if (imatrix) {
        if (qtc_imatrix_save(cb, &src->config, imatrix, data_path, ctx, &err) != QTC_OK) {
            rc = cli_fail(&err);
            goto done;
        }
        fprintf(stderr, "qcalib: wrote %s (importance matrix, %lld chunks of %d)\n", imatrix, (long long)cb->windows, ctx);
    }
    if (gptq) {
        char *gcfg = layout == 1 ? qtc_gptq_layout_config(&to.scheme, go.act_order, go.damp, sequential) : NULL;
        qtc_convert_hooks hooks = {.qweight = qtc_gptq_weight, .gptq_config = gcfg, .ctx = &gr};
        qtc_convert_summary s;
        qtc_status st = qtc_convert(src, out, fmt, qtc_path_wants_zstd(out), &to, NULL, 0, &hooks, &s, &err);
        free(gcfg);
        if (st != QTC_OK) {
            rc = cli_fail(&err);
            goto done;
        }
        char name[64];
        qtc_qscheme_name(&to.scheme, name, sizeof name);
        fprintf(stderr, "qcalib: wrote %s: %d weights by GPTQ to %s%s%s, %.3f bits per weight, rel rms err %.3e\n", out,
                gr.handed, name,
                go.act_order ? (sequential ? " (act-order)" : " (act-order, not sequential)") : sequential ? "" : " (not sequential)",
                layout == 1 ? " in GPTQ's layout" : "", s.bits_per_weight, s.rel_rms_err);
    }
    if (awq || smooth) { /* scales folded into the f32 model, which is then written in the scheme */
        double moved = 0;
        if ((smooth && qtc_smoothquant_fold(cb, m, alpha, &err) != QTC_OK) ||
            qtc_fold_moved(m, &data, ctx, before, &moved, &err) != QTC_OK) {
            rc = cli_fail(&err);
            goto done;
        }
        if (awq) {
            fprintf(stderr, "qcalib: AWQ: output error %.4g -> %.4g (%.1f%% of round-to-nearest's)\n", ar.err_rtn,
                    ar.err_awq, ar.err_rtn > 0 ? 100 * ar.err_awq / ar.err_rtn : 0);
            if (ar.clip)
                fprintf(stderr, "qcalib: AWQ clipping: group output error %.4g -> %.4g (%.1f%%)\n", ar.err_clip_before,
                        ar.err_clip_after, ar.err_clip_before > 0 ? 100 * ar.err_clip_after / ar.err_clip_before : 0);
        } else {
            fprintf(stderr, "qcalib: SmoothQuant: alpha %.2f folded into the RMSNorm weights before q/k/v and gate/up\n", alpha);
        }
        fprintf(stderr, "qcalib: folding moved the float model's logits by at most %.2e\n", moved);
        qtc_awq_apply_clips(&ar, m); /* AWQ's clipping: after the check, as it changes the function */
        if (ranges) { /* the inputs of the model as written: a second pass over the same windows */
            qtc_calib *cb2 = qtc_calib_new(&src->config, 0, &err);
            if (!cb2 || qtc_calib_run(cb2, m, &data, ctx, batch, tokens, NULL, &err) != QTC_OK ||
                qtc_calib_save_json(cb2, ranges, method, percentile, abits, per_channel, &prov, &err) != QTC_OK) {
                qtc_calib_free(cb2);
                rc = cli_fail(&err);
                goto done;
            }
            qtc_calib_free(cb2);
            fprintf(stderr, "qcalib: wrote %s (%s ranges of the written model's inputs)\n", ranges, qtc_range_method_name(method));
        }
        qtc_convert_hooks hooks = {.transform = qtc_folded_weight, .ctx = m};
        qtc_convert_summary s;
        if (qtc_convert(src, out, fmt, qtc_path_wants_zstd(out), &to, NULL, 0, &hooks, &s, &err) != QTC_OK) {
            rc = cli_fail(&err);
            goto done;
        }
        char name[64];
        qtc_qscheme_name(&to.scheme, name, sizeof name);
        fprintf(stderr, "qcalib: wrote %s: %s weights in %s, %.3f bits per weight\n", out, awq ? "AWQ-scaled" : "smoothed", name,
                s.bits_per_weight);
    }
    if (as_json) {
        cJSON *o = cJSON_CreateObject(), *t = cJSON_CreateArray();
        cJSON_AddStringToObject(o, "model", argv[optind]);
        cJSON_AddNumberToObject(o, "tokens", (double)cb->tokens);
        cJSON_AddStringToObject(o, "method", qtc_range_method_name(method));
        for (int i = 0; i < cb->n_layers * QTC_N_LINEAR; i++) {
            const qtc_act_stats *a = &cb->s[i];
            double lo, hi, mean_sq = 0;
            qtc_act_range(a, method, percentile, abits, &lo, &hi);
            for (int64_t k = 0; k < a->in; k++)
                mean_sq += a->sum_sq[k];
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "weight", a->weight);
            cJSON_AddNumberToObject(e, "min", a->min);
            cJSON_AddNumberToObject(e, "max", a->max);
            cJSON_AddNumberToObject(e, "range_lo", lo);
            cJSON_AddNumberToObject(e, "range_hi", hi);
            cJSON_AddNumberToObject(e, "mean_sq", mean_sq / (double)(a->rows * a->in));
            cJSON_AddItemToArray(t, e);
        }
        cJSON_AddItemToObject(o, "tensors", t);
        char *text = cJSON_Print(o);
        printf("%s\n", text);
        cJSON_free(text);
        cJSON_Delete(o);
    }
done:
    free(before);
    qtc_awq_fold_free(&ar);
    qtc_gptq_run_free(&gr);
    qtc_calib_free(cb);
    qtc_tokens_free(&data);
    qtc_tokenizer_free(tok);
    qtc_llama_free(m);
    qtc_model_close(src);
    if (fclose(stdout) != 0 && !rc)
        rc = 3;
    return rc;
}
