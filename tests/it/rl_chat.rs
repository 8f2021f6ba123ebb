//! Chat templates and text generation (feature `rl`) against the independent reference,
//! transformers' `apply_chat_template` and greedy `generate` (tests/ref/chat_ref.py, run with
//! `$WARP_TORCH_PYTHON` from `source scripts/setup-torch.sh`). The tokenizers are trained by the
//! reference script on the tests' own text and saved by transformers; the templates
//! (tests/ref/chat/*.jinja) were written for these tests in the shapes Llama 3, Gemma and Qwen use.
#![cfg(feature = "rl")]

use crate::common;

use std::path::Path;

use serde_json::{json, Value};
use warp::rl::chat::TemplateChoice;
use warp::rl::data::{parse_messages, read_prompt_lines, read_prompts, Prompt};
use warp::rl::textgen::{encode_prompts, generate_texts, FinishReason, TextGenOptions};
use warp::rl::{CausalLm, Tokenizer};

fn template(name: &str) -> String {
    common::repo_root()
        .join("tests/ref/chat")
        .join(format!("{name}.jinja"))
        .display()
        .to_string()
}

fn chat_ref(req: Value) -> Value {
    common::torch_ref("chat_ref.py", &[], &req)
}

/// Runs several reference requests in one Python process (transformers is slow to import).
fn batch(reqs: Vec<Value>) -> Vec<Value> {
    let r = chat_ref(json!({"cmd": "batch", "requests": reqs}));
    serde_json::from_value(r["responses"].clone()).unwrap()
}

/// A tokenizer family: its kind, special tokens and template.
struct Family {
    name: &'static str,
    kind: &'static str,
    specials: &'static [&'static str],
    bos: Option<&'static str>,
    eos: &'static str,
    pad: Option<&'static str>,
    bos_postprocess: bool,
}

const LLAMA3: Family = Family {
    name: "llama3",
    kind: "bytelevel",
    specials: &[
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ],
    bos: Some("<|begin_of_text|>"),
    eos: "<|eot_id|>",
    pad: None,
    bos_postprocess: true,
};

const GEMMA: Family = Family {
    name: "gemma",
    kind: "metaspace",
    specials: &[
        "<pad>",
        "<eos>",
        "<bos>",
        "<start_of_turn>",
        "<end_of_turn>",
    ],
    bos: Some("<bos>"),
    eos: "<eos>",
    pad: Some("<pad>"),
    bos_postprocess: true,
};

const QWEN: Family = Family {
    name: "qwen",
    kind: "bytelevel",
    specials: &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    bos: None,
    eos: "<|im_end|>",
    pad: Some("<|endoftext|>"),
    bos_postprocess: false,
};

fn msg(role: &str, content: &str) -> Value {
    json!({"role": role, "content": content})
}

/// The conversations every family is checked on: a system message, multi-turn, no system,
/// and text that needs care (non-ASCII, quotes, braces, tags, surrounding whitespace).
fn conversations() -> Vec<Value> {
    vec![
        json!([
            msg("system", "You are terse."),
            msg("user", "Hello there, how are you?")
        ]),
        json!([
            msg("system", " Answer with one number. "),
            msg("user", "What is 2+2?"),
            msg("assistant", "4"),
            msg("user", "And 3+5?"),
            msg("assistant", "8"),
            msg("user", "Now add them up."),
        ]),
        json!([
            msg("user", "Hello there"),
            msg("assistant", "Hi! How can I help?"),
            msg("user", "Tell me a fact."),
        ]),
        json!([
            msg("system", "Réponds brièvement.\n"),
            msg(
                "user",
                "  Grüße — 你好 \"quoted\" {braces} <tag> 'single'\n\tindented line  "
            ),
        ]),
    ]
}

