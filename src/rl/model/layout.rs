//! The tensors of a checkpoint of each family, under the names and in the shapes transformers
//! writes: the loader reads exactly these, the writer writes them back, tests and memory plans
//! count them.

use crate::rl::config::ModelConfig;

/// One parameter tensor: its Hugging Face name and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<i64>,
}

/// Which output head a checkpoint carries besides the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// `lm_head.weight` `[vocab, hidden]`, unless tied to the embedding.
    Lm,
    /// None (a reward model's `score` head is read separately).
    None,
}

impl ModelConfig {
    /// The parameters of the decoder (and `head`), in the order we save them.
    pub fn parameter_layout(&self, head: Head) -> Vec<ParamSpec> {
        let c = self;
        let h = c.hidden_size as i64;
        let vocab = c.vocab_size as i64;
        let mut out = vec![spec("model.embed_tokens.weight", &[vocab, h])];
        for i in 0..c.num_hidden_layers {
            layer(c, &format!("model.layers.{i}"), &mut out);
        }
        out.push(spec("model.norm.weight", &[h]));
        if head == Head::Lm && !c.tie_word_embeddings {
            out.push(spec("lm_head.weight", &[vocab, h]));
        }
        out
    }

    /// config.json's sizes against the tensors the checkpoint holds (its index or headers), before
    /// anything is sized by them: more layers than the checkpoint has, or a vocabulary or width
    /// larger than its embedding, is an error naming config.json and the key (a hostile or
    /// broken config would otherwise size the model's structures by its own numbers).
    pub fn check_tensors(&self, ck: &crate::io::Checkpoint) -> crate::error::Result<()> {
        let path = ck.dir.join("config.json");
        let bad = |key: &str, msg: String| {
            crate::error::Error::format(&path, format!("field '{key}': {msg}"))
        };
        let present = ck
            .tensors()
            .iter()
            .filter_map(|t| t.name.strip_prefix("model.layers."))
            .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
            .map(|i| i.saturating_add(1))
            .max()
            .unwrap_or(0);
        if self.num_hidden_layers > present {
            return Err(bad(
                "num_hidden_layers",
                format!(
                    "{}, but the checkpoint holds tensors of {present} layer(s)",
                    self.num_hidden_layers
                ),
            ));
        }
        if let Some(e) = ck.get("model.embed_tokens.weight") {
            for (key, v, axis) in [
                ("vocab_size", self.vocab_size, 0),
                ("hidden_size", self.hidden_size, 1),
            ] {
                let have = e.shape.get(axis).copied().unwrap_or(0);
                if v > have {
                    return Err(bad(
                        key,
                        format!("{v}, but model.embed_tokens.weight has {have} along that axis"),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn spec(name: &str, shape: &[i64]) -> ParamSpec {
    ParamSpec {
        name: name.to_string(),
        shape: shape.to_vec(),
    }
}

fn linear(out: &mut Vec<ParamSpec>, name: &str, rows: i64, cols: i64, bias: bool) {
    out.push(spec(&format!("{name}.weight"), &[rows, cols]));
    if bias {
        out.push(spec(&format!("{name}.bias"), &[rows]));
    }
}

fn layer(c: &ModelConfig, p: &str, out: &mut Vec<ParamSpec>) {
    let h = c.hidden_size as i64;
    let hd = c.head_dim as i64;
    let q = c.num_attention_heads as i64 * hd;
    let kv = c.num_key_value_heads as i64 * hd;
    let inter = c.intermediate_size as i64;
    out.push(spec(&format!("{p}.input_layernorm.weight"), &[h]));
    if c.family.fused_projections() {
        linear(
            out,
            &format!("{p}.self_attn.qkv_proj"),
            q + 2 * kv,
            h,
            false,
        );
    } else {
        linear(out, &format!("{p}.self_attn.q_proj"), q, h, c.qkv_bias);
        linear(out, &format!("{p}.self_attn.k_proj"), kv, h, c.qkv_bias);
        linear(out, &format!("{p}.self_attn.v_proj"), kv, h, c.qkv_bias);
    }
    linear(out, &format!("{p}.self_attn.o_proj"), h, q, c.o_bias);
    if c.family.qk_norm() {
        out.push(spec(&format!("{p}.self_attn.q_norm.weight"), &[hd]));
        out.push(spec(&format!("{p}.self_attn.k_norm.weight"), &[hd]));
    }
    out.push(spec(&format!("{p}.post_attention_layernorm.weight"), &[h]));
    if c.family.sandwich_norms() {
        out.push(spec(&format!("{p}.pre_feedforward_layernorm.weight"), &[h]));
        out.push(spec(
            &format!("{p}.post_feedforward_layernorm.weight"),
            &[h],
        ));
    }
    if c.family.fused_projections() {
        linear(out, &format!("{p}.mlp.gate_up_proj"), 2 * inter, h, false);
    } else {
        linear(out, &format!("{p}.mlp.gate_proj"), inter, h, c.mlp_bias);
        linear(out, &format!("{p}.mlp.up_proj"), inter, h, c.mlp_bias);
    }
    linear(out, &format!("{p}.mlp.down_proj"), h, inter, c.mlp_bias);
}
