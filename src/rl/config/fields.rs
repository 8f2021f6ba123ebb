//! Typed access to the fields of a parsed `config.json`. Every error names the field.
//!
//! transformers distinguishes a field that is absent (the config class's default applies) from one
//! that is `null` (often "off", e.g. `sliding_window: null`); so do these readers.

use serde_json::{Map, Value};

pub(crate) type FieldResult<T> = std::result::Result<T, String>;

/// The top-level object of a `config.json` (or a nested object such as `rope_parameters`, whose
/// field names are then reported with the `prefix`).
#[derive(Clone, Copy)]
pub(crate) struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: &'a str,
}

impl<'a> Fields<'a> {
    pub fn new(map: &'a Map<String, Value>) -> Fields<'a> {
        Fields { map, prefix: "" }
    }

    /// The nested object `name`, if present and not null; its fields are reported as
    /// `name.field`.
    pub fn object(&self, name: &'a str) -> FieldResult<Option<Fields<'a>>> {
        match self.raw(name) {
            None => Ok(None),
            Some(v) => v
                .as_object()
                .map(|map| Some(Fields { map, prefix: name }))
                .ok_or_else(|| format!("field '{}' is not an object", self.name(name))),
        }
    }

    /// The full name of field `name` as it appears in messages.
    pub fn name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The value of `name`, `None` when absent or null.
    pub fn raw(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    /// Whether `name` is present and null (transformers' "switched off").
    pub fn is_null(&self, name: &str) -> bool {
        self.map.get(name).is_some_and(Value::is_null)
    }

    /// A positive integer that must be given.
    pub fn usize_req(&self, name: &str) -> FieldResult<usize> {
        self.raw(name)
            .and_then(Value::as_u64)
            .filter(|&x| x > 0)
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| {
                format!(
                    "field '{}' missing or not a positive integer",
                    self.name(name)
                )
            })
    }

    /// A positive integer, `None` when absent or null.
    pub fn usize_opt(&self, name: &str) -> FieldResult<Option<usize>> {
        match self.raw(name) {
            None => Ok(None),
            Some(_) => self.usize_req(name).map(Some),
        }
    }

    /// A non-negative integer, `None` when absent or null.
    pub fn count_opt(&self, name: &str) -> FieldResult<Option<usize>> {
        match self.raw(name) {
            None => Ok(None),
            Some(x) => x
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| {
                    format!("field '{}' is not a non-negative integer", self.name(name))
                }),
        }
    }

    /// A positive, finite number, `None` when absent or null.
    pub fn f64_opt(&self, name: &str) -> FieldResult<Option<f64>> {
        match self.raw(name) {
            None => Ok(None),
            Some(x) => x
                .as_f64()
                .filter(|x| x.is_finite() && *x > 0.0)
                .map(Some)
                .ok_or_else(|| format!("field '{}' is not a positive number", self.name(name))),
        }
    }

    /// A positive, finite number that must be given.
    pub fn f64_req(&self, name: &str) -> FieldResult<f64> {
        self.f64_opt(name)?.ok_or_else(|| {
            format!(
                "field '{}' missing or not a positive number",
                self.name(name)
            )
        })
    }

    pub fn bool_or(&self, name: &str, default: bool) -> FieldResult<bool> {
        match self.raw(name) {
            None => Ok(default),
            Some(x) => x
                .as_bool()
                .ok_or_else(|| format!("field '{}' is not a boolean", self.name(name))),
        }
    }

    /// A string, `None` when absent or null.
    pub fn str_opt(&self, name: &str) -> FieldResult<Option<&'a str>> {
        match self.raw(name) {
            None => Ok(None),
            Some(x) => x
                .as_str()
                .map(Some)
                .ok_or_else(|| format!("field '{}' is not a string", self.name(name))),
        }
    }

    /// A list of positive, finite numbers.
    pub fn f64_list(&self, name: &str) -> FieldResult<Vec<f64>> {
        let list = self
            .raw(name)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("field '{}' missing or not a list", self.name(name)))?;
        list.iter()
            .map(|x| {
                x.as_f64()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .ok_or_else(|| {
                        format!(
                            "field '{}' holds something other than a positive number",
                            self.name(name)
                        )
                    })
            })
            .collect()
    }

    /// A list of strings, `None` when absent or null.
    pub fn str_list(&self, name: &str) -> FieldResult<Option<Vec<&'a str>>> {
        let Some(v) = self.raw(name) else {
            return Ok(None);
        };
        let list = v
            .as_array()
            .ok_or_else(|| format!("field '{}' is not a list", self.name(name)))?;
        list.iter()
            .map(|x| {
                x.as_str()
                    .ok_or_else(|| format!("field '{}' holds a non-string", self.name(name)))
            })
            .collect::<FieldResult<Vec<_>>>()
            .map(Some)
    }

    /// A token id or a list of ids (`eos_token_id` may be either); empty when absent.
    pub fn token_ids(&self, name: &str) -> FieldResult<Vec<i64>> {
        match self.raw(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_i64()
                        .ok_or_else(|| format!("field '{}' holds a non-integer", self.name(name)))
                })
                .collect(),
            Some(x) => x.as_i64().map(|i| vec![i]).ok_or_else(|| {
                format!(
                    "field '{}' is not an integer or a list of integers",
                    self.name(name)
                )
            }),
        }
    }

    /// An optional token id.
    pub fn token_id(&self, name: &str) -> FieldResult<Option<i64>> {
        match self.raw(name) {
            None => Ok(None),
            Some(x) => x
                .as_i64()
                .map(Some)
                .ok_or_else(|| format!("field '{}' is not an integer", self.name(name))),
        }
    }
}