/// Text for training the BPE tokenizers: the conversations and the templates' own words.
fn corpus() -> Vec<String> {
    let mut c: Vec<String> = conversations()
        .iter()
        .flat_map(|conv| {
            conv.as_array()
                .unwrap()
                .iter()
                .map(|m| m["content"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    for t in ["llama3", "gemma", "qwen", "features"] {
        c.push(std::fs::read_to_string(template(t)).unwrap());
    }
    c.push("The answer is 12. I think so. system user assistant model tool".into());
    c
}

/// The request that makes `dir`: a tokenizer of `fam` with `templates` (name, file stem)
/// stored as `store`.
fn make(dir: &Path, fam: &Family, templates: &[(&str, &str)], store: &str) -> Value {
    let t: serde_json::Map<String, Value> = templates
        .iter()
        .map(|(name, file)| (name.to_string(), json!(template(file))))
        .collect();
    json!({
        "cmd": "make", "dir": dir, "kind": fam.kind, "corpus": corpus(),
        "specials": fam.specials, "bos": fam.bos, "eos": fam.eos, "pad": fam.pad,
        "bos_postprocess": fam.bos_postprocess, "templates": t, "store": store,
    })
}

/// The request for transformers' renderings of `cases` (and plain encodings) in `dir`.
fn apply(dir: &Path, cases: &Value, plain: &[&str]) -> Value {
    json!({"cmd": "apply", "dir": dir, "cases": cases, "plain": plain})
}

fn messages(v: &Value) -> Prompt {
    Prompt::Messages(parse_messages(v).unwrap())
}

fn ids(v: &Value) -> Vec<i64> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Our ids for every conversation (generation prompt added) and for every conversation with an
/// assistant reply appended (the reward model's text) equal transformers'; plain prompts keep
/// their special tokens; BOS appears once.
fn check_family(fam: &Family, store: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(fam.name);
    let reply = " The answer is 12. ";
    let mut cases = Vec::new();
    for conv in conversations() {
        cases.push(json!({"messages": conv, "add_generation_prompt": true}));
        let mut with_reply = conv.as_array().unwrap().clone();
        with_reply.push(msg("assistant", reply));
        cases.push(json!({"messages": with_reply, "add_generation_prompt": false}));
    }
    let plain = ["Hello there, how are you?", "What is 2+2?"];
    let r = batch(vec![
        make(&dir, fam, &[("default", fam.name)], store),
        apply(&dir, &json!(cases), &plain),
    ])
    .remove(1);
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let bos_id = fam.bos.map(|_| tok.bos_id.unwrap());
    for (i, conv) in conversations().iter().enumerate() {
        let p = messages(conv);
        let theirs = &r["cases"][2 * i];
        assert!(theirs.get("error").is_none(), "{}: {theirs}", fam.name);
        assert_eq!(
            tok.render_prompt(&p).unwrap(),
            theirs["text"].as_str().unwrap(),
            "{} conversation {i}: rendered text",
            fam.name
        );
        let ours = tok.encode_prompt(&p).unwrap();
        assert_eq!(ours, ids(&theirs["ids"]), "{} conversation {i}", fam.name);
        if let Some(b) = bos_id {
            assert_eq!(ours[0], b, "{}: starts with BOS", fam.name);
            assert_eq!(
                ours.iter().filter(|&&t| t == b).count(),
                1,
                "{} conversation {i}: one BOS, not two",
                fam.name
            );
        }
        let theirs_rm = &r["cases"][2 * i + 1];
        assert!(
            theirs_rm.get("error").is_none(),
            "{}: {theirs_rm}",
            fam.name
        );
        assert_eq!(
            tok.encode_with_completion(&p, reply).unwrap(),
            ids(&theirs_rm["ids"]),
            "{} conversation {i} + reply (reward-model text)",
            fam.name
        );
        eprintln!(
            "{} conversation {i}: {} prompt tokens, {} with the reply: equal to transformers",
            fam.name,
            ours.len(),
            ids(&theirs_rm["ids"]).len()
        );
    }
    for (i, text) in plain.iter().enumerate() {
        let ours = tok.encode_prompt(&Prompt::Text(text.to_string())).unwrap();
        assert_eq!(
            ours,
            ids(&r["plain"][i]),
            "{}: plain prompt {text:?}",
            fam.name
        );
        assert_eq!(
            ours,
            tok.encode(text).unwrap(),
            "plain prompts are encoded as before"
        );
        if let Some(b) = bos_id {
            assert_eq!(ours[0], b, "a plain prompt gets the tokenizer's BOS");
        }
    }
}

#[test]
fn llama3_template_matches_transformers() {
    check_family(&LLAMA3, "jinja");
}

#[test]
fn gemma_template_matches_transformers() {
    check_family(&GEMMA, "config");
}

#[test]
fn qwen_template_matches_transformers() {
    check_family(&QWEN, "list");
}

/// Reasoning kept or dropped by the Qwen-shaped template (string methods, reverse loop,
/// namespace, `{% generation %}`), tool turns, and `reasoning_content` / `thinking` aliases.
#[test]
fn qwen_reasoning_and_tools_match_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    let convs = [
        json!([
            msg("user", "What is 2+2?"),
            {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
            msg("user", "And 3+5?"),
            {"role": "assistant", "content": "8", "reasoning_content": "three plus five"},
        ]),
        json!([
            msg("system", "Use tools."),
            msg("user", "Weather?"),
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
                "function": {"name": "weather", "arguments": {"city": "Zürich"}}}]},
            msg("tool", "{\"temp\": 21.5}"),
            {"role": "assistant", "content": "It is 21.5 degrees.", "thinking": "from the tool"},
        ]),
    ];
    let cases: Vec<Value> = convs
        .iter()
        .flat_map(|c| [true, false].map(|g| json!({"messages": c, "add_generation_prompt": g})))
        .collect();
    let r = batch(vec![
        make(&dir, &QWEN, &[("default", "qwen")], "jinja"),
        apply(&dir, &json!(cases), &[]),
    ])
    .remove(1);
    let tok = Tokenizer::from_dir(&dir).unwrap();
    for (i, case) in cases.iter().enumerate() {
        let m = parse_messages(&case["messages"]).unwrap();
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let t = tok.chat_template().unwrap();
        let text = t.render(&m, gen).unwrap();
        assert_eq!(text, r["cases"][i]["text"].as_str().unwrap(), "case {i}");
        assert_eq!(
            tok.encode_plain(&text).unwrap(),
            ids(&r["cases"][i]["ids"]),
            "case {i}"
        );
    }
}

/// The Jinja environment transformers provides: tojson with its keywords, Python printing,
/// Python string/dict methods, namespace, dict, break/continue, strftime_now, tools/documents,
/// special-token variables, filters. Rendered text and ids equal transformers'.
#[test]
fn jinja_environment_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("f");
    let conv = json!([
        msg("system", "ignored by the loop"),
        msg("user", "Hello there,\n  how are you? "),
        {"role": "assistant", "content": "Fine — ünïcödé 你好", "tool_calls": [{"id": 7,
            "function": {"name": "f", "arguments": {"x": 1.5, "ok": true, "none": null}}}]},
        msg("user", "Second question"),
        msg("user", "not shown: the loop breaks after three"),
    ]);
    let m = parse_messages(&conv).unwrap();
    let cases = json!([{"messages": conv, "add_generation_prompt": true}]);
    let mut r = batch(vec![
        make(&dir, &LLAMA3, &[("default", "features")], "config"),
        apply(&dir, &cases, &[]),
    ])
    .remove(1);
    let tok = Tokenizer::from_dir(&dir).unwrap();
    // strftime_now reads the clock: if the date changed between the two renderings, retry once.
    let mut last = None;
    for attempt in 0..2 {
        if attempt > 0 {
            r = chat_ref(apply(&dir, &cases, &[]));
        }
        let theirs = r["cases"][0]["text"].as_str().unwrap().to_string();
        let ours = tok.chat_template().unwrap().render(&m, true).unwrap();
        if ours == theirs {
            assert_eq!(tok.encode_plain(&ours).unwrap(), ids(&r["cases"][0]["ids"]));
            eprintln!("rendered equal to transformers:\n{ours}");
            return;
        }
        last = Some((ours, theirs));
    }
    let (ours, theirs) = last.unwrap();
    panic!("rendering differs from transformers:\n--- ours\n{ours}\n--- transformers\n{theirs}");
}

