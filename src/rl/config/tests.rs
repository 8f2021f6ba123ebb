use super::*;

fn base() -> Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 48, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "eos_token_id": 2, "bos_token_id": 1
    })
}

fn with(mut v: Value, pairs: &[(&str, Value)]) -> Value {
    for (k, x) in pairs {
        v[*k] = x.clone();
    }
    v
}

fn parse(v: &Value) -> ModelConfig {
    ModelConfig::from_json(v).unwrap()
}

#[test]
fn parses_and_defaults() {
    let c = parse(&base());
    assert_eq!(c.family, Family::Llama);
    assert_eq!(c.head_dim, 8);
    assert_eq!(c.rotary_dim, 8);
    assert_eq!(c.eos_token_ids, vec![2]);
    assert!(!c.tie_word_embeddings);
    assert_eq!(c.rope.scaling, RopeScaling::None);
    assert_eq!(c.activation, Activation::Silu);
    assert_eq!(c.layer_types, vec![LayerType::Full; 2]);
    assert_eq!(c.attention_scale, 8f64.powf(-0.5));
}

#[test]
fn errors_name_the_field() {
    let cases: &[(&str, Value, &str)] = &[
        ("model_type", "falcon".into(), "model_type"),
        ("hidden_act", "gelu".into(), "hidden_act"),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "yarn", "factor": 2.0}),
            "rope_scaling",
        ),
        ("num_key_value_heads", 3.into(), "num_key_value_heads"),
        (
            "architectures",
            serde_json::json!(["GemmaForCausalLM"]),
            "architectures",
        ),
        ("pretraining_tp", 2.into(), "pretraining_tp"),
        (
            "attn_logit_softcapping",
            50.0.into(),
            "attn_logit_softcapping",
        ),
        ("sliding_window", 16.into(), "sliding_window"),
        ("partial_rotary_factor", 0.5.into(), "partial_rotary_factor"),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "llama3", "factor": 8.0}),
            "rope_scaling.low_freq_factor",
        ),
    ];
    for (field, value, named) in cases {
        let v = with(base(), &[(field, value.clone())]);
        let e = ModelConfig::from_json(&v).unwrap_err();
        assert!(e.contains(named), "{field}: {e}");
    }
    let e = ModelConfig::from_json(&with(base(), &[("model_type", "gemma3".into())])).unwrap_err();
    assert!(e.contains("gemma3_text") && e.contains("phi3"), "{e}");
    let v = with(
        base(),
        &[(
            "rope_scaling",
            serde_json::json!({"type": "linear", "factor": 4.0}),
        )],
    );
    assert_eq!(parse(&v).rope.scaling, RopeScaling::Linear(4.0));
}

#[test]
fn llama3_rope_reads_its_parameters() {
    let v = with(
        base(),
        &[(
            "rope_parameters",
            serde_json::json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16}),
        )],
    );
    let c = parse(&v);
    assert_eq!(c.rope.theta, 500000.0);
    assert_eq!(
        c.rope.scaling,
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 16.0
        }
    );
}

fn gemma(model_type: &str) -> Value {
    serde_json::json!({
        "model_type": model_type, "vocab_size": 64, "hidden_size": 32,
        "intermediate_size": 48, "num_hidden_layers": 6, "num_attention_heads": 16,
        "max_position_embeddings": 64
    })
}

