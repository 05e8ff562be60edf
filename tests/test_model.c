/* test_model.c: the llama model against the README's greedy text (from the
 * llama2.c checkpoint, the HF folder and a GGUF written by qtc), against an
 * independent double-precision forward, the KV-cache path against the full
 * forward, gradients against finite differences, the llama2.c tokenizer,
 * data-free corpora and the export of a llama through qtc_convert. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "llama_ref.h"
#include "qtc/model.h"
#include "qtc/rng.h"
#include "qtc/runtime.h"

static char *readme_greedy_text(void)
{
    FILE *f = fopen(shared_path("models/README.md"), "rb");
    if (!f)
        return NULL;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *a = strstr(buf, "gives exactly:\n```\n");
    if (!a)
        return NULL;
    a += strlen("gives exactly:\n```\n");
    char *b = strstr(a, "\n```");
    if (!b)
        return NULL;
    *b = '\0';
    return a;
}

/* Greedy decoding from BOS, up to n tokens, stopping at BOS (as llama2.c's run.c). */
static char *greedy(qtc_llama *m, const qtc_tokenizer *t, int n)
{
    qtc_error err;
    qtc_graph *g = qtc_graph_new(&err);
    char *out = calloc(1, 16 * (size_t)n + 1);
    int32_t tok = qtc_tokenizer_bos(t);
    for (int pos = 0; pos < n; pos++) {
        const float *lg = qtc_llama_step(m, g, tok, pos, &err);
        if (!lg)
            break;
        int best = 0;
        for (int i = 1; i < m->c.vocab; i++)
            if (lg[i] > lg[best])
                best = i;
        if (best == qtc_tokenizer_bos(t))
            break;
        strcat(out, qtc_tokenizer_piece(t, tok, best));
        tok = best;
    }
    qtc_graph_free(g);
    return out;
}

static int greedy_matches(const char *path, const char *label)
{
    qtc_error err;
    const char *want = readme_greedy_text();
    qtc_model_file *f = qtc_model_open(path, &err);
    qtc_llama *m = f ? qtc_llama_from_model(f, &err) : NULL;
    qtc_tokenizer *t = qtc_tokenizer_load_llama2c(shared_path("models/stories260K/tok512.bin"), 512, &err);
    int ok = want && m && t;
    if (!ok)
        test_fail(__FILE__, __LINE__, "%s: %s", label, err.msg);
    char *got = ok ? greedy(m, t, 200) : NULL;
    if (ok && strcmp(got, want) != 0) {
        size_t i = 0;
        while (got[i] == want[i])
            i++;
        test_fail(__FILE__, __LINE__, "%s: greedy text differs at byte %zu: ...%.30s", label, i, got + (i > 10 ? i - 10 : 0));
        ok = 0;
    }
    free(got);
    qtc_tokenizer_free(t);
    qtc_llama_free(m);
    qtc_model_close(f);
    return ok;
}

TEST(greedy_generation_of_stories260K_is_the_readme_text_from_every_format)
{
    CHECK(greedy_matches(shared_path("models/stories260K/stories260K.bin"), "llama2.c"));
    CHECK(greedy_matches(shared_path("models/stories260K-hf"), "HF folder"));
    /* and from a GGUF written by qtc (interleaved q/k rows, llama.cpp names) */
    qtc_error err;
    qtc_model_file *src = qtc_model_open(shared_path("models/stories260K/stories260K.bin"), &err);
    CHECK(src);
    qtc_out_entry *e = calloc((size_t)src->n_tensors, sizeof *e);
    for (int i = 0; i < src->n_tensors; i++) {
        snprintf(e[i].name, sizeof e[i].name, "%s", src->tensors[i].name);
        e[i].dtype = QTC_F32;
        e[i].ndim = src->tensors[i].ndim;
        memcpy(e[i].ne, src->tensors[i].ne, sizeof e[i].ne);
    }
    char path[] = "/tmp/qtc-model-test-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    qtc_model_writer *w = qtc_writer_open(path, QTC_FMT_GGUF, 0, src, e, src->n_tensors, NULL, &err);
    CHECK_MSG(w, "%s", err.msg);
    for (int i = 0; i < src->n_tensors; i++) {
        qtc_tensor *t = qtc_model_tensor(src, i, &err);
        CHECK(qtc_writer_put(w, i, t, &err) == QTC_OK);
        qtc_tensor_free(t);
    }
    CHECK(qtc_writer_commit(w, &err) == QTC_OK);
    CHECK(greedy_matches(path, "GGUF"));
    remove(path);
    free(e);
    qtc_model_close(src);
}