/// Templates found where transformers finds them (chat_template.jinja over the config,
/// additional_chat_templates/, the list form), and chosen by name.
#[test]
fn named_templates_match_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let conv = conversations()[1].clone();
    let cases = json!([
        {"messages": conv, "add_generation_prompt": true},
        {"messages": conv, "add_generation_prompt": true, "chat_template": "alt"},
    ]);
    let mut reqs = Vec::new();
    for store in ["jinja", "list"] {
        let dir = tmp.path().join(store);
        reqs.push(make(
            &dir,
            &LLAMA3,
            &[("default", "llama3"), ("alt", "gemma")],
            store,
        ));
        reqs.push(apply(&dir, &cases, &[]));
    }
    let responses = batch(reqs);
    for (k, store) in ["jinja", "list"].into_iter().enumerate() {
        let dir = tmp.path().join(store);
        let r = &responses[2 * k + 1];
        let mut tok = Tokenizer::from_dir(&dir).unwrap();
        let names: Vec<&str> = tok.templates.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["default", "alt"], "{store}");
        let p = messages(&conv);
        assert_eq!(tok.encode_prompt(&p).unwrap(), ids(&r["cases"][0]["ids"]));
        tok.set_chat_template(&TemplateChoice::File("alt".into()))
            .unwrap();
        assert_eq!(tok.encode_prompt(&p).unwrap(), ids(&r["cases"][1]["ids"]));
        assert_ne!(r["cases"][0]["ids"], r["cases"][1]["ids"]);
        // A template file given by path.
        tok.set_chat_template(&TemplateChoice::File(template("llama3").into()))
            .unwrap();
        assert_eq!(tok.encode_prompt(&p).unwrap(), ids(&r["cases"][0]["ids"]));
    }
}