#[test]
fn gemma_families_take_transformers_defaults() {
    let g = parse(&gemma("gemma"));
    assert_eq!((g.head_dim, g.num_key_value_heads), (256, 16));
    assert!(g.tie_word_embeddings && g.family.gemma_style());
    assert_eq!(g.activation, Activation::GeluTanh);
    assert_eq!(g.layer_types, vec![LayerType::Full; 6]);
    // Gemma 1's legacy "gelu" means the tanh approximation.
    let g = parse(&with(gemma("gemma"), &[("hidden_act", "gelu".into())]));
    assert_eq!(g.activation, Activation::GeluTanh);

    let g2 = parse(&gemma("gemma2"));
    assert_eq!(g2.attn_logit_softcapping, Some(50.0));
    assert_eq!(g2.final_logit_softcapping, Some(30.0));
    assert_eq!(g2.attention_scale, 256f64.powf(-0.5));
    assert_eq!(g2.sliding_window, Some(4096));
    assert_eq!(g2.window(0), Some(4096));
    assert_eq!(g2.window(1), None);
    let off = parse(&with(
        gemma("gemma2"),
        &[
            ("attn_logit_softcapping", Value::Null),
            ("query_pre_attn_scalar", 16.into()),
        ],
    ));
    assert_eq!(off.attn_logit_softcapping, None);
    assert_eq!(off.final_logit_softcapping, Some(30.0));
    assert_eq!(off.attention_scale, 0.25);

    let g3 = parse(&gemma("gemma3_text"));
    assert_eq!(g3.attn_logit_softcapping, None);
    // Pattern 6: layer 5 global, the others sliding, with their own rope base.
    assert_eq!(g3.layer_types[5], LayerType::Full);
    assert_eq!(g3.layer_types[4], LayerType::Sliding);
    assert_eq!(g3.rope_of(5).theta, 1_000_000.0);
    assert_eq!(g3.rope_of(0).theta, 10_000.0);
    let g3 = parse(&with(
        gemma("gemma3_text"),
        &[
            ("sliding_window_pattern", 2.into()),
            ("rope_local_base_freq", 100.0.into()),
            (
                "rope_scaling",
                serde_json::json!({"rope_type": "linear", "factor": 8.0}),
            ),
        ],
    ));
    assert_eq!(g3.layer_types[1], LayerType::Full);
    assert_eq!(g3.layer_types[2], LayerType::Sliding);
    assert_eq!(g3.rope_of(1).scaling, RopeScaling::Linear(8.0));
    assert_eq!(g3.rope_of(0).scaling, RopeScaling::None);
    assert_eq!(g3.rope_of(0).theta, 100.0);
    let e = ModelConfig::from_json(&with(
        gemma("gemma3_text"),
        &[("use_bidirectional_attention", true.into())],
    ))
    .unwrap_err();
    assert!(e.contains("use_bidirectional_attention"), "{e}");
    let e = ModelConfig::from_json(&with(
        gemma("gemma3_text"),
        &[("layer_types", serde_json::json!(["full_attention"]))],
    ))
    .unwrap_err();
    assert!(e.contains("layer_types"), "{e}");
}

#[test]
fn sliding_windows_follow_each_family() {
    let m = with(base(), &[("model_type", "mistral".into())]);
    let m = with(
        m,
        &[("architectures", serde_json::json!(["MistralForCausalLM"]))],
    );
    assert_eq!(parse(&m).window(1), Some(4096));
    assert_eq!(
        parse(&with(m.clone(), &[("sliding_window", Value::Null)])).window(1),
        None
    );
    let q = with(base(), &[("model_type", "qwen2".into())]);
    let q = with(
        q,
        &[("architectures", serde_json::json!(["Qwen2ForCausalLM"]))],
    );
    assert_eq!(
        parse(&with(q.clone(), &[("sliding_window", 8.into())])).window(1),
        None,
        "use_sliding_window defaults to false"
    );
    let on = parse(&with(
        q,
        &[
            ("sliding_window", 8.into()),
            ("use_sliding_window", true.into()),
            ("max_window_layers", 1.into()),
        ],
    ));
    assert_eq!((on.window(0), on.window(1)), (None, Some(8)));
    assert!(on.qkv_bias && !on.o_bias);
}

