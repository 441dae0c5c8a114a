/* test_template — every named template renders the expected text, labels exactly the
 * assistant spans (content and end marker) of every turn, and renders generation prompts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template.h"
#include "tokenizer/fixture.h"
#include "check.h"

static tpl_message msg(tpl_role role, const char *s)
{
    return (tpl_message){.role = role, .content = s, .len = strlen(s)};
}

/* The decoded text of the ids, and of the labeled ids only (spans joined by '|'). */
static void decode_parts(tokenizer *t, const tok_ids *ids, const tok_ids *labels, char **all,
                         char **labeled)
{
    *all = tok_decode(t, ids->ids, ids->n, 0, NULL);
    size_t cap = 16, len = 0;
    char *out = calloc(1, cap);
    for (int i = 0; i < ids->n;) {
        if (labels->ids[i] == -100) { i++; continue; }
        int j = i;
        while (j < ids->n && labels->ids[j] != -100) {
            CHECK(labels->ids[j] == ids->ids[j], "a label differs from its id");
            j++;
        }
        char *span = tok_decode(t, ids->ids + i, j - i, 0, NULL);
        size_t n = strlen(span);
        while (len + n + 2 > cap) out = realloc(out, cap *= 2);
        if (len) out[len++] = '|';
        memcpy(out + len, span, n + 1);
        len += n;
        free(span);
        i = j;
    }
    *labeled = out;
}

typedef int encode_fn(const chat_template *tpl, tokenizer *t, const tpl_message *msgs, int n,
                      tok_ids *ids, tok_ids *labels, pesc_error *err);

/* m encoded by encode with template name: the whole text, and the labeled spans joined by '|' */
static void expect_encoding(tokenizer *t, const char *name, encode_fn *encode,
                            const tpl_message *m, int n, const char *want_all,
                            const char *want_labeled)
{
    const chat_template *tpl = template_find(name);
    CHECK(tpl != NULL, "template %s missing", name);
    if (!tpl) return;
    tok_ids ids = {0}, labels = {0};
    pesc_error err = {{0}};
    int rc = encode(tpl, t, m, n, &ids, &labels, &err);
    CHECK(rc == 0, "%s: %s", name, err.msg);
    CHECK(ids.n == labels.n, "%s: ids and labels differ in length", name);
    char *all, *labeled;
    decode_parts(t, &ids, &labels, &all, &labeled);
    CHECK(strcmp(all, want_all) == 0, "%s rendered:\n%s\nwant:\n%s", name, all, want_all);
    CHECK(strcmp(labeled, want_labeled) == 0, "%s labeled:\n%s\nwant:\n%s", name, labeled,
          want_labeled);
    free(all);
    free(labeled);
    tok_ids_free(&ids);
    tok_ids_free(&labels);
}

static void expect_render(tokenizer *t, const char *name, const tpl_message *m, int n,
                          const char *want_all, const char *want_labeled)
{
    expect_encoding(t, name, template_encode, m, n, want_all, want_labeled);
}

/* A real tokenizer of a model family (tools/fetch-tokenizers), or NULL: its cases skipped. */
static tokenizer *real_tokenizer(const char *name)
{
    const char *srcdir = getenv("top_srcdir");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/tokenizer/files/%s/tokenizer.json",
             srcdir ? srcdir : ".", name);
    pesc_error err = {{0}};
    tokenizer *t = tok_load(path, &err);
    if (!t)
        printf("%s tokenizer missing (tools/fetch-tokenizers): its cases skipped\n", name);
    return t;
}