/// A conversation that needs a template the model lacks, with templates off, and with a broken
/// template: clear errors naming the prompt file and line (transformers fails too); plain
/// prompts work in all three cases.
#[test]
fn missing_or_disabled_template_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("none");
    let bad = tmp.path().join("bad.jinja");
    std::fs::write(&bad, "{% for m in messages %}{{ m.content }}").unwrap();
    let broken = tmp.path().join("broken");
    let mut broken_req = make(&broken, &LLAMA3, &[], "config");
    broken_req["templates"] = json!({"default": bad});
    let l = tmp.path().join("l");
    let r = batch(vec![
        make(&dir, &LLAMA3, &[], "none"),
        apply(
            &dir,
            &json!([{"messages": [msg("user", "Hi")], "add_generation_prompt": true}]),
            &[],
        ),
        make(&l, &LLAMA3, &[("default", "llama3")], "jinja"),
        broken_req,
    ])
    .remove(1);
    let prompts = tmp.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"Hello there\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}\n",
    )
    .unwrap();
    let lines = read_prompt_lines(&prompts).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let e = tok
        .encode_prompt_lines(&prompts, &lines)
        .unwrap_err()
        .to_string();
    eprintln!("{e}");
    for want in [
        "prompts.jsonl",
        "line 2",
        "needs a chat template",
        "the model has none",
    ] {
        assert!(e.contains(want), "{e}");
    }
    assert!(r["cases"][0]["error"].is_string(), "transformers fails too");
    assert_eq!(
        tok.encode_prompt(&lines[0].prompt).unwrap(),
        tok.encode("Hello there").unwrap()
    );
    // read_prompts (plain only) names the conversation line.
    let e = read_prompts(&prompts).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("messages"), "{e}");

    let mut tok = Tokenizer::from_dir(&l).unwrap();
    tok.set_chat_template(&TemplateChoice::None).unwrap();
    let e = tok
        .encode_prompt_lines(&prompts, &lines)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 2") && e.contains("chat templates are off"),
        "{e}"
    );
    assert!(tok.encode_prompt(&lines[0].prompt).is_ok());

    // A model template that does not compile: loading works, plain prompts work, a
    // conversation fails naming the file and the problem.
    let tok = Tokenizer::from_dir(&broken).unwrap();
    assert!(tok.encode_prompt(&lines[0].prompt).is_ok());
    let e = tok
        .encode_prompt_lines(&prompts, &lines)
        .unwrap_err()
        .to_string();
    eprintln!("{e}");
    for want in [
        "line 2",
        "cannot be used",
        "tokenizer_config.json",
        "chat_template",
    ] {
        assert!(e.contains(want), "{e}");
    }
}