/* --- against the independent double-precision llama (tests/llama_ref.c) ------------- */

static const int32_t window[] = {1, 403, 407, 261, 378, 274, 427, 285, 330, 1, 259, 302, 300, 34, 299, 415, 265};
#define WINDOW_T ((int)(sizeof window / sizeof *window))

TEST(forward_logits_match_an_independent_double_precision_forward)
{
    qtc_error err;
    qtc_llama *m = qtc_llama_load(shared_path("models/stories260K/stories260K.bin"), &err);
    CHECK_MSG(m, "%s", err.msg);
    qtc_graph *g = qtc_graph_new(&err);
    qtc_tensor *ids = qtc_tensor_wrap(QTC_I32, 2, QTC_SHAPE(1, WINDOW_T), (void *)(uintptr_t)window, NULL, &err);
    qtc_graph_set_recording(g, 0);
    qtc_tensor *logits = qtc_llama_forward(m, g, ids, 0);
    CHECK(logits && logits->ne[2] == 512);
    ref_llama ref;
    ref_from_llama(&ref, m);
    double *want = ref_forward(&ref, window, WINDOW_T);
    ref_free(&ref);
    double scale = 0;
    for (int i = 0; i < WINDOW_T * 512; i++)
        scale = fmax(scale, fabs(want[i]));
    CHECK_CLOSE("logits", (float *)logits->data, want, WINDOW_T * 512, 0, 1e-4 * scale);
    /* the KV-cache path gives the same logits at every position */
    qtc_graph *g2 = qtc_graph_new(&err);
    for (int t = 0; t < WINDOW_T; t++) {
        const float *lg = qtc_llama_step(m, g2, window[t], t, &err);
        CHECK(lg);
        CHECK_CLOSE("cached logits", lg, want + (int64_t)t * 512, 512, 0, 1e-4 * scale);
    }
    free(want);
    qtc_tensor_free(ids);
    qtc_graph_free(g);
    qtc_graph_free(g2);
    qtc_llama_free(m);
}

TEST(model_gradients_match_finite_differences_of_the_double_forward)
{
    qtc_error err;
    qtc_llama *m = qtc_llama_load(shared_path("models/stories260K/stories260K.bin"), &err);
    CHECK_MSG(m, "%s", err.msg);
    enum { T = 9 };
    int32_t tok[T], tgt[T];
    for (int t = 0; t < T; t++) {
        tok[t] = window[t];
        tgt[t] = window[t + 1];
    }
    qtc_tensor *ids = qtc_tensor_wrap(QTC_I32, 2, QTC_SHAPE(1, T), tok, NULL, &err);
    qtc_tensor *targets = qtc_tensor_wrap(QTC_I32, 2, QTC_SHAPE(1, T), tgt, NULL, &err);
    qtc_tensor *params[64];
    int np = qtc_llama_params(m, params, 64);
    for (int i = 0; i < np; i++)
        CHECK(qtc_tensor_require_grad(params[i], &err) == QTC_OK);
    qtc_graph *g = qtc_graph_new(&err);
    qtc_tensor *loss = qtc_cross_entropy(g, qtc_llama_forward(m, g, ids, 0), targets);
    CHECK(qtc_graph_backward(g, loss, &err) == QTC_OK);
    /* a few weights of different kinds: d loss / d w by central differences of the double llama */
    struct {
        int param; /* in qtc_llama_params order: 0 embed, 1 + 9 l + k, then norm */
        int64_t i;
    } probes[] = {{1 + 0 * 9 + 1, 77}, {1 + 2 * 9 + 2, 100}, {1 + 4 * 9 + 8, 3000}, {1 + 1 * 9 + 0, 5}, {0, 403 * 64 + 7}, {46, 11}};
    ref_llama ref;
    ref_from_llama(&ref, m);
    for (size_t p = 0; p < sizeof probes / sizeof *probes; p++) {
        double *w = &ref.p[probes[p].param][probes[p].i], w0 = *w, h = 1e-5;
        *w = w0 + h;
        double lp = ref_loss(&ref, tok, tgt, 1, T);
        *w = w0 - h;
        double lm = ref_loss(&ref, tok, tgt, 1, T);
        *w = w0;
        double num = (lp - lm) / (2 * h), got = ((float *)params[probes[p].param]->grad->data)[probes[p].i];
        CHECK_MSG(fabs(got - num) <= 1e-3 * fabs(num) + 1e-6, "probe %zu: gradient %.8g, finite difference %.8g", p, got, num);
    }
    ref_free(&ref);
    qtc_tensor_free(ids);
    qtc_tensor_free(targets);
    qtc_graph_free(g);
    qtc_llama_free(m);
}