/* The templates on the real tokenizers of their model families. */
static void real_tokenizers(void)
{
    tpl_message chat[] = {msg(ROLE_USER, "hello"), msg(ROLE_ASSISTANT, "hi there"),
                          msg(ROLE_USER, "2+2?"), msg(ROLE_ASSISTANT, "4")};
    /* the first token of an answer that the template opens with a space is SentencePiece's
     * "▁word", which holds that space: it is the answer's, and trained */
    tokenizer *t = real_tokenizer("llama2");
    if (t)
        expect_render(t, "llama2", chat, 4,
            "<s> [INST] hello [/INST] hi there </s><s> [INST] 2+2? [/INST] 4 </s>",
            "hi there </s>|4 </s>");
    tok_delete(t);
    /* Qwen3's thinking markers are special tokens of their own: the block stays untrained */
    if ((t = real_tokenizer("qwen3"))) {
        expect_render(t, "qwen3", chat, 4,
            "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nhi there<|im_end|>\n"
            "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
            "4<|im_end|>", "hi there<|im_end|>|4<|im_end|>");
        const char *s = template_suggest(tok_chat_template(t));
        CHECK(s && strcmp(s, "qwen3") == 0, "qwen3's own template suggests %s", s ? s : "none");
    }
    tok_delete(t);
    /* the named template that writes a model's own markers, from its tokenizer_config.json */
    if ((t = real_tokenizer("llama3"))) {
        const char *s = template_suggest(tok_chat_template(t));
        CHECK(s && strcmp(s, "llama3") == 0, "llama3's own template suggests %s", s ? s : "none");
    }
    tok_delete(t);
    /* Gemma 3's markers are special tokens, <end_of_turn> the answers' stop */
    if ((t = real_tokenizer("gemma3"))) {
        const char *s = template_suggest(tok_chat_template(t));
        CHECK(s && strcmp(s, "gemma") == 0, "gemma3's own template suggests %s", s ? s : "none");
        expect_render(t, "gemma", chat, 4,
            "<bos><start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\nhi there"
            "<end_of_turn>\n<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n"
            "4<end_of_turn>", "hi there<end_of_turn>|4<end_of_turn>");
        int32_t stops[4], end = tok_token_id(t, "<end_of_turn>");
        int n = template_stop_ids(template_find("gemma"), t, stops, 4);
        CHECK(end >= 0 && n >= 1 && (stops[0] == end || (n == 2 && stops[1] == end)),
              "gemma's stops (%d of them) must hold <end_of_turn>", n);
    }
    tok_delete(t);
}