/// Roles the template rejects (Gemma shape: raise_exception) fail with the template's own
/// message and its file, as transformers fails; roles it accepts render as transformers renders
/// them (Llama shape).
#[test]
fn unknown_roles_and_raise_exception() {
    let tmp = tempfile::tempdir().unwrap();
    let critic = json!([
        msg("user", "Hello there"),
        msg("critic", "Too short."),
        msg("user", "Again")
    ]);
    let alternation = json!([msg("user", "Hello there"), msg("user", "Again")]);
    let gemma = tmp.path().join("g");
    let llama = tmp.path().join("l");
    let responses = batch(vec![
        make(&gemma, &GEMMA, &[("default", "gemma")], "config"),
        apply(
            &gemma,
            &json!([
                {"messages": critic, "add_generation_prompt": true},
                {"messages": alternation, "add_generation_prompt": true},
            ]),
            &[],
        ),
        make(&llama, &LLAMA3, &[("default", "llama3")], "jinja"),
        apply(
            &llama,
            &json!([{"messages": critic, "add_generation_prompt": true}]),
            &[],
        ),
    ]);
    let r = &responses[1];
    let tok = Tokenizer::from_dir(&gemma).unwrap();
    for (i, (conv, want)) in [
        (&critic, "Unsupported role \"critic\""),
        (&alternation, "Turns must alternate"),
    ]
    .into_iter()
    .enumerate()
    {
        let theirs = r["cases"][i]["error"]
            .as_str()
            .expect("transformers raises");
        assert!(theirs.contains(want), "{theirs}");
        let e = tok.encode_prompt(&messages(conv)).unwrap_err().to_string();
        eprintln!("{e}");
        for w in [want, "tokenizer_config.json", "raised an error", "line "] {
            assert!(e.contains(w), "{e}");
        }
    }
    let r = &responses[3];
    let tok = Tokenizer::from_dir(&llama).unwrap();
    assert_eq!(
        tok.encode_prompt(&messages(&critic)).unwrap(),
        ids(&r["cases"][0]["ids"])
    );
}

/// A template file that does not exist or does not compile is an error when chosen, naming it.
#[test]
fn bad_template_file_is_an_error_when_chosen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l");
    chat_ref(make(&dir, &LLAMA3, &[("default", "llama3")], "jinja"));
    let mut tok = Tokenizer::from_dir(&dir).unwrap();
    let bad = tmp.path().join("syntax.jinja");
    std::fs::write(
        &bad,
        "line one\n{% if messages %}\n{{ messages[0].content }\n",
    )
    .unwrap();
    let e = tok
        .set_chat_template(&TemplateChoice::File(bad.clone()))
        .unwrap_err()
        .to_string();
    eprintln!("{e}");
    assert!(e.contains("syntax.jinja") && e.contains("line "), "{e}");
    let missing = tmp.path().join("nope.jinja");
    let e = tok
        .set_chat_template(&TemplateChoice::File(missing))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.jinja"), "{e}");
    assert_eq!(
        "auto".parse::<TemplateChoice>().unwrap(),
        TemplateChoice::Auto
    );
    assert_eq!(
        "none".parse::<TemplateChoice>().unwrap(),
        TemplateChoice::None
    );
    assert!("".parse::<TemplateChoice>().is_err());
}

