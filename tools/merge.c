/* merge: folds LoRA adapters into a base model.
 *
 *   merge BASE ADAPTER [ADAPTER ...] [--weights 0.7,0.3] [--method sum|cat|ties|dare] [--density D --seed S]
 *         [--to TYPE] -o OUT|-
 *
 * Each weight an adapter targets becomes W + delta, W the base as stored
 * (dequantized when quantized: the weights the adapter was trained against),
 * and is stored again as the base stored it (re-quantized) unless --to says
 * otherwise. Tensors stream one at a time. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/lora.h"
#include "qtc/runtime.h"

#include "cli.h"

static const char *usage_text =
    "usage: merge BASE ADAPTER [ADAPTER ...] [-o OUT] [options]\n"
    "\n"
    "  ADAPTER            a PEFT LoRA folder or a GGUF LoRA adapter\n"
    "  --weights W,W,...  one weight per adapter (default 1 each)\n"
    "  --method M         sum (default): W + sum_i w_i (alpha_i/r_i) B_i A_i, exactly;\n"
    "                     cat: the same through the stacked adapter [w_i s_i A_i], [B_i];\n"
    "                     ties: trim each delta to its top --density share by magnitude, elect\n"
    "                     each entry's sign by the summed deltas, average the agreeing entries;\n"
    "                     dare: keep each delta entry with probability --density (seeded by\n"
    "                     --seed), rescale by 1/density, sum\n"
    "  --density D        for ties and dare (default 0.5)\n"
    "  --seed S           dare's masks (default 0)\n"
    "  --to TYPE          store as TYPE (f32, f16, q8_0, q4_0, int8, int4-g32, nf4, ...); default:\n"
    "                     as the base stores each tensor, re-quantized after merging\n"
    "  -o OUT             output model (default -, standard output: safetensors); --format\n"
    "                     safetensors|gguf|hf; .zst or --zstd compresses\n"
    "  --threads N\n"
    "\n"
    "Exit status: 0 done, 1 usage, 2 bad input (an adapter that does not fit the base), 3 I/O, 4 numerical.\n";

int main(int argc, char **argv)
{
    cli_init("merge", usage_text, argv);
    static const struct option opts[] = {
        {"weights", required_argument, 0, 'w'}, {"method", required_argument, 0, 'm'},
        {"density", required_argument, 0, 'd'}, {"seed", required_argument, 0, 's'},
        {"to", required_argument, 0, 't'},      {"format", required_argument, 0, 'f'},
        {"zstd", no_argument, 0, 'z'},          {"threads", required_argument, 0, 'j'},
        {"output", required_argument, 0, 'o'},  {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *out = "-", *weights_arg = NULL, *to_name = NULL;
    qtc_merge_opts mo = {QTC_MERGE_SUM, 0.5f, 0};
    qtc_format fmt = QTC_FMT_UNKNOWN;
    int compress = 0, threads = 0, c;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        char *end = NULL;
        switch (c) {
        case 'w': weights_arg = optarg; break;
        case 'm':
            if (strcmp(optarg, "sum") == 0) mo.method = QTC_MERGE_SUM;
            else if (strcmp(optarg, "cat") == 0) mo.method = QTC_MERGE_CAT;
            else if (strcmp(optarg, "ties") == 0) mo.method = QTC_MERGE_TIES;
            else if (strcmp(optarg, "dare") == 0) mo.method = QTC_MERGE_DARE;
            else cli_usage("--method is sum, cat, ties or dare");
            break;
        case 'd': mo.density = strtof(optarg, &end); if (*end || !(mo.density > 0 && mo.density <= 1)) cli_usage("--density is in (0, 1]"); break;
        case 's': mo.seed = strtoull(optarg, &end, 10); if (*end) cli_usage("--seed takes a number"); break;
        case 't': to_name = optarg; break;
        case 'f': fmt = qtc_format_from_name(optarg); if (fmt == QTC_FMT_UNKNOWN) cli_usage("--format is safetensors, gguf or hf"); break;
        case 'z': compress = 1; break;
        case 'j': threads = cli_threads(optarg); break;
        case 'o': out = optarg; break;
        case 'h': fputs(usage_text, stdout); return 0;
        default: cli_usage("bad option");
        }
    }
    int n = argc - optind - 1;
    if (n < 1)
        cli_usage(n < 0 ? "no base model" : "no adapter");
    float *w = malloc((size_t)n * sizeof *w);
    qtc_peft **ad = calloc((size_t)n, sizeof *ad);
    if (!w || !ad)
        return cli_error(3, "out of memory");
    for (int i = 0; i < n; i++)
        w[i] = 1.0f;
    if (weights_arg) {
        const char *s = weights_arg;
        for (int i = 0; i < n; i++) {
            char *end;
            w[i] = strtof(s, &end);
            if (end == s || (i < n - 1 && *end != ',') || (i == n - 1 && *end))
                cli_usage("--weights needs one number per adapter, separated by commas");
            s = end + 1;
        }
    }
    if (fmt == QTC_FMT_UNKNOWN)
        fmt = strcmp(out, "-") == 0 ? QTC_FMT_SAFETENSORS : qtc_format_from_path(out);
    if (fmt == QTC_FMT_UNKNOWN)
        cli_usage("cannot tell the output format from its name: use --format");
    qtc_target to;
    if (to_name && qtc_target_parse(to_name, &to) != 0)
        cli_usage("unknown --to type");
    if (to_name && to.is_scheme && fmt == QTC_FMT_GGUF)
        cli_usage("GGUF cannot hold integer or NF4 schemes: write safetensors or an HF folder, or give --to q4_0, q8_0, ...");
    compress |= qtc_path_wants_zstd(out);
    qtc_set_threads(threads);
    qtc_error err;
    int rc = 0;
    qtc_model_file *base = qtc_model_open(argv[optind], &err);
    if (!base)
        goto fail;
    if (!base->has_config) {
        qtc_error_set(&err, QTC_ERR_INPUT, "%s: no llama configuration to check the adapters against", base->path);
        goto fail;
    }
    for (int i = 0; i < n; i++)
        if (!(ad[i] = qtc_peft_load(argv[optind + 1 + i], &base->config, &err)))
            goto fail;
    qtc_convert_summary s;
    if (qtc_merge_model(base, ad, w, n, &mo, out, fmt, compress, to_name ? &to : NULL, &s, &err) != QTC_OK)
        goto fail;
    static const char *names[] = {"sum", "cat", "ties", "dare"};
    fprintf(stderr, "merge: %s + %d adapter%s (%s) -> %s: %.3f bits per weight\n", argv[optind], n, n > 1 ? "s" : "",
            names[mo.method], strcmp(out, "-") == 0 ? "<stdout>" : out, s.bits_per_weight);
    goto done;
fail:
    rc = cli_fail(&err);
done:
    for (int i = 0; i < n; i++)
        qtc_peft_free(ad[i]);
    free(ad);
    free(w);
    qtc_model_close(base);
    return rc;
}
