//! Chat templates: the Jinja program in a model's tokenizer files that turns a conversation
//! (`[{"role": …, "content": …}, …]`) into the text the model was trained on.
//!
//! Rendering follows transformers' `apply_chat_template` (5.x), the reference the tests compare
//! against: a sandboxed Jinja environment with `trim_blocks` and `lstrip_blocks`, `{% break %}`
//! and `{% continue %}`, the globals `raise_exception(msg)` and `strftime_now(fmt)` (local time),
//! a `tojson` filter that writes what Python's `json.dumps` writes (no HTML escaping;
//! `ensure_ascii`, `indent`, `separators`, `sort_keys`), Python's string/dict methods
//! (`startswith`, `split`, `items`, …) and printing of `None`/`True`/`False` as Python does. The
//! template sees `messages`, `add_generation_prompt`, `tools` and `documents` (none) and the
//! tokenizer's special tokens (`bos_token`, `eos_token`, `unk_token`, `sep_token`, `pad_token`,
//! `cls_token`, `mask_token`, where set). transformers' `{% generation %}` block (it marks the
//! assistant's tokens for training masks) renders its body unchanged.
//!
//! Where a model keeps its templates (as transformers looks for them): `chat_template.jinja` (the
//! default) and `additional_chat_templates/NAME.jinja` take precedence over the
//! `chat_template` field of tokenizer_config.json, which is either one template or a list of
//! `{"name": …, "template": …}`; with several, the one named `default` is used.
//!
//! [`TemplateChoice`] is a setting, compiled in every build; the rest needs the `rl` feature.

use std::path::PathBuf;

#[cfg(feature = "rl")]
mod jinja;
#[cfg(feature = "rl")]
pub use jinja::{default_template, model_templates, ChatTemplate, TemplateSource};

/// Which chat template renders `"messages"` prompts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TemplateChoice {
    /// The model's own template, if it has one (a conversation without one is an error).
    #[default]
    Auto,
    /// No template: conversations are refused, plain prompts work as always.
    None,
    /// A Jinja file, or the name of one of the model's named templates.
    File(PathBuf),
}

impl std::str::FromStr for TemplateChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "" => Err("empty chat template choice (auto, none or a file)".into()),
            "auto" => Ok(TemplateChoice::Auto),
            "none" => Ok(TemplateChoice::None),
            _ => Ok(TemplateChoice::File(PathBuf::from(s))),
        }
    }
}

impl std::fmt::Display for TemplateChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateChoice::Auto => f.write_str("auto"),
            TemplateChoice::None => f.write_str("none"),
            TemplateChoice::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Written as the string `auto`, `none` or the file, as on the command line.
impl serde::Serialize for TemplateChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TemplateChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_choice_round_trips_as_a_string() {
        for s in ["auto", "none", "templates/chat.jinja"] {
            let c: TemplateChoice = s.parse().unwrap();
            assert_eq!(c.to_string(), s);
            let j = serde_json::to_string(&c).unwrap();
            assert_eq!(j, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<TemplateChoice>(&j).unwrap(), c);
        }
        assert!(serde_json::from_str::<TemplateChoice>("\"\"").is_err());
    }
}