TEST(llama2c_tokenizer_encodes_as_run_c_and_decodes_back)
{
    qtc_error err;
    qtc_tokenizer *t = qtc_tokenizer_load_llama2c(shared_path("models/stories260K/tok512.bin"), 512, &err);
    CHECK_MSG(t, "%s", err.msg);
    int32_t ids[256];
    const char *lines[] = {"Once upon a time, there was a little girl named Lily.", "Lily's mom said, \"Lily, let's go.\"",
                           "naïve café \xe2\x80\x94 日本", "a", "  two  spaces\tand a tab\n"};
    for (size_t k = 0; k < sizeof lines / sizeof *lines; k++) {
        int64_t n = qtc_tokenizer_encode(t, lines[k], 1, 0, ids, 256, &err);
        CHECK(n > 1 && n < 256 && ids[0] == 1);
        char text[1024] = "";
        for (int64_t i = 1; i < n; i++)
            strcat(text, qtc_tokenizer_piece(t, ids[i - 1], ids[i]));
        CHECK_MSG(strcmp(text, lines[k]) == 0, "'%s' decoded as '%s'", lines[k], text);
    }
    /* merges happen: far fewer tokens than characters for English */
    int64_t n = qtc_tokenizer_encode(t, lines[0], 0, 0, ids, 256, &err);
    CHECK_MSG(n < 30, "%lld tokens", (long long)n);
    CHECK(qtc_tokenizer_encode(t, "", 1, 1, ids, 256, &err) == 2);
    qtc_tokenizer_free(t);
}

TEST(tokenizers_from_tok512_tokenizer_json_and_gguf_encode_alike)
{
    /* the same vocabulary through three sources: llama2.c's file, the HF folder's
     * tokenizer.json, and the GGUF keys qtc writes */
    qtc_error err;
    qtc_tokenizer *a = qtc_tokenizer_load_llama2c(shared_path("models/stories260K/tok512.bin"), 512, &err);
    qtc_model_file *hf = qtc_model_open(shared_path("models/stories260K-hf"), &err);
    qtc_tokenizer *b = hf ? qtc_tokenizer_for_model(hf, &err) : NULL;
    CHECK_MSG(a && b, "%s", err.msg);
    const char *texts[] = {"Once upon a time, there was a little girl named Lily.",
                           "The end!\n\"Why?\" asked Tom. 3 + 4 = 7 \xe2\x82\xac", "  "};
    for (size_t k = 0; k < sizeof texts / sizeof *texts; k++) {
        int32_t x[256], y[256];
        int64_t nx = qtc_tokenizer_encode(a, texts[k], 1, 0, x, 256, &err);
        int64_t ny = qtc_tokenizer_encode(b, texts[k], 1, 0, y, 256, &err);
        CHECK_MSG(nx == ny && memcmp(x, y, (size_t)nx * sizeof *x) == 0, "'%s': %lld vs %lld tokens", texts[k],
                  (long long)nx, (long long)ny);
    }
    qtc_model_file *none = qtc_model_open(shared_path("models/stories260K-hf/model.safetensors"), &err);
    CHECK(none);
    CHECK(!qtc_tokenizer_for_model(none, &err) && err.code == QTC_ERR_INPUT && strstr(err.msg, "no tokenizer"));
    qtc_model_close(none);
    qtc_tokenizer_free(a);
    qtc_tokenizer_free(b);
    qtc_model_close(hf);
}

/* One of llama.cpp's test vocabularies: every test string encodes to llama.cpp's
 * ids and decodes back. */
