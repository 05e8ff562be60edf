/* loss.c: the language-model loss of the trainers (see qtc/train.h). */
#include "qtc/train.h"

qtc_tensor *qtc_lm_loss_fn(void *ctx, qtc_graph *g, const qtc_tensor *tokens, const qtc_tensor *targets)
{
    const qtc_lm_loss *l = ctx;
    /* distillation fuses both heads only when both are a plain x W^T held as
     * f32 (a head held quantized outside the llama has its own fused loss,
     * for cross-entropy only) */
    const int fused = l->fused_head &&
                      (!l->teacher || (!l->teacher->linear && l->teacher->output && l->model->output));
    if (l->training)
        l->training(l->training_ctx, 1);
    qtc_tensor *out = fused ? qtc_llama_hidden(l->model, g, tokens, 0) : qtc_llama_forward(l->model, g, tokens, 0);
    if (l->training)
        l->training(l->training_ctx, 0);
    if (!l->teacher) {
        if (!fused)
            return qtc_cross_entropy(g, out, targets);
        return l->model->output ? qtc_linear_cross_entropy(g, out, l->model->output, targets, 0)
                                : l->model->head_loss(l->model->hook_ctx, g, out, targets);
    }
    qtc_graph_reset(l->teacher_graph);
    qtc_graph_set_recording(l->teacher_graph, 0);
    if (!fused)
        return qtc_kl_div(g, out, qtc_llama_forward(l->teacher, l->teacher_graph, tokens, 0));
    /* the teacher's final hidden states stay in its graph until the next call,
     * past this step's backward, which recomputes its logits from them */
    qtc_tensor *ref = qtc_llama_hidden(l->teacher, l->teacher_graph, tokens, 0);
    return qtc_linear_kl_div(g, out, l->model->output, ref, l->teacher->output, 0);
}