#[test]
fn phi3_longrope_and_partial_rotary() {
    let v = serde_json::json!({
        "model_type": "phi3", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 64,
        "original_max_position_embeddings": 16, "partial_rotary_factor": 0.5,
        "rope_scaling": {"type": "su", "short_factor": [1.0, 1.5], "long_factor": [2.0, 4.0]}
    });
    let c = parse(&v);
    assert_eq!(c.rotary_dim, 4);
    assert!(c.family.fused_projections());
    assert_eq!(c.rms_norm_eps, 1e-5);
    let RopeScaling::LongRope {
        attention_factor,
        original_max_position_embeddings,
        ..
    } = c.rope.scaling
    else {
        panic!("{:?}", c.rope.scaling)
    };
    assert_eq!(original_max_position_embeddings, 16);
    // factor 64/16 = 4: sqrt(1 + ln 4 / ln 16) = sqrt(1.5).
    assert!((attention_factor - 1.5f64.sqrt()).abs() < 1e-12);
    let mut bad = v.clone();
    bad["rope_scaling"]["short_factor"] = serde_json::json!([1.0]);
    let e = ModelConfig::from_json(&bad).unwrap_err();
    assert!(e.contains("rope_scaling.short_factor"), "{e}");
    let mut bad = v;
    bad["rope_scaling"]["type"] = "linear".into();
    let e = ModelConfig::from_json(&bad).unwrap_err();
    assert!(e.contains("phi3") && e.contains("longrope"), "{e}");
}

#[test]
fn qwen3_explicit_head_dim() {
    let v = serde_json::json!({
        "model_type": "qwen3", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "max_position_embeddings": 64
    });
    let c = parse(&v);
    assert_eq!(c.head_dim, 16);
    assert!(c.family.qk_norm() && !c.qkv_bias);
    let mut d = v;
    d.as_object_mut().unwrap().remove("head_dim");
    assert_eq!(parse(&d).head_dim, 128, "Qwen3Config's default");
}

/// Values a hostile or broken config.json may hold for a key.
fn arbitrary_value() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        (0u64..70_000).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|x| serde_json::json!(x)),
        Just(Value::Null),
        Just(serde_json::json!("")),
        Just(serde_json::json!(["a", 1])),
        Just(serde_json::json!({"rope_type": "linear", "factor": 1e308})),
        Just(serde_json::json!({"rope_type": "yarn", "factor": -1})),
        Just(serde_json::json!(1e20)),
    ]
}

const KEYS: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "sliding_window",
    "sliding_window_pattern",
    "layer_types",
    "partial_rotary_factor",
    "query_pre_attn_scalar",
    "eos_token_id",
    "tie_word_embeddings",
    "model_type",
];

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
    /// Random values for the keys of a valid config.json (huge, negative, fractional, of the
    /// wrong type) never panic, and what parses stays within the stated limits, so nothing
    /// sized by it (the layer list, the parameter layout) can grow past them.
    #[test]
    fn random_config_values_never_panic_nor_exceed_the_limits(
        edits in proptest::collection::vec(
            (proptest::sample::select(KEYS), arbitrary_value()),
            1..5,
        )
    ) {
        let mut v = base();
        for (k, x) in &edits {
            v[*k] = x.clone();
        }
        if let Ok(c) = ModelConfig::from_json(&v) {
            proptest::prop_assert!(c.num_hidden_layers <= MAX_LAYERS);
            proptest::prop_assert_eq!(c.layer_types.len(), c.num_hidden_layers);
            proptest::prop_assert!(c.vocab_size <= MAX_VOCAB && c.hidden_size <= MAX_WIDTH);
            proptest::prop_assert!(c.intermediate_size <= MAX_WIDTH);
            proptest::prop_assert!(c.num_attention_heads * c.head_dim <= MAX_WIDTH);
            proptest::prop_assert!(c.max_position_embeddings <= MAX_POSITIONS);
            let specs = c.parameter_layout(crate::rl::model::Head::Lm);
            proptest::prop_assert!(specs.len() <= 3 + 16 * MAX_LAYERS);
        }
    }
}