static void check_vocabulary(const char *file, int vocab)
{
    qtc_error err;
    const char *gguf = shared_path(file);
    char inp_path[4200], out_path[4200];
    snprintf(inp_path, sizeof inp_path, "%s.inp", gguf);
    snprintf(out_path, sizeof out_path, "%s.out", gguf);
    qtc_model_file *f = qtc_model_open(gguf, &err);
    qtc_tokenizer *t = f ? qtc_tokenizer_for_model(f, &err) : NULL;
    CHECK_MSG(t && qtc_tokenizer_vocab(t) == vocab, "%s", err.msg);
    /* .inp: strings separated by "\n__ggml_vocab_test__\n"; .out: one line of ids per string */
    char *inp = test_read_file(inp_path, NULL), *out = test_read_file(out_path, NULL);
    CHECK(inp && out);
    const char *sep = "\n__ggml_vocab_test__\n";
    char *p = inp, *o = out;
    int cases = 0;
    int32_t *ids = malloc(65536 * sizeof *ids);
    while (p && *p) {
        char *e = strstr(p, sep), *ol = strchr(o, '\n');
        if (e)
            *e = '\0';
        if (ol)
            *ol = '\0';
        int64_t n = qtc_tokenizer_encode(t, p, 0, 0, ids, 65536, &err);
        int64_t want_n = 0;
        for (char *q = o; *q;) { /* compare with the expected ids one by one */
            long v = strtol(q, &q, 10);
            if (want_n >= n || ids[want_n] != v) {
                test_fail(__FILE__, __LINE__, "%s case %d ('%.40s'): token %lld is %d, llama.cpp gives %ld", file, cases, p,
                          (long long)want_n, want_n < n ? ids[want_n] : -1, v);
                goto done;
            }
            want_n++;
            while (*q == ' ')
                q++;
        }
        CHECK_MSG(want_n == n, "case %d: %lld tokens, llama.cpp %lld", cases, (long long)n, (long long)want_n);
        char text[8192] = "";
        for (int64_t i = 0; i < n; i++) /* decoded after an implicit BOS: the dummy space goes */
            strncat(text, qtc_tokenizer_piece(t, i ? ids[i - 1] : qtc_tokenizer_bos(t), ids[i]), sizeof text - strlen(text) - 1);
        CHECK_MSG(strcmp(text, p) == 0, "case %d decodes to '%.40s'", cases, text);
        cases++;
        p = e ? e + strlen(sep) : NULL;
        o = ol ? ol + 1 : o + strlen(o);
    }
    CHECK_MSG(cases == 46, "%s: %d cases", file, cases);
done:
    free(ids);
    free(inp);
    free(out);
    qtc_tokenizer_free(t);
    qtc_model_close(f);
}

TEST(llama_spm_vocabulary_reproduces_llama_cpps_token_ids_and_decodes_back)
{
    check_vocabulary("models/vocab/ggml-vocab-llama-spm.gguf", 32000);
}

TEST(gpt2_byte_level_vocabulary_reproduces_llama_cpps_token_ids_and_decodes_back)
{
    check_vocabulary("models/vocab/ggml-vocab-gpt-2.gguf", 50257);
}

TEST(token_files_round_trip_and_lying_headers_are_rejected)
{
    qtc_error err;
    int32_t ids[5] = {1, 300, 511, 2, 70000};
    qtc_tokens d = {ids, 5, NULL}, back;
    char path[] = "/tmp/qtc-tokens-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    CHECK(qtc_tokens_save(&d, path, &err) == QTC_OK); /* 70000 needs 4 bytes per id */
    CHECK(qtc_tokens_load(NULL, path, 0, &back, &err) == QTC_OK && back.n == 5 && memcmp(back.ids, ids, sizeof ids) == 0);
    qtc_tokens_free(&back);
    CHECK(qtc_tokens_load(NULL, path, 512, &back, &err) == QTC_ERR_INPUT && strstr(err.msg, "outside the vocabulary"));
    d.n = 4; /* all fit in 2 bytes */
    CHECK(qtc_tokens_save(&d, path, &err) == QTC_OK);
    FILE *f = fopen(path, "r+b");
    fseek(f, 0, SEEK_END);
    CHECK(ftell(f) == 24 + 4 * 2);
    uint64_t lie = 1000;
    fseek(f, 16, SEEK_SET);
    fwrite(&lie, 8, 1, f);
    fclose(f);
    CHECK(qtc_tokens_load(NULL, path, 0, &back, &err) == QTC_ERR_INPUT && strstr(err.msg, "counts 1000 ids"));
    remove(path);
}