/// Malformed prompt lines: each error names the file, the line and the problem.
#[test]
fn bad_prompt_lines_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let good = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}";
    for (line, want) in [
        ("{\"messages\": \"hi\"}", "not a list"),
        ("{\"messages\": []}", "is empty"),
        (
            "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, 5]}",
            "message 1 is not an object",
        ),
        ("{\"messages\": [{\"content\": \"x\"}]}", "no \"role\""),
        (
            "{\"messages\": [{\"role\": 3, \"content\": \"x\"}]}",
            "\"role\" is not a string",
        ),
        (
            "{\"messages\": [{\"role\": \"user\", \"content\": 3}]}",
            "\"content\" is neither",
        ),
        ("{\"messages\": [{\"role\": \"user\"}]}", "no \"content\""),
        ("{\"prompt\": \"a\", \"messages\": []}", "both"),
        ("{\"answer\": 3}", "no \"prompt\" or \"messages\""),
        ("{\"prompt\": \"\"}", "empty"),
        ("not json", "not JSON"),
    ] {
        let f = tmp.path().join("p.jsonl");
        std::fs::write(&f, format!("{good}\n\n{line}\n")).unwrap();
        let e = read_prompt_lines(&f).unwrap_err().to_string();
        assert!(
            e.contains("p.jsonl") && e.contains("line 3") && e.contains(want),
            "{line}: {e}"
        );
    }
    // Null fields are dropped (as transformers does); an assistant turn with tool calls may
    // lack content; other fields are kept; "answer" is kept.
    let f = tmp.path().join("ok.jsonl");
    std::fs::write(
        &f,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"x\", \"name\": null}, \
         {\"role\": \"assistant\", \"tool_calls\": [], \"content\": null}], \"answer\": 4}\n",
    )
    .unwrap();
    let lines = read_prompt_lines(&f).unwrap();
    let Prompt::Messages(m) = &lines[0].prompt else {
        panic!("a conversation")
    };
    assert!(!m[0].contains_key("name") && !m[1].contains_key("content"));
    assert!(m[1].contains_key("tool_calls"));
    assert_eq!(lines[0].answer.as_deref(), Some("4"));
}

/// `generate_texts` greedy (library side of `warp generate`) on a tiny Llama made by
/// transformers, with conversation and plain prompts of different lengths batched together
/// (left padding), equals transformers' greedy `generate` of each prompt alone; on the
/// built-in model, the completions end at EOS.
#[test]
// long fn: one batch of mixed prompts against transformers, then the built-in model's EOS.
fn greedy_generation_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let arith = common::repo_root().join("fixtures/arith/model");
    let prompts: Vec<Prompt> = vec![
        messages(&conversations()[0]),
        Prompt::Text("Hello there".into()),
        messages(&conversations()[1]),
        Prompt::Text("What is 2+2? I think".into()),
    ];
    let req: Vec<Value> = prompts
        .iter()
        .map(|p| {
            let (k, v) = p.json_field();
            json!({ k: v })
        })
        .collect();
    let arith_prompts = [Prompt::Text("37+58=".into()), Prompt::Text("4+5=".into())];
    let arith_req: Vec<Value> = arith_prompts
        .iter()
        .map(|p| json!({"prompt": p.as_text()}))
        .collect();
    let n = 12;
    let responses = batch(vec![
        make(&dir, &LLAMA3, &[("default", "llama3")], "jinja"),
        json!({"cmd": "model", "dir": dir, "seed": 3,
               "eos_tokens": ["<|end_of_text|>", "<|eot_id|>"]}),
        json!({"cmd": "generate", "dir": dir, "prompts": req, "max_new_tokens": n}),
        json!({"cmd": "generate", "dir": arith, "prompts": arith_req, "max_new_tokens": 6}),
    ]);
    let tok = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(
        tok.eos_ids,
        ids(&responses[1]["eos_ids"]),
        "generation_config's EOS ids, then config's"
    );
    let r = &responses[2];
    let model = CausalLm::load(&dir, tch::Device::Cpu).unwrap();
    let ids_in = encode_prompts(&tok, &prompts).unwrap();
    for (i, p) in ids_in.iter().enumerate() {
        assert_eq!(p, &ids(&r["prompt_ids"][i]), "prompt {i} encoding");
    }
    let o = TextGenOptions {
        max_new_tokens: n,
        temperature: 0.0,
        batch_size: 3,
        ..TextGenOptions::default()
    };
    let mut got = Vec::new();
    generate_texts(&model, &tok, &ids_in, &o, |c| {
        got.push(c);
        Ok(())
    })
    .unwrap();
    assert_eq!(got.len(), prompts.len());
    for (i, c) in got.iter().enumerate() {
        assert_eq!((c.prompt_index, c.sample), (i, 0));
        let theirs = ids(&r["new_ids"][i]);
        assert_eq!(c.token_ids, theirs, "prompt {i}");
        let ended = theirs.last().is_some_and(|t| tok.eos_ids.contains(t));
        assert_eq!(c.finish_reason == FinishReason::Eos, ended);
        assert_eq!(c.text, tok.decode(&c.token_ids).unwrap());
        assert_eq!(c.prompt_tokens, ids_in[i].len());
        let rec = c.to_json(&prompts[i]);
        assert_eq!(rec["token_ids"], json!(theirs));
        assert!(rec
            .get(if i % 2 == 0 { "messages" } else { "prompt" })
            .is_some());
        eprintln!("{rec}");
    }

    // The built-in model: greedy sums end with EOS; several samples per prompt come in order.
    let tok = Tokenizer::from_dir(&arith).unwrap();
    let model = CausalLm::load(&arith, tch::Device::Cpu).unwrap();
    let r = &responses[3];
    let ids_in = encode_prompts(&tok, &arith_prompts).unwrap();
    let o = TextGenOptions {
        max_new_tokens: 6,
        temperature: 0.0,
        samples: 2,
        batch_size: 3,
        ..TextGenOptions::default()
    };
    let mut got = Vec::new();
    generate_texts(&model, &tok, &ids_in, &o, |c| {
        got.push(c);
        Ok(())
    })
    .unwrap();
    let order: Vec<(usize, usize)> = got.iter().map(|c| (c.prompt_index, c.sample)).collect();
    assert_eq!(order, [(0, 0), (0, 1), (1, 0), (1, 1)]);
    for c in &got {
        assert_eq!(c.token_ids, ids(&r["new_ids"][c.prompt_index]));
        assert_eq!(c.finish_reason, FinishReason::Eos);
    }
    assert_eq!(got[0].text, "95");
    assert_eq!(got[2].text, "9");

    // Settings that cannot generate are refused.
    for bad in [
        TextGenOptions {
            samples: 0,
            ..o.clone()
        },
        TextGenOptions {
            batch_size: 0,
            ..o.clone()
        },
        TextGenOptions {
            max_new_tokens: 0,
            ..o.clone()
        },
        TextGenOptions {
            top_p: 0.0,
            ..o.clone()
        },
        TextGenOptions {
            temperature: -1.0,
            ..o.clone()
        },
    ] {
        assert!(generate_texts(&model, &tok, &ids_in, &bad, |_| Ok(())).is_err());
    }
}