int main(void)
{
    real_tokenizers();
    tokenizer *t = fixture_tokenizer();
    if (!t)
        return 99;
    tpl_message two[] = {msg(ROLE_SYSTEM, "Be brief."), msg(ROLE_USER, "hello"),
                         msg(ROLE_ASSISTANT, "hi there"), msg(ROLE_USER, "2+2?"),
                         msg(ROLE_ASSISTANT, "4")};
    expect_render(t, "camelidae", two, 5,
        "<s>### System:\nBe brief.\n### Human:\nhello\n### Assistant:\nhi there</s>\n"
        "### Human:\n2+2?\n### Assistant:\n4</s>", "hi there</s>|4</s>");
    /* no system: the System line is dropped (DESIGN section 1) */
    expect_render(t, "camelidae", two + 1, 2,
        "<s>### Human:\nhello\n### Assistant:\nhi there</s>", "hi there</s>");
    expect_render(t, "chatml", two, 5,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n"
        "<|im_start|>assistant\nhi there<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>", "hi there<|im_end|>|4<|im_end|>");
    /* Qwen3's own template (non-thinking): an empty thinking block opens the last answer,
     * untrained; earlier answers have none; an answer with its own thinking keeps it */
    expect_render(t, "qwen3", two, 5,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n"
        "<|im_start|>assistant\nhi there<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>",
        "hi there<|im_end|>|4<|im_end|>");
    tpl_message thought[] = {msg(ROLE_USER, "2+2?"),
                             msg(ROLE_ASSISTANT, "<think>\nadd\n</think>\n\n4")};
    expect_render(t, "qwen3", thought, 2,
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\nadd\n</think>\n\n4"
        "<|im_end|>", "<think>\nadd\n</think>\n\n4<|im_end|>");
    expect_render(t, "llama2", two, 5,
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nhello [/INST] hi there </s><s>[INST] 2+2? "
        "[/INST] 4 </s>", "hi there </s>|4 </s>");
    expect_render(t, "mistral", two + 1, 4,
        "<s>[INST] hello [/INST]hi there</s>[INST] 2+2? [/INST]4</s>", "hi there</s>|4</s>");
    expect_render(t, "llama3", two + 1, 2,
        "<s><|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|><|start_header_id|>"
        "assistant<|end_header_id|>\n\nhi there<|eot_id|>", "hi there<|eot_id|>");
    expect_render(t, "alpaca", two + 1, 2,
        "<s>Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nhello\n\n### Response:\nhi there</s>",
        "hi there</s>");
    /* Phi-3's: no BOS; every turn, system too, ended by <|end|>, the answers' trained */
    expect_render(t, "phi3", two, 5,
        "<|system|>\nBe brief.<|end|>\n<|user|>\nhello<|end|>\n<|assistant|>\nhi there<|end|>\n"
        "<|user|>\n2+2?<|end|>\n<|assistant|>\n4<|end|>", "hi there<|end|>|4<|end|>");
    expect_render(t, "phi4-mini", two, 5,
        "<|system|>Be brief.<|end|><|user|>hello<|end|><|assistant|>hi there<|end|><|user|>2+2?"
        "<|end|><|assistant|>4<|end|>", "hi there<|end|>|4<|end|>");
    expect_render(t, "phi4", two + 1, 2,
        "<|im_start|>user<|im_sep|>hello<|im_end|><|im_start|>assistant<|im_sep|>hi there"
        "<|im_end|>", "hi there<|im_end|>");
    /* Granite 3's: role markers, every turn ended by <|end_of_text|> and a newline (the
     * newline after an answer untrained, as chatml's) */
    expect_render(t, "granite", two, 5,
        "<|start_of_role|>system<|end_of_role|>Be brief.<|end_of_text|>\n<|start_of_role|>user"
        "<|end_of_role|>hello<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>hi there"
        "<|end_of_text|>\n<|start_of_role|>user<|end_of_role|>2+2?<|end_of_text|>\n"
        "<|start_of_role|>assistant<|end_of_role|>4<|end_of_text|>",
        "hi there<|end_of_text|>|4<|end_of_text|>");
    /* Gemma 3's: the system text opens the first user turn; the answers' newline untrained */
    expect_render(t, "gemma", two, 5,
        "<s><start_of_turn>user\nBe brief.\n\nhello<end_of_turn>\n<start_of_turn>model\n"
        "hi there<end_of_turn>\n<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n"
        "4<end_of_turn>", "hi there<end_of_turn>|4<end_of_turn>");
    expect_render(t, "plain", two + 1, 2, "<s>hello\nhi there</s>", "hi there</s>");

    /* an empty answer (a failed reply in a scraped chat) stays as context: labeling its end
     * marker would teach the model to answer nothing */
    tpl_message empty_answer[] = {msg(ROLE_USER, "hello"), msg(ROLE_ASSISTANT, ""),
                                  msg(ROLE_USER, "2+2?"), msg(ROLE_ASSISTANT, "4")};
    expect_render(t, "chatml", empty_answer, 4,
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n<|im_start|>user\n"
        "2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>", "4<|im_end|>");
    /* so is an assistant turn marked untrained (OpenAI's "weight": 0) */
    tpl_message untrained[] = {msg(ROLE_USER, "hello"), msg(ROLE_ASSISTANT_UNTRAINED, "hi there"),
                               msg(ROLE_USER, "2+2?"), msg(ROLE_ASSISTANT, "4")};
    expect_render(t, "camelidae", untrained, 4,
        "<s>### Human:\nhello\n### Assistant:\nhi there</s>\n### Human:\n2+2?\n### Assistant:\n4</s>",
        "4</s>");

    /* with no chat template (prompt/completion strings): the text end to end, BOS where the
     * template puts one first (llama2 in its user turn, chatml nowhere), EOS after each
     * answer, only the answers and their EOS labeled */
    tpl_message pairs[] = {msg(ROLE_USER, "2+2="), msg(ROLE_ASSISTANT, "4"),
                           msg(ROLE_USER, " and 3+3="), msg(ROLE_ASSISTANT, "6")};
    expect_encoding(t, "llama2", template_encode_bare, pairs, 4, "<s>2+2=4</s> and 3+3=6</s>",
                    "4</s>|6</s>");
    expect_encoding(t, "chatml", template_encode_bare, pairs, 2, "2+2=4</s>", "4</s>");

    /* prompts for generation end at the assistant header */
    pesc_error err = {{0}};
    tok_ids ids = {0};
    CHECK(template_encode_prompt(template_find("chatml"), t, two, 2, &ids, &err) == 0, "%s", err.msg);
    char *prompt = tok_decode(t, ids.ids, ids.n, 0, NULL);
    CHECK(strcmp(prompt, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello"
                 "<|im_end|>\n<|im_start|>assistant\n") == 0, "chatml prompt: %s", prompt);
    free(prompt);
    tok_ids_free(&ids);
    CHECK(template_encode_prompt(template_find("qwen3"), t, two, 2, &ids, &err) == 0, "%s",
          err.msg);
    prompt = tok_decode(t, ids.ids, ids.n, 0, NULL);
    CHECK(strcmp(prompt, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello"
                 "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n") == 0,
          "a qwen3 prompt ends in the empty thinking block: %s", prompt);
    free(prompt);
    tok_ids_free(&ids);
    int32_t stops[4];
    int n = template_stop_ids(template_find("chatml"), t, stops, 4);
    CHECK(n == 2 && stops[0] == 301 && stops[1] == 303, "chatml stops: %d ids", n);

    /* errors a dataset can cause */
    tok_ids labels = {0};
    tpl_message only_user[] = {msg(ROLE_USER, "hello")};
    CHECK(template_encode(template_find("camelidae"), t, only_user, 1, &ids, &labels, &err) == -1,
          "a conversation without an assistant turn must fail");
    tpl_message two_assistants[] = {msg(ROLE_USER, "a"), msg(ROLE_ASSISTANT, "b"),
                                    msg(ROLE_ASSISTANT, "c")};
    CHECK(template_encode(template_find("camelidae"), t, two_assistants, 3, &ids, &labels, &err) == -1,
          "two assistant turns in a row must fail");
    /* two user turns in a row would leave an empty assistant header between them */
    tpl_message two_users[] = {msg(ROLE_USER, "a"), msg(ROLE_USER, "b"), msg(ROLE_ASSISTANT, "c")};
    CHECK(template_encode(template_find("chatml"), t, two_users, 3, &ids, &labels, &err) == -1 &&
          strstr(err.msg, "message 1 (counting from 0)") && strstr(err.msg, "user"),
          "two user turns in a row must fail naming the message: %s", err.msg);
    /* a message read from data is named by its JSON path, not by its place among the
     * messages (a system prompt beside the turns comes first there) */
    tpl_message from_data[] = {msg(ROLE_SYSTEM, "S"), msg(ROLE_USER, "a"), msg(ROLE_USER, "b"),
                               msg(ROLE_ASSISTANT, "c")};
    from_data[2].where = "messages[1]";
    CHECK(template_encode(template_find("chatml"), t, from_data, 4, &ids, &labels, &err) == -1 &&
          strncmp(err.msg, "messages[1]: a user message must follow", 39) == 0,
          "the message's JSON path must name it: %s", err.msg);
    CHECK(template_encode_prompt(template_find("chatml"), t, two_users, 2, &ids, &err) == -1,
          "a prompt with two user turns in a row must fail");
    CHECK(template_find("nonesuch") == NULL, "unknown template must be NULL");
    static const struct { const char *jinja, *want; } own[] = {
        {"{{'<|im_start|>' + role}}", "chatml"}, {"<|im_start|>{{'<think>'}}", "qwen3"},
        {"[INST] <<SYS>>", "llama2"}, {"{{'[INST] '}}", "mistral"},
        {"<|start_header_id|>", "llama3"}, {"### Human:", NULL},
        {"### Human:\n{{ message['content'] }}\n### Assistant:\n", "camelidae"},
        {"### Instruction:\n{{ message['content'] }}\n\n### Response:\n", "alpaca"},
        {"{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}", "phi3"},
        {"{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}", "phi4-mini"},
        {"{{'<|im_start|>user<|im_sep|>' + message['content'] + '<|im_end|>'}}", "phi4"},
        {"{{- '<|start_of_role|>user<|end_of_role|>' + message['content'] }}", "granite"},
        {"{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}",
         "gemma"}};
    for (size_t i = 0; i < sizeof own / sizeof *own; i++) {
        const char *got = template_suggest(own[i].jinja);
        CHECK(own[i].want ? got && strcmp(got, own[i].want) == 0 : !got,
              "template_suggest(%s): %s, want %s", own[i].jinja, got ? got : "none",
              own[i].want ? own[i].want : "none");
    }
    CHECK(template_suggest(NULL) == NULL, "no chat template suggests none");
    tok_ids_free(&ids);
    tok_ids_free(&labels);
    tok_delete(t);
    if (failures) {
        fprintf(stderr, "test_template: %d failures\n", failures);
        return 1;
    }
    printf("test_template: all templates render and label as expected\n");
    return 0;
}