TEST(attention_runs_windows_of_2048_tokens_and_agrees_with_the_cache)
{
    /* a tiny random llama with a 2048-token context: the full forward's last
     * logits equal the KV-cache path's after 2048 steps */
    qtc_error err;
    qtc_llama *m = test_random_llama((qtc_llama_config){.dim = 16, .hidden = 32, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                                                        .vocab = 50, .ctx = 2048, .head_dim = 4, .n_rot = 4,
                                                        .norm_eps = 1e-5f, .rope_theta = 10000.0f, .tied = 1}, 5);
    qtc_rng r;
    qtc_rng_seed(&r, 6);
    enum { T = 2048 };
    int32_t *tok = malloc(T * sizeof *tok);
    for (int t = 0; t < T; t++)
        tok[t] = (int32_t)qtc_rng_below(&r, 50);
    qtc_tensor *ids = qtc_tensor_wrap(QTC_I32, 2, QTC_SHAPE(1, T), tok, NULL, &err);
    qtc_graph *g = qtc_graph_new(&err), *g2 = qtc_graph_new(&err);
    qtc_graph_set_recording(g, 0);
    qtc_tensor *logits = qtc_llama_forward(m, g, ids, 0);
    CHECK(logits && logits->ne[1] == T);
    const float *last = NULL;
    for (int t = 0; t < T; t++)
        last = qtc_llama_step(m, g2, tok[t], t, &err);
    CHECK_MSG(last, "%s", err.msg);
    double want[50];
    for (int v = 0; v < 50; v++)
        want[v] = ((float *)logits->data)[(int64_t)(T - 1) * 50 + v];
    CHECK_CLOSE("logits at position 2047", last, want, 50, 1e-4, 1e-4);
    CHECK(!qtc_llama_step(m, g2, tok[0], T, &err) && strstr(err.msg, "outside the model's context"));
    qtc_tensor_free(ids);
    free(tok);
    qtc_graph_free(g);
    qtc_graph_free(g2);
    qtc_llama_free(m);
}

TEST(tokenizer_files_are_recognised_by_their_bytes)
{
    qtc_error err;
    const char *paths[] = {"models/stories260K/tok512.bin", "models/stories260K-hf/tokenizer.json",
                           "models/vocab/ggml-vocab-llama-spm.gguf"};
    const int vocab[] = {512, 512, 32000};
    int32_t ids[64];
    for (int k = 0; k < 3; k++) {
        qtc_tokenizer *t = qtc_tokenizer_load(shared_path(paths[k]), 512, &err);
        CHECK_MSG(t && qtc_tokenizer_vocab(t) == vocab[k], "%s: %s", paths[k], err.msg);
        CHECK(qtc_tokenizer_encode(t, "Once upon a time", 1, 0, ids, 64, &err) >= 3 && ids[0] == 1);
        qtc_tokenizer_free(t);
    }
    CHECK(!qtc_tokenizer_load(shared_path("data/README.md"), 512, &err) && err.code == QTC_ERR_INPUT);
}

TEST(generated_corpus_is_whole_sequences_the_model_samples_from_bos)
{
    qtc_llama_config c = {.dim = 16, .hidden = 24, .n_layers = 1, .n_heads = 2, .n_kv_heads = 1, .vocab = 20, .ctx = 16,
                          .head_dim = 8, .n_rot = 8, .norm_eps = 1e-5f, .rope_theta = 10000.0f, .tied = 1, .bos_id = 3,
                          .eos_id = 2};
    qtc_error err;
    qtc_llama *m = qtc_llama_new_random(&c, 5, 0.5f, &err);
    CHECK(m);
    qtc_tokens d;
    int64_t seqs = 0;
    CHECK(qtc_generate_corpus(m, 50, 7, 4, &d, &seqs, &err) == QTC_OK);
    CHECK(seqs == 7 && d.n == 56 && !d.loss_mask); /* sequences of ctx + 1 = 8, enough for 50 */
    qtc_rng r;
    qtc_rng_seed(&r, 4 ^ 0x51ed27a1u);
    int32_t want[8];
    int differ = 0;
    for (int k = 0; k < 7; k++) {
        CHECK(qtc_generate(m, 3, 8, 1.0f, 1.0f, &r, want, &err) == QTC_OK);
        CHECK_MSG(memcmp(d.ids + k * 8, want, sizeof want) == 0, "sequence %d is not the model's sample", k);
        differ += k > 0 && memcmp(d.ids + k * 8, d.ids, sizeof want) != 0;
    }
    CHECK(d.ids[0] == 3 && differ > 0);
    qtc_tokens_free(&d);
    m->c.bos_id = -1; /* no BOS known: 1; sequences no longer than the model's context */
    CHECK(qtc_generate_corpus(m, 20, 40, 4, &d, &seqs, &err) == QTC_OK);
    CHECK(seqs == 2 && d.n == 32 && d.ids[0] == 1 && d.ids[16] == 1);
    qtc_tokens_free(&d);
    qtc_llama_free(m);
}