/// The commands: `warp generate --greedy` (the real binary) on a tiny Llama made by transformers
/// returns transformers' greedy tokens for --prompt (plain and --chat) and --prompts lines
/// (conversation and plain), with clear errors for bad input; `warp rl` trains on conversation
/// lines and `warp eval` measures on them, both handing the conversation to a `cmd:` reward.
#[test]
// long fn: one scenario over the same transformers-made model and prompt files, command after command.
fn warp_generate_rl_and_eval_take_conversations() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let dir = d.join("m");
    let conv = conversations()[0].clone();
    let prompts = d.join("p.jsonl");
    std::fs::write(
        &prompts,
        format!(
            "{}\n{}\n",
            json!({"messages": conv}),
            json!({"prompt": "Hello there"})
        ),
    )
    .unwrap();
    let n = 10;
    let user = json!([msg("user", "What is 2+2?")]);
    let responses = batch(vec![
        make(&dir, &LLAMA3, &[("default", "llama3")], "jinja"),
        json!({"cmd": "model", "dir": dir, "seed": 5,
               "eos_tokens": ["<|end_of_text|>", "<|eot_id|>"]}),
        json!({"cmd": "generate", "dir": dir, "max_new_tokens": n, "prompts": [
            {"prompt": "Hello there"}, {"messages": user}, {"messages": conv},
            {"prompt": "Hello there"}]}),
    ]);
    let theirs = &responses[2]["new_ids"];
    let m = dir.to_str().unwrap();
    let nt = n.to_string();
    let base = [
        "generate",
        m,
        "--greedy",
        "--device",
        "cpu",
        "--max-new-tokens",
        &nt,
    ];
    let args = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let p = prompts.to_str().unwrap();
    let run_warp = |extra: &[&str]| {
        let a = args(extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        common::run("warp", &a, d)
    };
    let records = |out: &str| -> Vec<Value> {
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // Plain --prompt, then the file's conversation and plain lines.
    let r = run_warp(&["--prompt", "Hello there", "--prompts", p, "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let recs = records(&r.stdout);
    assert_eq!(recs.len(), 3, "{}", r.stdout);
    for (i, (rec, want)) in recs.iter().zip([0, 2, 3]).enumerate() {
        assert_eq!(rec["index"], json!(i));
        assert_eq!(rec["token_ids"], theirs[want], "prompt {i}: {rec}");
        eprintln!("{rec}");
    }
    assert_eq!(recs[0]["prompt"], json!("Hello there"));
    assert_eq!(recs[1]["messages"], conv);
    // --chat: the --prompt is a user message rendered with the template.
    let r = run_warp(&["--prompt", "What is 2+2?", "--chat", "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let recs = records(&r.stdout);
    assert_eq!(recs[0]["token_ids"], theirs[1]);
    assert_eq!(recs[0]["messages"], user);
    // Bad input: clear one-line errors.
    let r = run_warp(&["--prompts", p, "--chat-template", "none"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    for w in ["p.jsonl", "line 1", "chat templates are off"] {
        assert!(r.stderr.contains(w), "{}", r.stderr);
    }
    assert!(r.stdout.is_empty());
    let r = run_warp(&[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no prompts"), "{}", r.stderr);
    let r = common::run("warp", &["generate", m, "--prompt", "x", "--top-p", "0"], d);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--top-p"), "{}", r.stderr);
    let r = run_warp(&["--prompt", "x", "--chat-template", "no-such.jinja"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no-such.jinja"), "{}", r.stderr);
    // The built-in model has 32 positions: the default limit (128) shrinks to fit, a given one
    // that does not fit is refused.
    let builtin = [
        "generate",
        "builtin:arith/model",
        "--prompt",
        "37+58=",
        "--greedy",
    ];
    let r = common::run("warp", &builtin, d);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rec: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(
        (&rec["completion"], &rec["finish_reason"]),
        (&json!("95"), &json!("eos"))
    );
    assert!(r.stderr.contains("at most 25 new tokens"), "{}", r.stderr);
    let r = common::run(
        "warp",
        &[&builtin[..], &["--max-new-tokens", "50"]].concat(),
        d,
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--max-new-tokens"), "{}", r.stderr);

    // warp rl and warp eval on conversation lines, with a cmd: reward that logs what it gets.
    let log = d.join("seen.jsonl");
    let script = d.join("reward.py");
    std::fs::write(
        &script,
        format!(
            "import json, sys\nwith open({:?}, 'a') as log:\n    for line in sys.stdin:\n        \
             log.write(line)\n        r = json.loads(line)\n        \
             print(1.0 if 'messages' in r else 0.0)\n",
            log.display().to_string()
        ),
    )
    .unwrap();
    let reward = format!("cmd:{} {}", common::python(), script.display());
    let out = common::ok(
        "warp",
        &[
            "rl",
            m,
            "-o",
            "run",
            "--prompts",
            p,
            "--reward",
            &reward,
            "--steps",
            "2",
            "--batch",
            "2",
            "-n",
            "2",
            "--max-new-tokens",
            "4",
            "--save-every",
            "2",
            "--device",
            "cpu",
            "-q",
        ],
        d,
    );
    assert!(out.trim_end().ends_with("final"), "{out}");
    let run_json: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("run/run.json")).unwrap()).unwrap();
    assert_eq!(
        run_json["config"]["chat_template"],
        json!("auto"),
        "{run_json}"
    );
    std::fs::remove_file(&log).unwrap();
    common::ok(
        "warp",
        &[
            "eval",
            "run/final/policy",
            "--sft",
            m,
            "--prompts",
            p,
            "--reward",
            &reward,
            "--samples",
            "1",
            "--max-new-tokens",
            "4",
            "--device",
            "cpu",
            "-o",
            "e.csv",
            "-q",
        ],
        d,
    );
    let seen: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Two checkpoints (the SFT model, the policy) × two prompts × one sample.
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen.iter().filter(|r| r["messages"] == conv).count(), 2);
    assert_eq!(
        seen.iter()
            .filter(|r| r["prompt"] == json!("Hello there"))
            .count(),
        2
    );
    assert!(seen.iter().all(|r| r["completion"].is_string()));
    let csv = std::fs::read_to_string(d.join("e.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
}