TEST(llama_export_writes_the_llamas_weights_through_qtc_convert)
{
    qtc_error err;
    qtc_model_file *src = qtc_model_open(shared_path("models/stories260K/stories260K.bin"), &err);
    CHECK_MSG(src, "%s", err.msg);
    qtc_llama *m = qtc_llama_from_model(src, &err);
    CHECK(m);
    qtc_tensor *w = qtc_llama_linear_weight(m, 1, QTC_LIN_UP); /* "trained" */
    for (int64_t i = 0; i < qtc_tensor_numel(w); i++)
        ((float *)w->data)[i] += 0.01f * (float)(i % 5);
    ((float *)m->norm->data)[3] = 1.5f;
    char out[] = "/tmp/qtc-export-XXXXXX.safetensors";
    int fd = mkstemps(out, 12);
    CHECK(fd >= 0);
    close(fd);
    qtc_target to = {.is_scheme = 0, .dtype = QTC_F32};
    qtc_convert_summary s;
    CHECK_MSG(qtc_llama_export(m, src, out, QTC_FMT_SAFETENSORS, 0, &to, NULL, &s, &err) == QTC_OK, "%s", err.msg);
    CHECK(s.bits_per_weight == 32 && s.rel_rms_err == 0);
    qtc_model_file *f = qtc_model_open(out, &err);
    CHECK_MSG(f, "%s", err.msg);
    qtc_tokenizer *tok = qtc_tokenizer_for_model(f, &err); /* the llama2.c tokenizer beside the source, carried */
    CHECK_MSG(tok && qtc_tokenizer_vocab(tok) == 512, "%s", err.msg);
    qtc_tokenizer_free(tok);
    qtc_llama *back = qtc_llama_from_model(f, &err);
    qtc_model_close(f);
    CHECK(back);
    qtc_tensor *a[64], *b[64];
    int n = qtc_llama_params(m, a, 64);
    CHECK(qtc_llama_params(back, b, 64) == n);
    for (int i = 0; i < n; i++)
        CHECK_MSG(memcmp(a[i]->data, b[i]->data, (size_t)qtc_tensor_numel(a[i]) * sizeof(float)) == 0, "tensor %d differs", i);
    qtc_llama_free(back);
    /* in a scheme: the projections as qtc_qweight_quantize stores them */
    to.is_scheme = 1;
    qtc_qscheme_parse("int4-g32", &to.scheme);
    CHECK_MSG(qtc_llama_export(m, src, out, QTC_FMT_SAFETENSORS, 0, &to, NULL, &s, &err) == QTC_OK, "%s", err.msg);
    CHECK(s.bits_per_weight < 32 && s.rel_rms_err > 0);
    back = qtc_llama_load(out, &err);
    unlink(out);
    CHECK_MSG(back, "%s", err.msg);
    qtc_qweight q;
    CHECK(qtc_qweight_quantize(w->data, w->ne[0], w->ne[1], &to.scheme, &q, &err) == QTC_OK);
    float *want = malloc((size_t)qtc_tensor_numel(w) * sizeof *want);
    qtc_qweight_dequantize(&q, want);
    qtc_qweight_free(&q);
    CHECK(memcmp(want, qtc_llama_linear_weight(back, 1, QTC_LIN_UP)->data, (size_t)qtc_tensor_numel(w) * sizeof *want) == 0);
    CHECK(((float *)back->norm->data)[3] == 1.5f);
    free(want);
    qtc_llama_free(back);
    qtc_llama_free(m);
    qtc_model_close(src);
}
